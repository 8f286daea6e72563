"""A declared size over its limit fails `trace_scope` with the located error: its message
names file, line, trace, request and rule, the `valid_schema` check fails, and nothing is
decoded or stored under `datasets/` (weka_assets_tests/robustness/test_declared_sizes.py has
the core and the command line)."""

import json

import dagster as dg

from weka_assets.definitions import build_defs, resources
from weka_assets.defs.resources import CorpusCatalog
from weka_assets.instance.materialize import materialize_corpus
from weka_assets_tests.defs.test_assets import check_status
from weka_assets_tests.mooncake import mooncake_requests, write_mooncake
from weka_assets_tests.robustness.test_declared_sizes import HUGE, weka_trace, write_weka


def test_trace_scope_fails_on_a_declared_size_over_its_limit(tmp_path):
    traces = [weka_trace(f"t{i}") for i in range(3)]
    traces[2]["requests"][1]["requests"][0]["in"] = HUGE  # line 3, request 1, inner 0
    weka = write_weka(tmp_path / "weka" / "traces.jsonl", traces)
    reqs = mooncake_requests(5, seed=1)
    reqs[1]["output_length"] = HUGE  # line 2: request 1 of the file's one trace
    moon = write_mooncake(tmp_path / "moon" / "mooncake.jsonl", reqs)
    store = tmp_path / "store"
    res = resources(str(store))
    res["catalog"] = CorpusCatalog(corpora={"weka-big": str(weka), "moon-big": str(moon)})
    defs = build_defs(resource_defs=res)
    expect = {
        "weka-big": (
            "traces.jsonl:3, trace 't2', request 1, inner 0: [prompt_too_long] "
            f"in={HUGE} prompt tokens: more than WEKA_ASSETS_MAX_PROMPT_TOKENS=4194304"
        ),
        "moon-big": (
            "mooncake.jsonl:2, trace 'mooncake.jsonl', request 1: [output_too_long] "
            f"output_length={HUGE} output tokens: more than WEKA_ASSETS_MAX_OUTPUT_TOKENS=1048576"
        ),
    }
    with dg.instance_for_test() as instance:
        for corpus, line in expect.items():
            steps = materialize_corpus(corpus, instance, defs)
            assert len(steps) == 1 and not steps[0].success, steps
            failure = "\n".join(steps[0].failures)
            assert f"corpus {corpus!r} fails the scope contract: 1 hard error(s)" in failure
            assert line in failure, failure
            assert check_status(instance, "valid_schema", corpus) is False
            assert not instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey("trace_scope"), asset_partitions=[corpus]
                ),
                limit=1,
            ).records
        # the stored reports name the same errors; nothing decoded, no parse kept
        reports = [json.loads(p.read_text()) for p in sorted((store / "scope").glob("*.json"))]
        rules = sorted(e["rule"] for r in reports for e in r["hard_errors"])
        assert rules == ["output_too_long", "prompt_too_long"], rules
        assert not list(store.glob("datasets/*")) and not list(store.glob("parsed/*"))
