"""The automation sensor's conditions: a manifest bump requests the stale partitions, but only
where the scope checks upstream passed; the manifest version is injected, never reloaded."""

import dagster as dg
import pytest

from weka_assets.definitions import build_defs, resources
from weka_assets.defs.jobs import DECODE_ASSETS
from weka_assets.defs.resources import CorpusCatalog
from weka_assets.instance.materialize import materialize_corpus, run_selection
from weka_assets.instance.staleness import backfill_in_process, stale_partitions
from weka_assets_tests.corpora import synthetic

pytestmark = pytest.mark.slow


def requested(result, instance) -> set[tuple[str, str]]:
    """(asset, partition) pairs the automation sensor would request."""
    out = set()
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        for r in result.results:
            for key in r.true_subset.expensively_compute_asset_partitions():
                out.add((key.asset_key.to_user_string(), str(key.partition_key)))
    return out


@pytest.fixture
def world(tmp_path):
    good = synthetic("kv-cache-tester", traces=4, seed=3)
    other = synthetic("semianalysis", traces=4, seed=3)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(other.read_text().replace('"local"', '"galaxy"', 1))
    base = resources(str(tmp_path / "store"))
    catalog = {"alpha": str(good), "beta": str(other)}

    def defs_for(version, **overrides):
        res = dict(base, catalog=CorpusCatalog(corpora={**catalog, **overrides}))
        return build_defs(version, res)

    with dg.instance_for_test() as instance:
        yield instance, defs_for, str(broken)


def test_bump_requests_exactly_the_dependent_partitions_whose_checks_passed(world):
    instance, defs_for, broken = world
    v1 = defs_for(1)
    for corpus in ("alpha", "beta"):
        assert all(s.success for s in materialize_corpus(corpus, instance, v1, log_level="WARNING"))
    # beta's source changes to a corpus that breaks the contract: its scope checks now fail
    v1_broken = defs_for(1, beta=broken)
    steps = materialize_corpus("beta", instance, v1_broken, log_level="WARNING")
    assert not steps[0].success and any("scope_matches_data" in c for c in steps[0].failed_checks)

    first = dg.evaluate_automation_conditions(defs=v1_broken, instance=instance)
    assert not {a for a, _ in requested(first, instance)} & {"decoded_dataset", "replay_benchmark"}
    bumped = dg.evaluate_automation_conditions(
        defs=defs_for(2, beta=broken), instance=instance, cursor=first.cursor
    )
    got = requested(bumped, instance)
    assert ("decoded_dataset", "alpha|deepseek") in got and (
        "replay_benchmark",
        "alpha|deepseek",
    ) in got
    assert {a for a, p in got if p.startswith("alpha")} == set(DECODE_ASSETS)
    assert not any(p.startswith("beta") for _, p in got)


def test_bump_makes_exactly_the_dependent_partitions_stale_and_backfill_clears_them(world):
    instance, defs_for, _ = world
    v1 = defs_for(1)
    assert all(s.success for s in materialize_corpus("alpha", instance, v1, log_level="WARNING"))
    assert stale_partitions(v1, instance) == []
    v2 = defs_for(2)
    stale = stale_partitions(v2, instance)
    assert {(s.asset, s.partition) for s in stale} == {
        (asset, "alpha|deepseek") for asset in DECODE_ASSETS
    }
    assert all("new code version" in c for s in stale for c in s.causes)
    outcomes = backfill_in_process(v2, instance, stale)
    assert all(o.success for o in outcomes) and stale_partitions(v2, instance) == []


def _materialize(defs, instance, asset: str, partition: str) -> None:
    """One asset of one partition, with its checks, as the automation sensor would run it."""
    assert run_selection(defs, instance, [asset], partition, log_level="WARNING").success


def test_a_refresh_of_identical_bytes_rebuilds_nothing_and_changed_bytes_do(world, tmp_path):
    instance, defs_for, _ = world
    source = tmp_path / "alpha.jsonl"
    source.write_bytes(synthetic("kv-cache-tester", traces=4, seed=3).read_bytes())
    defs = defs_for(1, alpha=str(source))
    assert all(s.success for s in materialize_corpus("alpha", instance, defs, log_level="WARNING"))
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert not {p for _, p in requested(settled, instance) if p.startswith("alpha")}
    # the nightly refresh: the same bytes fetched again, a new raw_traces materialization
    _materialize(defs, instance, "raw_traces", "alpha")
    same = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
    assert not {p for _, p in requested(same, instance) if p.startswith("alpha")}
    # other bytes: the scope pass and the decode are requested (one run, in dependency order;
    # the decode waits for the scope checks)
    source.write_bytes(synthetic("kv-cache-tester", traces=4, seed=5).read_bytes())
    _materialize(defs, instance, "raw_traces", "alpha")
    changed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=same.cursor)
    got = requested(changed, instance)
    assert ("trace_scope", "alpha") in got and ("decoded_dataset", "alpha|deepseek") in got
