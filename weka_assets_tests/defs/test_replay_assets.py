"""The thin replay assets: each figure equals the core computed on its own (the same figures
as when one asset computed them all), and the per-call table and the capacity curve load as
pandas DataFrames through `load_asset_value`, as in a notebook."""

import dagster as dg
import orjson
import pandas as pd
import pytest

from weka_assets.decoding.dataset import open_dataset
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.definitions import build_defs, resources
from weka_assets.defs.resources import ReplayOptions
from weka_assets.instance.materialize import materialize_corpus
from weka_assets.pipeline import decode_corpus, replay
from weka_assets.store import Store
from weka_assets.store_chain import capacity_figures, policy_comparison

pytestmark = pytest.mark.slow
PARTITION = dg.MultiPartitionKey({"corpus": "sample", "tokenizer": "deepseek"})


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The chain of `sample` materialized once: (definitions, instance, store)."""
    root = tmp_path_factory.mktemp("store")
    with dg.instance_for_test() as instance:
        defs = build_defs(resource_defs=resources(str(root)))
        assert all(
            s.success for s in materialize_corpus("sample", instance, defs, log_level="WARNING")
        )
        yield defs, instance, Store(str(root))


def load(chain, asset):
    defs, instance, _ = chain
    return defs.load_asset_value(asset, partition_key=PARTITION, instance=instance)


def test_the_split_assets_compute_what_the_core_computes(chain, tmp_path):
    defs, instance, store = chain
    raw = defs.load_asset_value("raw_traces", partition_key="sample", instance=instance)
    corpus = store.pull(raw.key)
    legacy_ref = load(chain, "legacy_scope_replay")
    # the legacy figures: the corpus decoded apart with the session scope, then replayed
    legacy = decode_corpus(
        corpus, tmp_path, DecodeSettings(scope_policy="session"), measure_drift=False
    )
    want_legacy, _ = replay(legacy.path)
    got_legacy = orjson.loads(store.read_bytes(legacy_ref.result_key))
    assert legacy_ref.decode_key == legacy.key
    assert got_legacy == orjson.loads(want_legacy.model_dump_json())
    # the comparison on replay_benchmark: the two results side by side
    bench = load(chain, "replay_benchmark")
    rows = orjson.loads(
        store.read_bytes(bench.result_key.replace("result.json", "scope_policy_comparison.json"))
    )["rows"]
    correct, _ = replay(store.pull(f"datasets/{bench.decode_key}"))
    assert rows == policy_comparison(correct, want_legacy)
    assert any(r["hits_lost_by_session_scope"] > 0 for r in rows)  # the bug costs hits here
    # the capacity curve: the same sweep run directly on the dataset
    cap = load(chain, "capacity_curve")
    ds = open_dataset(store.pull(f"datasets/{cap.decode_key}"))
    curve, _, covered = capacity_figures(ds, ReplayOptions())
    assert orjson.loads(store.read_bytes(cap.curve_key)) == orjson.loads(curve.model_dump_json())
    assert cap.traces == covered == len(ds.traces)


def test_the_per_call_table_and_the_capacity_curve_load_as_dataframes(chain):
    _, _, store = chain
    bench = load(chain, "replay_benchmark")
    frame = bench.per_call_frame(store)
    result = orjson.loads(store.read_bytes(bench.result_key))
    assert isinstance(frame, pd.DataFrame) and len(frame) == result["calls"]
    assert {"trace", "role", "ids", "hits", "token_hits"} <= set(frame.columns)
    assert int(frame["hits"].sum()) == result["hits"]
    assert int(frame["token_hits"].sum()) == result["token_hits"]
    curve = load(chain, "capacity_curve").frame(store)
    assert list(curve.columns[:5]) == [
        "capacity_blocks",
        "capacity_bytes",
        "hits",
        "blocks",
        "hit_rate",
    ]
    assert curve["capacity_blocks"].isna().tolist()[-1]  # the unbounded point last
    assert curve["hit_rate"].is_monotonic_increasing


def test_the_policy_sweep_is_the_cores_and_shows_in_the_ui(chain):
    from weka_assets.sources import CorpusEntry
    from weka_assets.store_chain import policy_report

    defs, instance, store = chain
    cap = load(chain, "capacity_curve")
    ds = open_dataset(store.pull(f"datasets/{cap.decode_key}"))
    entry = CorpusEntry(name="sample", source="x:y")
    want, traces = policy_report(ds, ReplayOptions(), entry, "sample")
    assert [c.policy for c in want.curves] == ["lru", "opt", "vllm"]
    assert orjson.loads(store.read_bytes(cap.report_key)) == orjson.loads(want.model_dump_json())
    assert cap.report_traces == traces < len(ds.traces)  # bounded by policy_max_blocks
    assert store.read_bytes(cap.policy_plot_key)[:8] == b"\x89PNG\r\n\x1a\n"
    event = instance.get_latest_materialization_event(dg.AssetKey("capacity_curve"))
    meta = event.asset_materialization.metadata
    assert {"capacity_policies", "capacity_policy_plot", "capacity_definitions"} <= set(meta)
    rows = meta["capacity_policies"].value.records
    assert len(rows) == len(want.curves[0].points)
    assert all(r.data["opt_hit_rate"] >= r.data["lru_hit_rate"] for r in rows)


def test_a_corpus_states_its_hardware_once_in_the_registry():
    from weka_assets.sources import CorpusEntry

    options = ReplayOptions(tiers="gpu=1GiB", replicas=2)
    plain = CorpusEntry(name="a", source="x:y")
    sized = CorpusEntry(
        name="b",
        source="x:y",
        sizing={"kv_model": "qwen2.5-7b", "tiers": "gpu=80GiB,host=1TiB", "routing": "prefix"},
    )
    for entry in (plain, None):  # None: not in the registry (any more)
        opts, model, _ = options.sizing(entry)
        assert (opts.tiers, opts.replicas, opts.routing, model) == (
            "gpu=1GiB", 2, "session", "llama-3.1-8b",
        )  # fmt: skip
    opts, model, _ = options.sizing(sized)
    assert (opts.tiers, opts.replicas, opts.routing, model) == (
        "gpu=80GiB,host=1TiB", 2, "prefix", "qwen2.5-7b",
    )  # fmt: skip
    with pytest.raises(ValueError, match="routing"):
        CorpusEntry(name="c", source="x:y", sizing={"routing": "random"})
