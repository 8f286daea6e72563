"""What the Dagster UI shows: every asset and check described, grouped, with kinds and owners
(read from the definitions), and a materialization of the built-in `sample` corpus carrying
the metadata an operator reads (row counts, the scope verdict, tables, PNG plots, the decode
key and manifest version, paths that exist) plus progress lines in the run logs."""

import base64
import re
from pathlib import Path

import dagster as dg
import pytest

from weka_assets.definitions import build_defs, defs, resources
from weka_assets.defs.assets.scope import attention_rows, verdict_markdown
from weka_assets.instance.materialize import materialize_corpus
from weka_assets.traces.scope import CONTRACT_RULES, ScopeReport
from weka_assets.versions import MANIFEST_VERSION
from weka_assets_tests.defs.test_definitions import ASSETS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_asset_has_a_description_group_kinds_and_owners():
    graph = defs.resolve_asset_graph()
    seen = set()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        seen.add(name)
        assert node.description and len(node.description) > 60, name
        assert node.group_name and node.group_name != "default", name
        assert node.kinds and "python" in node.kinds, name
        assert list(node.owners) == ["team:weka-assets"], name
    assert seen == ASSETS
    groups = {graph.get(dg.AssetKey(a)).group_name for a in ASSETS}
    assert groups == {"raw", "scope", "decoded", "replay", "live", "exports"}


def test_every_check_job_sensor_and_schedule_is_described():
    graph = defs.resolve_asset_graph()
    checks = {ck.name: graph.get_check_spec(ck) for ck in graph.asset_check_keys}
    assert set(checks) == {rule.name for rule in CONTRACT_RULES}
    for name, spec in checks.items():
        assert spec.description and len(spec.description) > 20, name
        assert spec.partitions_def is not None, name  # one result per corpus, not per run
    for job in defs.jobs:
        assert job.description, job.name
    for sensor in defs.sensors:
        assert sensor.description, sensor.name
    for schedule in defs.schedules:
        assert schedule.description, schedule.name


def test_the_executor_follows_the_environment(monkeypatch):
    monkeypatch.setenv("WEKA_ASSETS_EXECUTOR", "in_process")
    assert build_defs(resource_defs={}).executor is dg.in_process_executor
    monkeypatch.setenv("WEKA_ASSETS_EXECUTOR", "multiprocess")
    executor = build_defs(resource_defs={}).executor
    assert executor.name == "multiprocess"  # Dagster's, steps forked from a fork server
    monkeypatch.delenv("WEKA_ASSETS_EXECUTOR")
    assert build_defs(resource_defs={}).executor is dg.in_process_executor  # the default
    monkeypatch.setenv("WEKA_ASSETS_EXECUTOR", "threads")
    with pytest.raises(ValueError, match="WEKA_ASSETS_EXECUTOR='threads'"):
        build_defs(resource_defs={})


# ---- a materialization of the sample ------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The whole chain for `sample` in one test instance: {asset: materialization}, run ids."""
    store = tmp_path_factory.mktemp("store")
    with dg.instance_for_test() as instance:
        definitions = build_defs(resource_defs=resources(str(store)))
        steps = materialize_corpus("sample", instance, definitions)
        assert [s.success for s in steps] == [True, True], [s.failures for s in steps]
        out = {}
        # on demand, not in the main job: live replay (needs a server) and the exports
        for asset in ASSETS - {
            "live_replay",
            "mooncake_export",
            "aiperf_payload_export",
            "text_export",
        }:
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert event is not None, asset
            out[asset] = event.asset_materialization
        logs = [
            rec.user_message
            for step in steps
            for rec in instance.all_logs(step.run_id)
            if rec.user_message
        ]
        checks = {}
        for rule in CONTRACT_RULES:
            history = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey("trace_scope"), rule.name), limit=1
            )
            checks[rule.name] = history[0].event.dagster_event.event_specific_data
        yield out, logs, checks


def _md(value) -> str:
    assert isinstance(value, dg.MarkdownMetadataValue), type(value)
    return value.value


def _table(value, min_rows: int = 1) -> list[dict]:
    assert isinstance(value, dg.TableMetadataValue), type(value)
    rows = [r.data for r in value.records]
    assert len(rows) >= min_rows
    return rows


def _png(value) -> bytes:
    m = re.fullmatch(r"!\[[^\]]+\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", _md(value))
    assert m, _md(value)[:80]
    png = base64.b64decode(m[1])
    assert png.startswith(PNG_MAGIC) and 5_000 < len(png) < 120_000
    return png


def _path(value) -> Path:
    assert isinstance(value, dg.PathMetadataValue), type(value)
    path = Path(value.value)
    assert path.exists(), path
    return path


def test_raw_traces_metadata(sample):
    md = sample[0]["raw_traces"].metadata
    assert md["dagster/row_count"].value == 12
    assert len(md["digest"].value) == 64 and md["source"].value == "builtin:sample"
    files = _table(md["files"])
    assert files[0]["name"] == "traces.jsonl" and files[0]["bytes"] == md["bytes"].value
    assert _path(md["snapshot"]).is_dir()


def test_trace_scope_metadata_and_check_results(sample):
    mats, _, checks = sample
    md = mats["trace_scope"].metadata
    assert md["dagster/row_count"].value == 12 and md["passed"].value is True
    assert _md(md["verdict"]).startswith(
        "**PASS**: 12/12 shared, document order, 0 fresh-below, 0 gaps, 0 with holes, "
        "0 truncated lists, 0 position violations, 0 hard errors"
    )
    report = {r["figure"]: r["value"] for r in _table(md["report"], 10)}
    assert report["traces"] == "12" and report["verdict.shared"] == "12"
    assert len(_table(md["per_trace"], 12)) == 12
    assert md["traces_needing_attention"].value == 0
    assert _md(md["needs_attention"]) == "_(none)_"
    assert _path(md["report_path"]).suffix == ".json"
    assert md["corpus_digest"].value == mats["raw_traces"].metadata["digest"].value
    for name, evaluation in checks.items():
        assert evaluation.passed, name
        assert evaluation.metadata["violations"].value == 0, name
        assert "blocking" in evaluation.metadata and "examples" in evaluation.metadata


def test_decoded_dataset_metadata(sample):
    md = sample[0]["decoded_dataset"].metadata
    assert md["manifest_version"].value == MANIFEST_VERSION
    assert re.fullmatch(r"[0-9a-f]{24}", md["decode_key"].value)
    assert md["dagster/row_count"].value > 1000 and md["tokenizer"].value == "deepseek"
    assert _path(md["dataset_path"]).name == md["decode_key"].value
    assert _path(md["manifest_path"]).name == "manifest.json"
    assert md["key_material"].value["manifest_version"] == MANIFEST_VERSION


def test_replay_benchmark_metadata(sample):
    mats = sample[0]
    md = mats["replay_benchmark"].metadata
    assert md["decode_key"].value == mats["decoded_dataset"].metadata["decode_key"].value
    assert md["manifest_version"].value == MANIFEST_VERSION
    assert (
        md["dagster/row_count"].value == mats["decoded_dataset"].metadata["dagster/row_count"].value
    )
    rate = md["token_replay_hit_rate"].value
    assert 0.5 < rate < 1
    assert f"**Token-replay hit rate {100 * rate:.2f}%**" in _md(md["hit_rates"])
    roles = {r["role"]: r for r in _table(md["per_role"], 3)}
    assert set(roles) == {"all", "parent", "subagent"}
    assert roles["all"]["token_replay_hit_rate"] == pytest.approx(rate)
    curve = _table(md["capacity_curve"], 5)
    assert curve[-1]["capacity_blocks"] == "unbounded"
    _png(md["capacity_plot"])
    assert _path(md["capacity_plot_path"]).read_bytes().startswith(PNG_MAGIC)
    assert _path(md["result_path"]).suffix == ".json"
    assert _path(md["per_call_path"]).suffix == ".parquet"


def test_manifest_blast_radius_metadata(sample):
    mats = sample[0]
    md = mats["manifest_blast_radius"].metadata
    assert md["decode_key"].value == mats["decoded_dataset"].metadata["decode_key"].value
    assert md["manifest_version"].value == MANIFEST_VERSION
    assert "no earlier dataset" in _md(md["summary"])
    by_role = {r["role"]: r for r in _table(md["by_role"], 3)}
    assert by_role["all"]["calls"] == md["dagster/row_count"].value > 0
    assert by_role["all"]["calls_tokens_changed"] == 0
    _png(md["plot"])
    assert _path(md["plot_path"]).read_bytes().startswith(PNG_MAGIC)
    assert _path(md["blast_radius_path"]).suffix == ".json"


def test_long_steps_log_their_progress(sample):
    logs = sample[1]
    final = re.compile(
        r"^(legacy session scope: |trace and legacy session scopes: )?"
        r"(scope|decode|replay) \S+ .* in [\d.]+ \S+, "
    )
    stages = {m[2] for m in map(final.match, logs) if m}
    assert stages == {"scope", "decode", "replay"}, [line for line in logs if " in " in line]
    # both datasets in one pass, which says so; the legacy replay on its own
    assert any(line.startswith("trace and legacy session scopes: decode ") for line in logs)
    assert any(line.startswith("legacy session scope: replay ") for line in logs)


# ---- the verdict and attention rows on their own -------------------------------------------


def _row(**kw) -> dict:
    base = {
        "trace": "t",
        "verdict": "shared",
        "perfect": True,
        "holes": 0,
        "truncated_calls": 0,
        "position_violations": 0,
    }
    return {**base, **kw}


def test_attention_rows_name_their_reasons():
    report = ScopeReport.model_construct(
        per_trace=[
            _row(trace="ok"),
            _row(trace="r", verdict="reset", perfect=False),
            _row(trace="h", holes=2, truncated_calls=1, perfect=False),
            _row(trace="p", perfect=False),
        ]
    )
    rows = attention_rows(report)
    assert [(r["trace"], r["needs_attention"]) for r in rows] == [
        ("r", "reset"),
        ("h", "holes, truncated lists"),
        ("p", "not perfect"),
    ]


def test_the_verdict_names_mixed_minting_orders_and_failures():
    report = ScopeReport.model_construct(
        verdict={"shared": 8, "reset": 1, "ambiguous": 1},
        findings={"fresh_below_events_minting_walk": 3, "truncated_calls": 2},
        minting_order={"document": 5, "parent_first": 3, "none": 2},
        holes_traces=1,
        position_violations=0,
        hard_errors=[],
        passed=False,
        policy="fail",
        excluded_traces=[],
    )
    assert verdict_markdown(report) == (
        "**FAIL**: 8/10 shared, 1 reset, 1 ambiguous, minting document 5 / parent-first 3 / "
        "none 2, 3 fresh-below, 0 gaps, 1 with holes, 2 truncated lists, "
        "0 position violations, 0 hard errors; policy `fail`, 0 excluded"
    )
