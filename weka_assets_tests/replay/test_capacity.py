"""Bounded-capacity KV-cache simulator: the one-pass curve against the unbounded replay, a
direct LRU simulation, a hand-computed trace, the shared timeline and the capacity parser."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weka_assets.decoding.dataset import open_dataset
from weka_assets.pipeline import decode_corpus
from weka_assets.replay.capacity import (
    KV_PRESETS,
    KVGeometry,
    capacity_curve,
    default_capacities,
    lru_hits,
    parse_capacity,
    previous_touch,
    reuse_profile,
    simulate_lru,
    start_depths,
)
from weka_assets.replay.schedule import Arrival, call_start_times, global_order, trace_offsets
from weka_assets.replay.unbounded import replay_unbounded
from weka_assets_tests.corpora import REAL_SAMPLE, decoded, synthetic

needs_real = pytest.mark.skipif(
    not REAL_SAMPLE.is_dir(), reason=f"real sample missing at {REAL_SAMPLE}"
)
ARRIVALS = [
    Arrival(),
    Arrival("staggered", interval_s=45.0),
    Arrival("poisson", rate_per_s=0.02, seed=5),
]


def _corpus(which):
    if which == "real":
        if not REAL_SAMPLE.is_dir():
            pytest.skip("real sample missing")
        return decoded(REAL_SAMPLE)
    return decoded(synthetic(which, traces=8, seed=2))


# ---- the unbounded point is the unbounded token replay ------------------------------------------


@pytest.mark.parametrize("which", ["real", "semianalysis", "kv-cache-tester"])
def test_unbounded_and_large_capacity_equal_the_unbounded_token_replay(which):
    ds = _corpus(which)
    result, cf = replay_unbounded(ds)
    assert result.cross_trace_shared_blocks == 0  # one shared cache == one cache per trace
    prof = reuse_profile(ds, Arrival("poisson", rate_per_s=0.1, seed=1))
    for cap in (None, prof.distinct_blocks, prof.distinct_blocks + 7):
        assert (prof.call_hits(cap) == cf.token_hits).all(), cap
    curve = capacity_curve(ds, [prof.distinct_blocks], profile=prof)
    assert [p.capacity_blocks for p in curve.points] == [prof.distinct_blocks, None]
    for p in curve.points:
        assert p.hits == result.token_hits and p.blocks == result.token_blocks
        for role in ("parent", "subagent"):
            assert p.per_role[role].hits == result.per_role[role].token_hits
    assert curve.blocks_total == result.token_blocks


@needs_real
def test_hit_rate_never_decreases_with_capacity_on_the_real_sample():
    ds = decoded(REAL_SAMPLE)
    caps = default_capacities(ds)
    assert len(caps) == 12
    for arrival in ARRIVALS:
        curve = capacity_curve(ds, [0, *caps, 10**9], arrival)
        assert caps[-1] == curve.distinct_blocks
        hits = [p.hits for p in curve.points]
        assert hits == sorted(hits) and hits[0] == 0, arrival
        for role in ("parent", "subagent"):
            role_hits = [p.per_role[role].hits for p in curve.points]
            assert role_hits == sorted(role_hits)
        assert 0 < curve.points[len(caps) // 2].hits < curve.points[-1].hits


# ---- a hand-computed trace ----------------------------------------------------------------------


def _request(t, blocks):
    return {"t": t, "type": "n", "model": "m", "in": 64 * len(blocks), "out": 1, "hash_ids": blocks}


def test_hand_built_trace_gives_hand_computed_hits(tmp_path):
    """Two traces, block size 64, every prompt a whole number of blocks; ids are per trace, so
    A's keys a1.. and B's keys b1.. never coincide. On one timeline ("together"):

        A1 t=0 [a1 a2]   B1 t=10 [b1]   A2 t=20 [a1 a2 a3]   B2 t=30 [b1 b2]   A3 t=40 [a1..a4]

    LRU with capacity 3 (cache listed oldest first, after each call):
      A1: 0 hits                  [a1 a2]
      B1: 0 hits                  [a1 a2 b1]
      A2: a1, a2 present, a3 not: 2 hits; touching a1 a2 a3 evicts b1       [a1 a2 a3]
      B2: b1 missing: 0 hits; b1 evicts a1, b2 evicts a2                    [a3 b1 b2]
      A3: a1 missing: 0 hits (a3 is present, but the leading run stopped)   [a2 a3 a4]
    Capacity 4: B2 finds b1 (1 hit; its touches leave [a2 a3 b1 b2]), A3 misses a1: 3 in all.
    Capacity 5 already holds all 5 keys seen before A3: A3 hits 3, B2 1, the unbounded 6.
    Depths at each call's start: A2 (2, 1, never), B2 (3, never), A3 (4, 3, 2, never).
    Staggered by 100 s, B runs after A ends: capacity 3 then hits 2 + 3 for A, 1 for B.
    """
    traces = [
        {
            "id": "A",
            "models": ["m"],
            "block_size": 64,
            "hash_id_scope": "local",
            "requests": [
                _request(0.0, [1, 2]),
                _request(20.0, [1, 2, 3]),
                _request(40.0, [1, 2, 3, 4]),
            ],
        },
        {
            "id": "B",
            "models": ["m"],
            "block_size": 64,
            "hash_id_scope": "local",
            "requests": [_request(10.0, [1]), _request(30.0, [1, 2])],
        },
    ]
    corpus = tmp_path / "hand.jsonl"
    corpus.write_text("".join(json.dumps(t) + "\n" for t in traces))
    ds = open_dataset(decode_corpus(corpus, tmp_path / "store", measure_drift=False).path)
    assert [t["id"] for t in ds.traces] == ["A", "B"]  # calls: A1 A2 A3 B1 B2
    assert global_order(ds).tolist() == [0, 3, 1, 4, 2]
    expected = {
        3: [0, 2, 0, 0, 0],
        4: [0, 2, 0, 0, 1],
        5: [0, 2, 3, 0, 1],
        None: [0, 2, 3, 0, 1],
    }
    prof = reuse_profile(ds)
    never = prof.never
    assert prof.depth.tolist() == [never, never, never, 2, 1, never, 3, never, 4, 3, 2, never]
    assert prof.distinct_blocks == 6
    for cap, hits in expected.items():
        assert prof.call_hits(cap).tolist() == hits, cap
        if cap is not None:
            assert simulate_lru(ds, cap).tolist() == hits, cap
    curve = capacity_curve(ds, [3, 4, 5])
    assert [p.hits for p in curve.points] == [2, 3, 6, 6]
    assert [p.per_role["parent"].hit_rate for p in curve.points] == [2 / 12, 3 / 12, 6 / 12, 6 / 12]
    assert curve.points[0].per_role["subagent"].hit_rate is None
    staggered = Arrival("staggered", interval_s=100.0)
    assert global_order(ds, staggered).tolist() == [0, 1, 2, 3, 4]
    assert reuse_profile(ds, staggered).call_hits(3).tolist() == [0, 2, 3, 0, 1]
    assert simulate_lru(ds, 3, staggered).tolist() == [0, 2, 3, 0, 1]
    # twice as fast, B staggered by 30 s: A at 0 10 20, B at 30 35: no interleaving either
    fast = reuse_profile(ds, Arrival("staggered", interval_s=30.0), time_scale=0.5)
    assert fast.call_hits(3).tolist() == [0, 2, 3, 0, 1]


# ---- the one-pass curve against the direct LRU simulation -----------------------------------------


@pytest.mark.parametrize("chunk", [1 << 20, 5], ids=["one-chunk", "chunks-of-5"])
@pytest.mark.parametrize("arrival", ARRIVALS, ids=lambda a: a.mode)
@pytest.mark.parametrize("which", ["semianalysis", "kv-cache-tester"])
def test_stack_depths_equal_the_direct_lru_call_by_call(which, arrival, chunk, monkeypatch):
    # chunks of 5 accesses: every chunked pass (gather, sort neighbours, runs, spread, running
    # maxima) crosses call and chunk boundaries many times
    monkeypatch.setattr("weka_assets.replay.capacity.SPREAD_CHUNK", chunk)
    ds = decoded(synthetic(which, traces=4, seed=11))
    prof = reuse_profile(ds, arrival, time_scale=0.7)
    d = prof.distinct_blocks
    for cap in sorted({0, 1, 7, d // 20, d // 6, d // 3, d // 2, d - 1}):
        ref = simulate_lru(ds, cap, arrival, time_scale=0.7)
        assert (prof.call_hits(cap) == ref).all(), cap


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(["together", "staggered", "poisson"]),
    cap_fraction=st.floats(0.0, 1.0),
)
def test_stack_depths_equal_the_direct_lru_over_seeds(seed, mode, cap_fraction):
    ds = decoded(synthetic("semianalysis", traces=3, seed=seed % 4))
    arrival = Arrival(mode, interval_s=20.0, rate_per_s=0.05, seed=seed)
    prof = reuse_profile(ds, arrival)
    cap = int(cap_fraction * prof.distinct_blocks)
    assert (prof.call_hits(cap) == simulate_lru(ds, cap, arrival)).all()


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    calls=st.integers(1, 25),
    key_range=st.integers(1, 40),
    cap=st.integers(0, 40),
)
def test_depth_pass_equals_lru_on_arbitrary_access_patterns(seed, calls, key_range, cap):
    """Any keys, repeats within a call included: not only the prefix-chained traffic."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 10, calls)
    keys = rng.integers(0, key_range, int(lengths.sum())).astype(np.uint64)
    depth, distinct = start_depths(keys, lengths)
    assert distinct == np.unique(keys).size
    hit = np.where(depth < 0, np.inf, depth)
    out, start = [], 0
    for n in lengths.tolist():
        run = np.maximum.accumulate(hit[start : start + n]) if n else hit[:0]
        out.append(int((run < cap).sum()))
        start += n
    assert out == lru_hits(keys, lengths, cap).tolist()


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.integers(0, 5), max_size=200), spread=st.sampled_from([0, 1, 1 << 40]))
def test_previous_touch(keys, spread):
    # spread 0: keys share their high bits and differ in the low ones, the clash path
    arr = np.array(keys, dtype=np.uint64) * np.uint64(spread or 1) + np.uint64(1 << 60)
    last, ref = {}, []
    for i, k in enumerate(arr.tolist()):
        ref.append(last.get(k, -1))
        last[k] = i
    assert previous_touch(arr).tolist() == ref


# ---- the shared timeline ----------------------------------------------------------------------


def test_arrival_offsets():
    assert trace_offsets(4, Arrival()).tolist() == [0, 0, 0, 0]
    assert trace_offsets(4, Arrival("staggered", interval_s=30)).tolist() == [0, 30, 60, 90]
    p = Arrival("poisson", rate_per_s=0.5, seed=3)
    off = trace_offsets(2000, p)
    assert off[0] == 0 and (np.diff(off) >= 0).all()
    assert np.diff(off).mean() == pytest.approx(2.0, rel=0.1)  # mean gap 1 / rate
    assert (trace_offsets(2000, p) == off).all()
    assert not (trace_offsets(2000, Arrival("poisson", rate_per_s=0.5, seed=4)) == off).all()
    assert trace_offsets(0, p).size == 0 and trace_offsets(1, p).tolist() == [0.0]
    for bad in (
        dict(mode="burst"),
        dict(interval_s=-1.0),
        dict(rate_per_s=0.0),
    ):
        with pytest.raises(ValueError):
            Arrival(**bad)


def test_call_start_times_and_global_order():
    ds = decoded(synthetic("semianalysis", traces=5, seed=2))
    trace, t_abs = ds.calls["trace"], ds.calls["t_abs"]
    arrival = Arrival("staggered", interval_s=100.0)
    start = call_start_times(ds, arrival, time_scale=0.5)
    assert np.allclose(start, trace * 100.0 + t_abs * 0.5)
    assert (call_start_times(ds) == t_abs).all()
    for arr in ARRIVALS:
        for scale in (1.0, 0.25):
            order = global_order(ds, arr, scale)
            assert sorted(order.tolist()) == list(range(ds.n_calls))
            s = call_start_times(ds, arr, scale)[order]
            assert (np.diff(s) >= 0).all()
            # within a trace, the trace's own replay order is kept
            for k in range(len(ds.traces)):
                mine = order[trace[order] == k]
                assert (np.diff(mine) > 0).all()
            # ties: by trace, then position
            tie = np.diff(s) == 0
            a, b = order[:-1][tie], order[1:][tie]
            assert ((trace[a] < trace[b]) | ((trace[a] == trace[b]) & (a < b))).all()
    # together: all traces start at 0, so calls at t_abs 0 tie and go in trace order
    together = global_order(ds)
    firsts = together[: len(ds.traces)]
    assert (t_abs[firsts] == 0).all() and (np.diff(trace[firsts]) > 0).all()
    with pytest.raises(ValueError):
        call_start_times(ds, time_scale=0.0)


# ---- geometry and capacities ------------------------------------------------------------------


def test_presets_and_parse_capacity():
    g = KV_PRESETS["llama-3.1-8b"]
    assert g.bytes_per_token == 131072 == 2 * 32 * 8 * 128 * 2
    assert KV_PRESETS["llama-3.1-70b"].bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert KV_PRESETS["qwen2.5-32b"].bytes_per_token == 2 * 64 * 8 * 128 * 2
    assert KV_PRESETS["mistral-7b"].bytes_per_token == 131072
    assert not any("deepseek" in name for name in KV_PRESETS)  # MLA: not this formula
    assert g.blocks_for_bytes(2**30, 64) == 2**30 // (64 * 131072) == 128
    assert parse_capacity("5000", 64) == 5000
    assert parse_capacity("5000blocks", 64) == parse_capacity(" 5000 Blocks ", 64) == 5000
    assert parse_capacity("16GiB", 64, g) == 16 * 128
    assert parse_capacity("16gib", 64, g) == 2048
    assert parse_capacity("512MB", 64, g) == 512 * 10**6 // (64 * 131072) == 61
    assert parse_capacity("2TB", 16, g) == 2 * 10**12 // (16 * 131072)
    assert parse_capacity("1.5GiB", 64, g) == 192
    fp8 = KVGeometry("x", layers=32, kv_heads=8, head_dim=128, dtype_bytes=1)
    assert parse_capacity("16GiB", 64, fp8) == 4096
    for bad in ("", "abc", "-5", "5.5", "5 parsecs", "16 GiB blocks"):
        with pytest.raises(ValueError):
            parse_capacity(bad, 64, g)
    with pytest.raises(ValueError, match="geometry"):
        parse_capacity("16GiB", 64)


def test_curve_shape_default_sweep_and_plot():
    ds = decoded(synthetic("kv-cache-tester", traces=8, seed=2))
    caps = default_capacities(ds)
    prof = reuse_profile(ds)
    assert caps == sorted(set(caps)) and caps[-1] == prof.distinct_blocks and caps[0] >= 1
    curve = capacity_curve(ds, geometry=KV_PRESETS["qwen2.5-32b"])
    assert [p.capacity_blocks for p in curve.points] == [*caps, None]
    assert curve.points[-1].capacity_bytes is None and curve.block_size == 64
    assert (
        curve.points[0].capacity_bytes == caps[0] * 64 * KV_PRESETS["qwen2.5-32b"].bytes_per_token
    )
    assert curve.calls == ds.n_calls and curve.distinct_blocks == prof.distinct_blocks
    assert all(
        p.hits == sum(r.hits for r in p.per_role.values())
        and p.blocks == sum(r.blocks for r in p.per_role.values()) == curve.blocks_total
        for p in curve.points
    )
    json.dumps(curve.model_dump(mode="json"))
    with pytest.raises(ValueError):
        capacity_curve(ds, [-1])
    from weka_assets.replay.capacity import plot_png

    png = plot_png(curve)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 60_000
