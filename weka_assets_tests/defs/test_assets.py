"""All four assets materialized for small corpora in a test instance: metadata, per-partition
checks, the hard gate, reuse, and the registry sensor."""

import json

import dagster as dg
import pytest
from dagster import AssetCheckKey, AssetKey

from weka_assets.definitions import build_defs, resources
from weka_assets.defs.resources import CorpusCatalog
from weka_assets.instance.materialize import materialize_corpus
from weka_assets.traces.scope import CONTRACT_RULES
from weka_assets.versions import MANIFEST_VERSION
from weka_assets_tests.corpora import synthetic


@pytest.fixture
def corpora(tmp_path):
    good = synthetic("kv-cache-tester", traces=5, seed=2)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(good.read_text().replace('"local"', '"galaxy"', 1))
    return {"tiny": str(good), "broken": str(broken)}


@pytest.fixture
def env(tmp_path, corpora):
    res = resources(str(tmp_path / "store"))
    res["catalog"] = CorpusCatalog(corpora=corpora)
    with dg.instance_for_test() as instance:
        yield instance, build_defs(resource_defs=res)


def latest(instance, asset, partition):
    event = instance.get_latest_materialization_event(AssetKey(asset))
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset} [{partition}] not materialized"
    assert event is not None
    return records[0].asset_materialization


def check_status(instance, name, partition):
    recs = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(AssetKey("trace_scope"), name), limit=20
    )
    for r in recs:
        ev = r.event.dagster_event.event_specific_data
        if ev.partition == partition:
            return ev.passed
    return None


def test_whole_chain_materializes_with_useful_metadata(env):
    instance, res = env
    steps = materialize_corpus("tiny", instance, res)
    assert [s.success for s in steps] == [True, True] and steps[1].partition == "tiny|deepseek"
    raw = latest(instance, "raw_traces", "tiny")
    assert raw.metadata["dagster/row_count"].value == 5 and len(raw.metadata["digest"].value) == 64
    scope = latest(instance, "trace_scope", "tiny")
    assert "PASS: 5/5 shared" in scope.metadata["summary"].value
    assert scope.metadata["per_trace"].value.records and scope.metadata["passed"].value is True
    key = dg.MultiPartitionKey({"corpus": "tiny", "tokenizer": "deepseek"})
    dec = latest(instance, "decoded_dataset", key)
    assert dec.metadata["manifest_version"].value == MANIFEST_VERSION
    assert dec.metadata["dagster/row_count"].value > 0 and dec.metadata["reused"].value is False
    # both datasets decoded from the parse trace_scope kept, not from the JSON again
    assert scope.metadata["parsed_path"].value.endswith(".parsed")
    assert dec.metadata["decoded_from"].value == "parse"
    assert latest(instance, "legacy_scope_dataset", key).metadata["decoded_from"].value == "parse"
    rep = latest(instance, "replay_benchmark", key)
    assert rep.metadata["fidelity_mismatched_calls"].value == 0
    assert 0 < rep.metadata["token_replay_hit_rate"].value <= 1
    assert rep.metadata["decode_key"].value == dec.metadata["decode_key"].value
    assert {r.data["role"] for r in rep.metadata["per_role"].value.records} == {
        "all",
        "parent",
        "subagent",
    }
    # the historic bug's figure beside the correct one, per role
    legacy = rep.metadata["token_replay_hit_rate_legacy_session_scope"].value
    assert legacy < rep.metadata["token_replay_hit_rate"].value
    rows = {r.data["role"]: r.data for r in rep.metadata["scope_policy_comparison"].value.records}
    assert rows["parent"]["hits_lost_by_session_scope"] == 0
    assert rows["subagent"]["hits_lost_by_session_scope"] > 0
    # the capacity curve: a table and a small PNG, its unbounded point = the token replay
    curve = [r.data for r in rep.metadata["capacity_curve"].value.records]
    assert curve[-1]["capacity_blocks"] == "unbounded"
    assert curve[-1]["hit_rate"] == pytest.approx(rep.metadata["token_replay_hit_rate"].value)
    rates = [r["hit_rate"] for r in curve]
    assert rates == sorted(rates) and rates[0] < rates[-1]
    assert rep.metadata["capacity_plot"].value.startswith("![hit rate")
    assert len(rep.metadata["capacity_plot"].value) < 120_000
    blast = latest(instance, "manifest_blast_radius", key)
    assert blast.metadata["previous_decode_key"].value == ""
    assert blast.metadata["calls_tokens_changed"].value == 0
    for rule in CONTRACT_RULES:
        assert check_status(instance, rule.name, "tiny") is True, rule.name


@pytest.mark.slow
def test_rematerializing_reuses_the_dataset_and_keeps_data_versions(env):
    instance, res = env
    materialize_corpus("tiny", instance, res)
    key = dg.MultiPartitionKey({"corpus": "tiny", "tokenizer": "deepseek"})
    first = latest(instance, "decoded_dataset", key)
    materialize_corpus("tiny", instance, res)
    second = latest(instance, "decoded_dataset", key)
    assert second.metadata["reused"].value is True
    assert second.tags["dagster/data_version"] == first.tags["dagster/data_version"]


def test_either_dataset_materializes_alone(env, tmp_path):
    """Both datasets decode in one step (`decoded_datasets`), which still materializes either
    one alone: the legacy one first decodes and stores only it, then the contract's."""
    from weka_assets.instance.materialize import CORPUS_ASSETS, run_selection

    instance, res = env
    instance.add_dynamic_partitions("corpus", ["tiny"])
    assert run_selection(res, instance, CORPUS_ASSETS, "tiny").success
    key = dg.MultiPartitionKey({"corpus": "tiny", "tokenizer": "deepseek"})
    stored = tmp_path / "store" / "datasets"
    decoded = {}
    for asset in ("legacy_scope_dataset", "decoded_dataset"):
        out = run_selection(res, instance, [asset], key)
        assert out.success, out.failures
        mats = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[key]), limit=5
        ).records
        assert len(mats) == 1 and out.outputs[asset].reused is False
        decoded[asset] = out.outputs[asset].decode_key
        datasets = {p.name for p in stored.iterdir() if not p.name.startswith(".")}
        assert datasets == set(decoded.values()), asset
    assert not instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=AssetKey("replay_benchmark")), limit=1
    ).records


def test_a_corpus_that_breaks_the_contract_stops_the_chain(env):
    instance, res = env
    steps = materialize_corpus("broken", instance, res)
    assert len(steps) == 1 and not steps[0].success
    assert any("unknown_scope" in f for f in steps[0].failures)
    assert check_status(instance, "scope_matches_data", "broken") is False
    assert check_status(instance, "valid_schema", "broken") is True
    assert not instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=AssetKey("trace_scope"), asset_partitions=["broken"]),
        limit=1,
    ).records
    # and a direct attempt to decode it fails at the input: nothing decoded
    instance.add_dynamic_partitions("corpus", ["broken"])
    result = dg.materialize(
        list(res.assets),
        selection=["decoded_dataset"],
        instance=instance,
        resources=dict(res.resources),
        raise_on_error=False,
        partition_key=dg.MultiPartitionKey({"corpus": "broken", "tokenizer": "deepseek"}),
    )
    assert not result.success


@pytest.mark.slow
def test_checks_report_per_partition(env):
    instance, res = env
    materialize_corpus("tiny", instance, res)
    materialize_corpus("broken", instance, res)
    assert check_status(instance, "scope_matches_data", "tiny") is True
    assert check_status(instance, "scope_matches_data", "broken") is False


def test_invalid_corpus_names_are_rejected(env):
    instance, res = env
    for bad in ["a|b", "a,b", "a/b", "../x", ""]:
        with pytest.raises(ValueError, match="invalid corpus name"):
            materialize_corpus(bad, instance, res)


def test_descriptor_io_manager_round_trip(tmp_path):
    from weka_assets.defs.io_manager import DescriptorIOManager
    from weka_assets.defs.outputs import DatasetRef
    from weka_assets.defs.resources import WekaStore

    io = DescriptorIOManager(store=WekaStore(base_path=str(tmp_path)))
    ref = DatasetRef(
        corpus="c",
        tokenizer="t",
        key="datasets/k",
        decode_key="k",
        manifest_version=3,
        reused=False,
    )
    key = dg.MultiPartitionKey({"corpus": "c", "tokenizer": "t"})
    io.handle_output(
        dg.build_output_context(asset_key=AssetKey("decoded_dataset"), partition_key=key), ref
    )
    stored = json.loads((tmp_path / "descriptors" / "decoded_dataset" / "c__t.json").read_text())
    assert stored["data"]["decode_key"] == "k"
    loaded = io.load_input(
        dg.build_input_context(asset_key=AssetKey("decoded_dataset"), partition_key=key)
    )
    assert loaded == ref
    missing = dg.build_input_context(asset_key=AssetKey("replay_benchmark"), partition_key=key)
    with pytest.raises(dg.Failure, match="has not been materialized"):
        io.load_input(missing)


def test_a_registry_block_size_still_decodes_from_the_kept_parse(tmp_path):
    """A registry entry stating `block_size: 64` (as the shipped corpora.yaml does) reads the
    corpus at that block size in trace_scope; decoded_dataset still reads the parse it kept
    (issue 27: the block size entered one fingerprint and not the other, so every
    materialization parsed the JSON again)."""
    good = synthetic("kv-cache-tester", traces=5, seed=2)
    registry = tmp_path / "corpora.yaml"
    registry.write_text(f"corpora:\n  - {{name: tiny, source: {good}, block_size: 64}}\n")
    res = resources(str(tmp_path / "store"))
    res["catalog"] = CorpusCatalog(registry_path=str(registry))
    with dg.instance_for_test() as instance:
        steps = materialize_corpus("tiny", instance, build_defs(resource_defs=res))
        assert all(s.success for s in steps)
        key = dg.MultiPartitionKey({"corpus": "tiny", "tokenizer": "deepseek"})
        assert latest(instance, "decoded_dataset", key).metadata["decoded_from"].value == "parse"
