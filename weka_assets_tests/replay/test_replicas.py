"""A fleet of replicas behind a router: the one-pass fleet curve against routing then a direct
LRU per replica, one replica against the single-cache curve, the unbounded orderings, and the
session hash's stability across processes."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from weka_assets.replay.accesses import Timeline, timeline
from weka_assets.replay.capacity import capacity_curve, lru_hits, reuse_profile
from weka_assets.replay.replicas import (
    ROUTINGS,
    FleetCurve,
    fleet_curve,
    route,
    session_replicas,
)
from weka_assets.replay.schedule import Arrival
from weka_assets_tests.corpora import decoded, synthetic

ARRIVALS = [Arrival(), Arrival("poisson", rate_per_s=0.05, seed=3)]


def _dataset(which="kv-cache-tester", traces=6, seed=11):
    return decoded(synthetic(which, traces=traces, seed=seed))


def _ids(ds):
    return [t["id"] for t in ds.traces]


# ---- the routers written out directly ----------------------------------------------------------


def reference_route(tl: Timeline, replicas: int, routing: str, ids) -> list[int]:
    """Each routing as plainly as possible: round robin by timeline position; session by
    blake2b(trace id) mod N; prefix by a linear scan of each replica's set of every key it was
    sent (longest leading run, then fewest blocks sent, then lowest index)."""
    out = []
    seen = [set() for _ in range(replicas)]
    sent = [0] * replicas
    offsets = tl.offsets.tolist()
    keys = tl.keys.tolist()
    for c in range(tl.calls):
        call = keys[offsets[c] : offsets[c + 1]]
        if routing == "round_robin":
            r = c % replicas
        elif routing == "session":
            digest = hashlib.blake2b(ids[tl.session[c]].encode(), digest_size=8).digest()
            r = int.from_bytes(digest, "big") % replicas
        else:
            match = []
            for s in seen:
                m = 0
                while m < len(call) and call[m] in s:
                    m += 1
                match.append(m)
            r = min(range(replicas), key=lambda i: (-match[i], sent[i], i))
        seen[r].update(call)
        sent[r] += len(call)
        out.append(r)
    return out


@pytest.mark.parametrize("arrival", ARRIVALS, ids=lambda a: a.mode)
@pytest.mark.parametrize("routing", ROUTINGS)
def test_fleet_equals_routing_then_a_direct_lru_per_replica(routing, arrival):
    """A decoded synthetic corpus with subagents: every call routed as the plain router does,
    then each replica's calls replayed by `capacity.lru_hits` at each capacity."""
    ds = _dataset()
    tl = timeline(ds, arrival)
    assert (tl.role == 1).any() and np.unique(tl.session).size == 6  # subagents, several traces
    replicas = 3
    assign = route(tl, replicas, routing, _ids(ds))
    assert assign.tolist() == reference_route(tl, replicas, routing, _ids(ds))
    d = reuse_profile(ds, arrival).distinct_blocks
    caps = [0, 1, d // 40, d // 12, d // 4, None]
    curve = fleet_curve(tl, replicas, routing, caps, trace_ids=_ids(ds))
    for i, cap in enumerate(caps):
        point = curve.points[i]
        assert point.capacity_blocks == cap
        for r in range(replicas):
            sub = tl.subset(np.flatnonzero(assign == r))
            ref = lru_hits(sub.keys, sub.lengths, cap if cap is not None else 10**9)
            assert point.replica_hits[r] == int(ref.sum()), (cap, r)
        assert point.hits == sum(point.replica_hits) and point.blocks == tl.keys.size
    for r, load in enumerate(curve.load):
        mine = assign == r
        assert load.calls == int(mine.sum()) and load.blocks == int(tl.lengths[mine].sum())
        assert load.traces == np.unique(tl.session[mine]).size
    assert sum(x.blocks for x in curve.load) == curve.blocks_total
    hits = [p.hits for p in curve.points]
    assert hits == sorted(hits) and hits[0] == 0 and hits[-1] > 0
    json.dumps(curve.model_dump(mode="json"))
    assert FleetCurve.model_json_schema()["properties"]["points"]["description"]


@pytest.mark.parametrize("routing", ROUTINGS)
def test_one_replica_is_the_single_cache_curve(routing):
    ds = _dataset("semianalysis", traces=4, seed=5)
    arrival = Arrival("staggered", interval_s=30.0)
    prof = reuse_profile(ds, arrival)
    caps = sorted({0, 3, prof.distinct_blocks // 10, prof.distinct_blocks // 3})
    single = capacity_curve(ds, caps, arrival, profile=prof)
    fleet = fleet_curve(timeline(ds, arrival), 1, routing, [*caps, None])
    assert [p.hits for p in fleet.points] == [p.hits for p in single.points]
    assert [p.hit_rate for p in fleet.points] == [p.hit_rate for p in single.points]
    assert fleet.load[0].calls == ds.n_calls and fleet.load_imbalance == 1.0


def test_unbounded_orderings_on_a_multi_trace_corpus():
    """At unbounded capacity a replica holds every key it was ever sent, and a call hits the
    leading run of its keys found on its own replica: never more than one shared unbounded
    cache would give. This corpus was decoded with trace scope, so no key is shared across
    traces (checked below): all of a call's reuse is from its own trace. Session routing keeps a
    whole trace on one replica, so it reaches that maximum; prefix routing does too (with chained
    keys the replica holding a call's deepest matched key holds its whole leading run, and the
    router picks it). Round robin spreads a trace's calls over the replicas and loses the reuse
    between calls on different ones: session >= round robin, strictly here."""
    ds = _dataset("kv-cache-tester", traces=8, seed=2)
    tl = timeline(ds)
    prof = reuse_profile(ds)
    best = int(prof.call_hits(None).sum())
    # no key shared across traces
    call_of = np.repeat(np.arange(tl.calls), tl.lengths)
    key_trace = {}
    for k, t in zip(tl.keys.tolist(), tl.session[call_of].tolist(), strict=True):
        assert key_trace.setdefault(k, t) == t
    for replicas in (2, 4, 7):
        unbounded = {
            routing: fleet_curve(tl, replicas, routing, [None], _ids(ds)).points[0].hits
            for routing in ROUTINGS
        }
        assert unbounded["session"] == unbounded["prefix"] == best
        assert unbounded["session"] > unbounded["round_robin"]


def test_prefix_router_ties_and_monotone_match():
    """Hand-made chained keys: new prefixes go to the replica sent the fewest blocks (lowest
    index on ties); a call continuing a prefix follows it."""
    n = np.int64
    calls = [
        [1, 2, 3],  # no match anywhere: all tie at 0 blocks sent -> replica 0
        [10, 11],  # no match: replica 1 has sent 0 blocks -> 1
        [20],  # no match: replica 2 -> 2
        [1, 2, 3, 4],  # matches 3 on replica 0 -> 0
        [30, 31],  # no match: sent 7, 2, 1 -> replica 2
        [10, 11, 12],  # matches 2 on replica 1 -> 1
        [],  # no blocks: all tie; sent 7, 5, 3 -> replica 2
    ]
    lengths = np.array([len(c) for c in calls], dtype=n)
    tl = Timeline(
        order=np.arange(len(calls), dtype=n),
        keys=np.array([k for c in calls for k in c], dtype=np.uint64),
        lengths=lengths,
        start_s=np.arange(len(calls), dtype=np.float64),
        tokens_in=lengths * 16,
        tokens_out=np.zeros(len(calls), dtype=n),
        block_size=np.full(len(calls), 16, dtype=n),
        role=np.zeros(len(calls), dtype=np.int8),
        session=np.zeros(len(calls), dtype=n),
        session_ids=["t"],
    )
    assert route(tl, 3, "prefix").tolist() == [0, 1, 2, 0, 2, 1, 2]
    assert route(tl, 3, "round_robin").tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert len(set(route(tl, 3, "session").tolist())) == 1  # one trace: one replica
    curve = fleet_curve(tl, 3, "prefix", [None, 2])
    assert curve.points[0].replica_hits == [3, 2, 0]
    assert curve.points[1].replica_hits == [0, 2, 0]  # replica 0 kept only [2, 3] of [1 2 3]


def test_errors():
    tl = timeline(_dataset("semianalysis", traces=2, seed=1))
    for replicas, routing in ((2, "random"), (0, "session"), (-1, "prefix"), (1.5, "round_robin")):
        with pytest.raises(ValueError) as err:
            fleet_curve(tl, replicas, routing, [10])
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError):
        fleet_curve(tl, 2, "session", [-1])
    with pytest.raises(ValueError):
        route(tl, 2, "session", trace_ids=["only-one"])


_CHILD = (
    "import json, sys; from weka_assets.replay.replicas import session_replicas; "
    "ids = json.loads(sys.argv[1]); print(json.dumps(session_replicas(ids, 7).tolist()))"
)


def test_session_hash_is_the_same_in_every_process():
    """Python's own str hash changes with PYTHONHASHSEED; the router's must not."""
    ids = [f"kvt-2-{k:05d}" for k in range(40)] + ["", "ü-session", "a/b"]
    here = session_replicas(ids, 7).tolist()
    assert len(set(here)) > 3  # spread over the replicas
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(ids)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=120,
        )
        assert json.loads(out.stdout.strip().splitlines()[-1]) == here
    # a trace's id decides, not its index: the same ids in another order follow their traces
    ds = _dataset("semianalysis", traces=4, seed=3)
    tl = timeline(ds)
    ids = _ids(ds)
    by_trace = session_replicas(ids, 5)
    assert (route(tl, 5, "session", ids) == by_trace[tl.session]).all()
