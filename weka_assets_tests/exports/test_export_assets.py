"""The export assets materialized in a test instance after the chain: stored beside the
datasets, metadata, the manifest version in their code version, and on demand only."""

import json
from pathlib import Path

import dagster as dg
import pytest

from weka_assets.definitions import build_defs, resources
from weka_assets.defs.assets.exports import EXPORTS
from weka_assets.defs.resources import CorpusCatalog
from weka_assets.instance.materialize import decode_assets, materialize_corpus, run_selection
from weka_assets.versions import MANIFEST_VERSION
from weka_assets_tests.corpora import synthetic


@pytest.fixture
def env(tmp_path):
    res = resources(str(tmp_path / "store"))
    res["catalog"] = CorpusCatalog(corpora={"tiny": str(synthetic("kv-cache-tester", 5, 2))})
    with dg.instance_for_test() as instance:
        yield instance, build_defs(resource_defs=res), tmp_path / "store"


@pytest.mark.slow
def test_exports_materialize_beside_the_dataset(env):
    instance, defs, store = env
    steps = materialize_corpus("tiny", instance, defs)
    assert [s.success for s in steps] == [True, True]
    key = dg.MultiPartitionKey({"corpus": "tiny", "tokenizer": "deepseek"})
    step = run_selection(defs, instance, list(EXPORTS), key)
    assert step.success
    dec = instance.get_latest_materialization_event(dg.AssetKey("decoded_dataset"))
    decode_key = dec.asset_materialization.metadata["decode_key"].value
    for name, fmt in EXPORTS.items():
        md = instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization
        md = md.metadata
        path = Path(md["path"].value)
        assert path == store / "exports" / decode_key / f"{fmt}.jsonl" and path.is_file()
        meta = json.loads(Path(md["meta_path"].value).read_text())
        assert md["dagster/row_count"].value == meta["lines"] == len(path.read_bytes().splitlines())
        assert md["sha256"].value == meta["sha256"]
        assert (
            md["manifest_version"].value == MANIFEST_VERSION == meta["dataset"]["manifest_version"]
        )
        assert md["decode_key"].value == decode_key
        ref = step.outputs[name]
        assert ref.format == fmt and ref.key == f"exports/{decode_key}/{fmt}.jsonl"
    text = instance.get_latest_materialization_event(dg.AssetKey("text_export"))
    assert "retokenization_drift" in text.asset_materialization.metadata
    moon = instance.get_latest_materialization_event(dg.AssetKey("mooncake_export"))
    assert moon.asset_materialization.metadata["block_size"].value == 64
    # the replay's metadata carries the corpus-wide figures
    rep = instance.get_latest_materialization_event(dg.AssetKey("replay_benchmark"))
    rmd = rep.asset_materialization.metadata
    assert rmd["corpus_wide_theoretical_hit_rate"].value == rmd["theoretical_hit_rate"].value
    assert 0 < rmd["aiperf_analyze_trace_hit_rate"].value <= 1


def test_exports_are_on_demand_and_carry_the_manifest_version():
    defs = build_defs(41)
    graph = defs.resolve_asset_graph()
    for name in EXPORTS:
        node = graph.get(dg.AssetKey(name))
        assert node.code_version == "manifest-v41"
        assert node.automation_condition is None
        assert {k.to_user_string() for k in node.parent_keys} == {"decoded_dataset"}
        assert name not in decode_assets(defs)
    jobs = {j.name: j for j in defs.jobs}
    assert {"export_job", "text_export_job"} <= set(jobs)
