"""Eviction policies beyond LRU: Belady's OPT and TTL expiry against their direct simulations,
on arbitrary keys, random prefix trees of chained keys and decoded synthetic datasets; OPT
against LRU; the per-policy entry point for the curve code."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weka_assets.replay.accesses import timeline
from weka_assets.replay.capacity import lru_hits, previous_touch, reuse_profile
from weka_assets.replay.policies import (
    _opt_hit_flags,
    next_touch,
    opt_call_hits,
    opt_reference_hits,
    policy_call_hits,
    ttl_call_hits,
    ttl_curve,
    ttl_profile,
    ttl_reference_hits,
)
from weka_assets.replay.schedule import Arrival
from weka_assets_tests.corpora import decoded, synthetic

ARRIVALS = [
    Arrival(),
    Arrival("staggered", interval_s=45.0),
    Arrival("poisson", rate_per_s=0.02, seed=5),
]


def _random_calls(seed: int, calls: int, key_range: int):
    """Any keys, repeats within a call included."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 10, calls)
    keys = rng.integers(0, key_range, int(lengths.sum())).astype(np.uint64)
    return keys, lengths


def _prefix_tree_calls(seed: int, calls: int, max_new: int, fresh: float):
    """Chained keys: each call extends a prefix (any length) of an earlier call, or starts
    afresh, with new blocks; a key is a node of the prefix tree, so it fixes its whole prefix."""
    rng = np.random.default_rng(seed)
    paths: list[list[int]] = []
    keys: list[int] = []
    fresh_key = 1
    for _ in range(calls):
        path: list[int] = []
        if paths and rng.random() >= fresh:
            base = paths[int(rng.integers(len(paths)))]
            path = base[: int(rng.integers(0, len(base) + 1))]
        new = int(rng.integers(0, max_new + 1))
        path = path + list(range(fresh_key, fresh_key + new))
        fresh_key += new
        paths.append(path)
        keys += path
    lengths = np.array([len(p) for p in paths], dtype=np.int64)
    return np.array(keys, dtype=np.uint64), lengths


def _timeline(which: str = "semianalysis", traces: int = 3, seed: int = 2, arrival=Arrival()):
    ds = decoded(synthetic(which, traces=traces, seed=seed))
    return ds, timeline(ds, arrival)


# ---- OPT ----------------------------------------------------------------------------------------


def test_opt_hand_built():
    """Capacity 1, calls [a] [b] [a]: b is never used again, so OPT drops it at once and keeps a
    (LRU keeps b): OPT hits [0, 0, 1], LRU none. Chained, capacity 2, calls [a b] [c] [a b] [a]:
    c is never used again, then a b are each other's leading run: OPT 2 + 1 hits, LRU 0 + 1."""
    keys, lengths = np.array([1, 2, 1], np.uint64), np.array([1, 1, 1])
    for cap, hits in {0: [0, 0, 0], 1: [0, 0, 1], 2: [0, 0, 1]}.items():
        assert opt_call_hits(keys, lengths, cap).tolist() == hits
        assert opt_reference_hits(keys, lengths, cap).tolist() == hits
    assert lru_hits(keys, lengths, 1).tolist() == [0, 0, 0]
    keys, lengths = np.array([1, 2, 3, 1, 2, 1], np.uint64), np.array([2, 1, 2, 1])
    assert opt_call_hits(keys, lengths, 2).tolist() == [0, 0, 2, 1]
    assert opt_reference_hits(keys, lengths, 2).tolist() == [0, 0, 2, 1]
    assert lru_hits(keys, lengths, 2).tolist() == [0, 0, 0, 1]
    assert opt_call_hits(keys, lengths, None).tolist() == [0, 0, 2, 1]
    with pytest.raises(ValueError):
        opt_call_hits(keys, lengths, -1)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    calls=st.integers(1, 25),
    key_range=st.integers(1, 40),
    cap=st.integers(0, 40),
)
def test_opt_equals_the_direct_simulation_on_arbitrary_keys(seed, calls, key_range, cap):
    keys, lengths = _random_calls(seed, calls, key_range)
    assert (opt_call_hits(keys, lengths, cap) == opt_reference_hits(keys, lengths, cap)).all()


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    calls=st.integers(1, 40),
    max_new=st.integers(0, 8),
    fresh=st.floats(0.0, 0.5),
)
def test_opt_on_chained_keys(seed, calls, max_new, fresh):
    keys, lengths = _prefix_tree_calls(seed, calls, max_new, fresh)
    distinct = np.unique(keys).size
    prev = previous_touch(keys)
    nxt = next_touch(keys, prev)
    unbounded = opt_call_hits(keys, lengths, None)
    before = np.zeros(lengths.size, dtype=np.int64)
    for cap in range(distinct + 2):
        hits = opt_call_hits(keys, lengths, cap)
        if cap <= 12 or cap % 5 == 0:
            assert (hits == opt_reference_hits(keys, lengths, cap)).all(), cap
        # a stack algorithm: every call's hits grow with the capacity
        assert (hits >= before).all() and (hits <= unbounded).all(), cap
        before = hits
        # chained keys: OPT never breaks a leading run, so all its hits are leading-run hits,
        # and it bounds LRU
        assert _opt_hit_flags(nxt, prev, cap).sum() == hits.sum(), cap
        lru = lru_hits(keys, lengths, cap)
        assert hits.sum() >= lru.sum(), cap
        if cap >= distinct:
            assert (hits == lru).all() and (hits == unbounded).all(), cap


@pytest.mark.parametrize(
    "arrival, chunk",
    [(ARRIVALS[0], 1 << 16), (ARRIVALS[1], 1 << 16), (ARRIVALS[2], 5)],
    ids=["together", "staggered", "poisson-chunks-of-5"],
)
def test_opt_equals_the_direct_simulation_on_a_decoded_dataset(arrival, chunk, monkeypatch):
    # chunks of 5 accesses: the numpy passes chunked all the time (the heap is compacted
    # whenever it fills with entries of past accesses: at every small capacity)
    monkeypatch.setattr("weka_assets.replay.capacity.SPREAD_CHUNK", chunk)
    ds, tl = _timeline("kv-cache-tester", traces=4, seed=11, arrival=arrival)
    prof = reuse_profile(ds, arrival)
    d = prof.distinct_blocks
    lru = prof.call_hits  # ds order
    for cap in sorted({0, 1, 7, d // 20, d // 6, d // 3, d - 1, d}):
        hits = opt_call_hits(tl.keys, tl.lengths, cap)
        assert (hits == opt_reference_hits(tl.keys, tl.lengths, cap)).all(), cap
        assert hits.sum() >= lru(cap).sum(), cap
    assert (opt_call_hits(tl.keys, tl.lengths, d) == lru(d)[tl.order]).all()
    assert (opt_call_hits(tl.keys, tl.lengths, None) == lru(None)[tl.order]).all()


def test_opt_beats_lru_across_the_curve_of_a_decoded_dataset():
    ds, tl = _timeline("semianalysis", traces=8, seed=2)
    prof = reuse_profile(ds)
    d = prof.distinct_blocks
    caps = sorted({int(c) for c in np.geomspace(1, d, 15)})
    opt = policy_call_hits(tl, "opt", caps)
    assert list(opt) == [*caps, None]
    totals = [int(opt[c].sum()) for c in caps]
    assert totals == sorted(totals)
    for c in caps:
        assert totals[caps.index(c)] >= prof.call_hits(c).sum(), c
    assert totals[0] > prof.call_hits(caps[0]).sum()  # strictly better where it is tight
    assert (opt[d] == opt[None]).all() and (opt[None] == prof.call_hits(None)[tl.order]).all()


# ---- TTL ----------------------------------------------------------------------------------------


def test_ttl_hand_built():
    """Calls at 0 [a b], 10 [a], 25 [a b], 26 [b]. TTL 12: at 10 a is 10 s old (1 hit); at 25,
    a is 15 s old (gone), b 25 s: 0 hits; at 26 b was used 1 s ago: 1 hit. TTL 15: the age
    15 is still in (a hits at 25, b is 25 s old: 1 hit). Capacity 1 with TTL 100: LRU only;
    at 10, a was evicted by b (0 hits); at 25 a is back, b not (1 hit); at 26 b is (1 hit)."""
    keys = np.array([1, 2, 1, 1, 2, 2], np.uint64)
    lengths, start = np.array([2, 1, 2, 1]), np.array([0.0, 10.0, 25.0, 26.0])
    for ttl, cap, hits in [
        (12.0, None, [0, 1, 0, 1]),
        (15.0, None, [0, 1, 1, 1]),
        (100.0, None, [0, 1, 2, 1]),
        (100.0, 1, [0, 0, 1, 1]),
        (100.0, 2, [0, 1, 2, 1]),
        (0.0, None, [0, 0, 0, 0]),
    ]:
        assert ttl_call_hits(keys, lengths, start, ttl, cap).tolist() == hits, (ttl, cap)
        assert ttl_reference_hits(keys, lengths, start, ttl, cap).tolist() == hits, (ttl, cap)
    with pytest.raises(ValueError):
        ttl_call_hits(keys, lengths, start[::-1], 10.0)
    with pytest.raises(ValueError):
        ttl_call_hits(keys, lengths, start, -1.0)
    with pytest.raises(ValueError):
        ttl_call_hits(keys, lengths, start, 10.0, -1)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    calls=st.integers(1, 25),
    key_range=st.integers(1, 40),
    cap=st.one_of(st.none(), st.integers(0, 40)),
    ttl=st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.0, 10.0, float("inf")]),
    chained=st.booleans(),
)
def test_ttl_equals_the_direct_simulation(seed, calls, key_range, cap, ttl, chained):
    if chained:
        keys, lengths = _prefix_tree_calls(seed, calls, 6, 0.2)
    else:
        keys, lengths = _random_calls(seed, calls, key_range)
    rng = np.random.default_rng(seed + 1)
    # ties included: several calls at one start, ages exactly at the TTL
    start = np.cumsum(rng.choice([0.0, 0.5, 1.0, 1.5], lengths.size))
    prof = ttl_profile(keys, lengths, start)
    ref = ttl_reference_hits(keys, lengths, start, ttl, cap)
    assert (prof.call_hits(ttl, cap) == ref).all()
    assert (ttl_call_hits(keys, lengths, start, ttl, cap) == ref).all()
    if ttl == float("inf") and cap is not None:
        assert (ref == lru_hits(keys, lengths, cap)).all()


@pytest.mark.parametrize("arrival", ARRIVALS, ids=lambda a: a.mode)
def test_ttl_equals_the_direct_simulation_on_a_decoded_dataset(arrival):
    ds, tl = _timeline("semianalysis", traces=4, seed=11, arrival=arrival)
    lru = reuse_profile(ds, arrival)
    prof = ttl_profile(tl.keys, tl.lengths, tl.start_s)
    shared = ttl_profile(tl.keys, tl.lengths, tl.start_s, lru)
    d = lru.distinct_blocks
    gaps = np.diff(tl.start_s)
    for ttl in (0.0, float(np.median(gaps[gaps > 0])), 60.0, 600.0, float("inf")):
        for cap in (None, 0, 7, d // 10, d // 3, d):
            ref = ttl_reference_hits(tl.keys, tl.lengths, tl.start_s, ttl, cap)
            assert (prof.call_hits(ttl, cap) == ref).all(), (ttl, cap)
            assert (shared.call_hits(ttl, cap) == ref).all(), (ttl, cap)
        # the curve helper: totals over all calls and per role
        caps = [0, 7, d // 10, d // 3, d]
        curve = ttl_curve(prof, ttl, caps)
        assert list(curve) == [*caps, None]
        for cap, total in curve.items():
            per_call = prof.call_hits(ttl, cap)
            assert total == per_call.sum()
            for k in (0, 1):
                mine = tl.role == k
                assert prof.total_hits(ttl, [cap], mine)[cap] == per_call[mine].sum()
    # no expiry: plain LRU
    for cap in (0, 7, d // 3, None):
        assert (prof.call_hits(float("inf"), cap) == lru.call_hits(cap)[tl.order]).all()


# ---- the entry point ----------------------------------------------------------------------------


def test_policy_call_hits():
    ds, tl = _timeline(
        "semianalysis", traces=3, seed=2, arrival=Arrival("staggered", interval_s=30.0)
    )
    lru = reuse_profile(ds, Arrival("staggered", interval_s=30.0))
    caps = [5, 50, 300]
    opt = policy_call_hits(tl, "opt", caps)
    ttl = policy_call_hits(tl, "ttl", caps, ttl_s=120.0)
    shared = policy_call_hits(tl, "ttl", caps, ttl_s=120.0, profile=lru)
    assert list(opt) == list(ttl) == [*caps, None]
    for c in [*caps, None]:
        assert opt[c].shape == (tl.calls,) and opt[c].dtype == np.int64
        assert (opt[c] == opt_call_hits(tl.keys, tl.lengths, c)).all()
        assert (ttl[c] == ttl_call_hits(tl.keys, tl.lengths, tl.start_s, 120.0, c)).all()
        assert (shared[c] == ttl[c]).all()
    with pytest.raises(ValueError, match="unknown policy 'lfu'"):
        policy_call_hits(tl, "lfu", caps)
    with pytest.raises(ValueError):
        policy_call_hits(tl, "opt", [-1])
    with pytest.raises(ValueError):  # a profile of another timeline
        policy_call_hits(tl, "ttl", caps, profile=reuse_profile(ds))
    empty = policy_call_hits(tl.subset(np.array([], dtype=np.int64)), "opt", caps)
    assert all(v.size == 0 for v in empty.values())
