"""Discovery sensor and refresh schedule: new entries become partitions and get a run; a moved
revision gets a run and makes downstream stale; an unchanged one requests nothing."""

import datetime
import shutil

import dagster as dg
import pytest

from weka_assets.definitions import build_defs, resources
from weka_assets.defs.resources import CorpusCatalog
from weka_assets.defs.sensors import corpus_discovery_sensor, corpus_refresh_schedule
from weka_assets.instance.materialize import materialize_corpus, run_selection
from weka_assets.instance.staleness import stale_partitions
from weka_assets_tests.corpora import synthetic


@pytest.fixture
def world(tmp_path):
    corpus = tmp_path / "alpha.jsonl"
    shutil.copy(synthetic("kv-cache-tester", traces=3, seed=8), corpus)
    catalog = CorpusCatalog(corpora={"alpha": str(corpus), "sample": "builtin:sample-kvt"})
    res = dict(resources(str(tmp_path / "store")), catalog=catalog)
    with dg.instance_for_test() as instance:
        yield instance, build_defs(resource_defs=res), catalog, corpus


def tick(instance, catalog, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"catalog": catalog})
    return corpus_discovery_sensor(ctx)


def test_new_entries_become_partitions_and_get_a_run(world):
    instance, _, catalog, _ = world
    result = tick(instance, catalog)
    added = [k for r in result.dynamic_partitions_requests for k in r.partition_keys]
    assert sorted(added) == ["alpha", "sample"]
    assert sorted(r.partition_key for r in result.run_requests) == ["alpha", "sample"]
    assert all(r.asset_selection == [dg.AssetKey("raw_traces")] for r in result.run_requests)
    instance.add_dynamic_partitions("corpus", added)
    again = tick(instance, catalog, result.cursor)
    assert not again.run_requests and not again.dynamic_partitions_requests


@pytest.mark.slow
def test_moved_revision_gets_a_run_and_makes_downstream_stale(world):
    instance, defs, catalog, corpus = world
    first = tick(instance, catalog)
    assert all(s.success for s in materialize_corpus("alpha", instance, defs, log_level="WARNING"))
    assert stale_partitions(defs, instance) == []
    # upstream re-uploaded with different bytes
    corpus.write_text(synthetic("kv-cache-tester", traces=4, seed=8).read_text())
    moved = tick(instance, catalog, first.cursor)
    assert [r.partition_key for r in moved.run_requests] == ["alpha"]
    new_revision = moved.run_requests[0].tags["weka-assets/revision"]
    assert new_revision.startswith("sha256:")
    assert moved.run_requests[0].run_key == f"alpha@{new_revision}"
    assert run_selection(defs, instance, ["raw_traces"], "alpha", "WARNING").success
    stale = {(s.asset, s.partition) for s in stale_partitions(defs, instance)}
    assert ("trace_scope", "alpha") in stale
    assert tick(instance, catalog, moved.cursor).run_requests == []


@pytest.mark.slow
def test_refetching_identical_bytes_leaves_downstream_fresh(world):
    instance, defs, _, _ = world
    instance.add_dynamic_partitions("corpus", ["alpha"])
    assert all(s.success for s in materialize_corpus("alpha", instance, defs, log_level="WARNING"))
    assert run_selection(defs, instance, ["raw_traces"], "alpha", "WARNING").success
    assert stale_partitions(defs, instance) == []


def test_refresh_schedule_requests_every_registered_corpus(world):
    instance, _, catalog, _ = world
    instance.add_dynamic_partitions("corpus", ["alpha"])
    when = datetime.datetime(2026, 11, 28, 3, 0, tzinfo=datetime.UTC)
    ctx = dg.build_schedule_context(
        instance=instance, resources={"catalog": catalog}, scheduled_execution_time=when
    )
    requests = list(corpus_refresh_schedule(ctx))
    assert [r.partition_key for r in requests] == ["alpha"]  # "sample" has no partition yet
