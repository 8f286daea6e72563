"""Every run this project requests carries its corpus's tag (`weka-assets/corpus`), whatever
partitions it covers: the run queue's per-corpus limit (deploy/dagster.yaml) reads it. The
requests of the discovery sensor, the refresh schedule, the automation sensor (runs and
backfills) and `weka-assets launch`; the limit itself is shown on a real deployment in
weka_assets_tests/cluster/test_cluster.py."""

import datetime

import dagster as dg
import pytest
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey

from weka_assets.definitions import build_defs, resources
from weka_assets.defs.automation import CorpusAutomationSensor, per_corpus, with_corpus_tag
from weka_assets.defs.jobs import CORPUS_ASSETS, DECODE_ASSETS
from weka_assets.defs.partitions import CORPUS_TAG, corpus_of, multi_key
from weka_assets.defs.resources import CorpusCatalog
from weka_assets.defs.sensors import corpus_discovery_sensor, corpus_refresh_schedule
from weka_assets.instance.launch import backfills_by_corpus, chain_backfill, chain_partitions
from weka_assets.instance.staleness import StalePartition


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    defs = build_defs(resource_defs=resources(str(tmp_path_factory.mktemp("store"))))
    # built under a live instance: loading reads the instance's definitions state (a test
    # that ran before in this process may have left a stale one behind)
    with dg.instance_for_test():
        return defs.get_repository_def()


@pytest.fixture
def catalog():
    return CorpusCatalog(corpora={"alpha": "builtin:sample-kvt", "sample": "builtin:sample"})


def _backfill_tags(params: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in params["tags"]}


def _backfill_pairs(params: dict) -> set[tuple[str, str]]:
    return {
        ("/".join(p["assetKey"]["path"]), r["start"])
        for p in params["partitionsByAssets"]
        for r in p["partitions"]["ranges"]
    }


def test_the_corpus_of_either_partition_space():
    assert corpus_of("sample") == "sample"
    assert corpus_of("sample|deepseek") == "sample"
    assert corpus_of(multi_key("kvt", "deepseek")) == "kvt"


def test_discovery_requests_carry_their_corpus(catalog):
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources={"catalog": catalog})
        result = corpus_discovery_sensor(ctx)
    assert sorted(r.partition_key for r in result.run_requests) == ["alpha", "sample"]
    assert all(r.tags[CORPUS_TAG] == r.partition_key for r in result.run_requests)


def test_refresh_requests_carry_their_corpus(catalog):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("corpus", ["alpha", "sample"])
        when = datetime.datetime(2026, 11, 28, 3, 0, tzinfo=datetime.UTC)
        ctx = dg.build_schedule_context(
            instance=instance, resources={"catalog": catalog}, scheduled_execution_time=when
        )
        requests = list(corpus_refresh_schedule(ctx))
    assert sorted(r.partition_key for r in requests) == ["alpha", "sample"]
    assert all(r.tags[CORPUS_TAG] == r.partition_key for r in requests)


def test_the_launch_backfill_carries_its_corpus_for_every_run():
    params = chain_backfill(["sample"], "deepseek")
    # a backfill's runs inherit its tags: the corpus-only run and the corpus x tokenizer ones
    assert _backfill_tags(params) == {"weka-assets/trigger": "launch", CORPUS_TAG: "sample"}
    assert _backfill_pairs(params) == {
        *((a, "sample") for a in CORPUS_ASSETS),
        *((a, "sample|deepseek") for a in DECODE_ASSETS),
    }


def test_a_backfill_over_several_corpora_is_split_into_one_per_corpus():
    parts = [
        *chain_partitions("alpha", "deepseek"),
        StalePartition("decoded_dataset", "beta|deepseek", ()),
    ]
    split = backfills_by_corpus(parts, "stale", "backfill-stale")
    assert sorted(split) == ["alpha", "beta"]
    for corpus, params in split.items():
        assert _backfill_tags(params) == {
            "weka-assets/trigger": "backfill-stale",
            CORPUS_TAG: corpus,
        }
        assert {corpus_of(p) for _, p in _backfill_pairs(params)} == {corpus}
    assert _backfill_pairs(split["beta"]) == {("decoded_dataset", "beta|deepseek")}
    assert set().union(*(_backfill_pairs(p) for p in split.values())) == {
        (p.asset, p.partition) for p in parts
    }


def test_the_automation_sensor_keeps_its_class_in_the_definitions(repo):
    sensor = repo.get_sensor_def("weka_automation_sensor")
    assert isinstance(sensor, CorpusAutomationSensor)
    assert sensor.emit_backfills  # Dagster's own grouping, only split per corpus
    # Definitions copies sensors to update their metadata: the copy is still ours
    assert isinstance(sensor.with_attributes(metadata={"x": "y"}), CorpusAutomationSensor)


def test_the_automation_sensor_ticks_with_the_sensor_daemon(repo):
    """Every step of a corpus's chain that automation requests (a scope partition's children,
    a manifest bump's stale partitions) waits for the next tick: at the sensor daemon's own
    5 s, not 30 s, and the interval survives Definitions' copy of the sensor."""
    sensor = repo.get_sensor_def("weka_automation_sensor")
    assert sensor.minimum_interval_seconds == 5
    assert sensor.with_attributes(metadata={"x": "y"}).minimum_interval_seconds == 5


def test_automation_runs_of_either_partition_space_carry_their_corpus():
    run = with_corpus_tag(dg.RunRequest(partition_key="alpha", tags={"dagster/partition": "alpha"}))
    assert run.tags[CORPUS_TAG] == "alpha"
    multi = with_corpus_tag(dg.RunRequest(partition_key="alpha|deepseek"))
    assert multi.tags[CORPUS_TAG] == "alpha"


def test_an_automation_backfill_over_two_corpora_becomes_one_per_corpus(repo):
    graph = repo.asset_graph
    wanted = {
        AssetKeyPartitionKey(dg.AssetKey("trace_scope"), "alpha"),
        AssetKeyPartitionKey(dg.AssetKey("decoded_dataset"), "alpha|deepseek"),
        AssetKeyPartitionKey(dg.AssetKey("decoded_dataset"), "beta|deepseek"),
        AssetKeyPartitionKey(dg.AssetKey("capacity_curve"), "beta|deepseek"),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("corpus", ["alpha", "beta"])
        with dg.partition_loading_context(dynamic_partitions_store=instance):
            backfill = dg.RunRequest.for_asset_graph_subset(
                AssetGraphSubset.from_asset_partition_set(wanted, graph),
                tags={"dagster/sensor_name": "weka_automation_sensor"},
            )
            split = per_corpus(backfill, graph)
            got = {
                r.tags[CORPUS_TAG]: set(r.asset_graph_subset.iterate_asset_partitions())
                for r in split
            }
    assert len(split) == 2 and all(r.requires_backfill_daemon() for r in split)
    assert all(r.tags["dagster/sensor_name"] == "weka_automation_sensor" for r in split)
    assert got == {
        "alpha": {p for p in wanted if corpus_of(p.partition_key) == "alpha"},
        "beta": {p for p in wanted if corpus_of(p.partition_key) == "beta"},
    }


def test_an_automation_tick_requests_only_tagged_runs(repo):
    """The sensor as the daemon evaluates it (in the code server): new raw_traces of two
    corpora in one tick (Dagster emits one backfill: split per corpus), then of one corpus (a
    run)."""
    sensor = repo.get_sensor_def("weka_automation_sensor")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("corpus", ["alpha", "beta", "gamma"])

        def tick(cursor=None):
            ctx = dg.build_sensor_context(instance=instance, repository_def=repo, cursor=cursor)
            return sensor.evaluate_tick(ctx)

        def new_raw(*corpora):
            for c in corpora:
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(
                        "raw_traces", partition=c, tags={"dagster/data_version": f"{c}-1"}
                    )
                )

        first = tick()
        new_raw("alpha", "beta")
        two = tick(first.cursor)
        new_raw("gamma")
        one = tick(two.cursor)
        with dg.partition_loading_context(dynamic_partitions_store=instance):
            backfills = {
                r.tags[CORPUS_TAG]: {
                    (p.asset_key.to_user_string(), p.partition_key)
                    for p in r.asset_graph_subset.iterate_asset_partitions()
                }
                for r in two.run_requests
            }
    assert all(r.requires_backfill_daemon() for r in two.run_requests)
    assert backfills == {"alpha": {("trace_scope", "alpha")}, "beta": {("trace_scope", "beta")}}
    [run] = one.run_requests
    assert not run.requires_backfill_daemon()
    assert run.partition_key == "gamma" and run.tags[CORPUS_TAG] == "gamma"
    assert run.asset_selection == [dg.AssetKey("trace_scope")]
