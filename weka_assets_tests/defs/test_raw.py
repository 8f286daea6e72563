"""raw_traces from a real Hub client: pinned revisions, and failures that name the corpus and
the cause, publish nothing and leave the previous materialization readable."""

import dagster as dg
import pytest

from weka_assets.definitions import build_defs, resources
from weka_assets.defs.resources import CorpusCatalog
from weka_assets.instance.materialize import run_selection
from weka_assets_tests.corpora import synthetic

REPO = "semianalysisai/cc-traces-raw"


def materialize_raw(defs, instance):
    return run_selection(defs, instance, ["raw_traces"], "web", "WARNING")


@pytest.fixture
def world(hub, tmp_path):
    res = resources(str(tmp_path / "store"))

    def defs_for(source):
        return build_defs(resource_defs=dict(res, catalog=CorpusCatalog(corpora={"web": source})))

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("corpus", ["web"])
        yield instance, defs_for, tmp_path / "store"


def test_raw_traces_pins_the_hub_revision(hub, world):
    instance, defs_for, store = world
    sha = hub.commit(
        REPO, {"traces.jsonl": synthetic("semianalysis", traces=3, seed=6).read_bytes()}
    )
    out = materialize_raw(defs_for(f"hf://datasets/{REPO}"), instance)
    assert out.success and out.outputs["raw_traces"].revision == sha
    ev = (
        instance.fetch_materializations(dg.AssetKey("raw_traces"), limit=1)
        .records[0]
        .asset_materialization
    )
    assert ev.metadata["revision"].value == sha and ev.metadata["dagster/row_count"].value == 3


@pytest.mark.parametrize(
    "failure, cause",
    [("truncate", "truncated"), ("missing_file", "not found"), ("missing_repo", "not found")],
)
def test_failures_name_corpus_and_cause_and_keep_the_previous_snapshot(hub, world, failure, cause):
    instance, defs_for, store = world
    good = hub.commit(
        REPO, {"traces.jsonl": synthetic("semianalysis", traces=3, seed=6).read_bytes()}
    )
    first = materialize_raw(defs_for(f"hf://datasets/{REPO}"), instance)
    assert first.success
    before = sorted(p.name for p in (store / "raw").iterdir())
    source = f"hf://datasets/{REPO}"
    if failure == "truncate":
        hub.commit(REPO, {"traces.jsonl": synthetic("semianalysis", traces=5, seed=7).read_bytes()})
        hub.truncate = True
    elif failure == "missing_file":
        source = f"hf://datasets/{REPO}@{good}/nope.jsonl"
    else:
        source = "hf://datasets/nobody/nothing"
    bad = materialize_raw(defs_for(source), instance)
    assert not bad.success
    message = " ".join(bad.failures)
    assert "'web'" in message and cause in message.lower()
    assert sorted(p.name for p in (store / "raw").iterdir()) == before  # nothing partial published
    latest = instance.fetch_materializations(dg.AssetKey("raw_traces"), limit=5).records
    assert len(latest) == 1 and latest[0].asset_materialization.metadata["revision"].value == good
    snapshot = store / first.outputs["raw_traces"].key
    assert snapshot.is_file() and snapshot.stat().st_size == first.outputs["raw_traces"].bytes


def test_a_malformed_registry_fails_with_the_entry_and_field(world, tmp_path):
    instance, _, _ = world
    reg = tmp_path / "corpora.yaml"
    reg.write_text("corpora:\n  - name: web\n    source: ftp://x/y\n")
    defs = build_defs(
        resource_defs=dict(
            resources(str(tmp_path / "store")), catalog=CorpusCatalog(registry_path=str(reg))
        )
    )
    out = materialize_raw(defs, instance)
    assert not out.success
    message = " ".join(out.failures)
    assert "corpora.yaml" in message and "entry 1" in message and "source" in message
