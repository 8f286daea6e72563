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
from weka_assets.defs.assets.replay import capacity_figures, policy_comparison
from weka_assets.defs.resources import ReplayOptions
from weka_assets.instance.materialize import materialize_corpus
from weka_assets.pipeline import decode_corpus, replay
from weka_assets.store import Store

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
