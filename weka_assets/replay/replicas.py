"""A fleet of replicas behind a router: each replica has its own LRU cache of C blocks, and the
router decides which cache a call can hit.

Routings (`route`):
- `round_robin`: the k-th call on the timeline goes to replica k mod N.
- `session`: every call of a session (a trace: the parent and its subagents; or one request of
  a file of requests: `Timeline.session`) goes to one replica, `blake2b(session id) mod N`
  (`session_replicas`), as a router's consistent hashing on
  kv-cache-tester's X-Session-ID keeps a session on one worker. The hash is blake2b of the id's
  UTF-8 bytes (the trace index's decimal text when no ids are given), never Python's `hash()`,
  so the assignment is the same in every process. With a fixed fleet, consistent hashing is a
  fixed pseudo-random assignment of sessions too; resizing the fleet is not modelled.
- `prefix`: prefix-aware routing (Dynamo's KV router, llm-d): the replica whose index matches
  the longest leading run of the call's keys; ties go to the replica sent the fewest blocks so
  far, then the lowest index. A replica's index is every key it was ever sent: the router does
  not model evictions (it may send a call where its prefix was, but is no more). With chained
  keys a replica holding key j holds keys 0..j-1 too, so the match is monotone and one binary
  search per call finds it (keys not chained like `Timeline.keys` would break that premise).

Each replica then replays its own calls in timeline order (`Timeline.subset`): one LRU depth
pass per replica (`capacity.start_depths`) gives its hits at every capacity. Fleet hit rate:
the sum of all replicas' hits / the sum of their full blocks (aggregate over blocks).
"""

import hashlib
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from weka_assets.replay.accesses import Timeline
from weka_assets.replay.capacity import segmented_cummax, start_depths

ROUTINGS = ("round_robin", "session", "prefix")

DEFINITION = (
    "Aggregate over full blocks: hit rate = sum of every replica's hits / sum of the full blocks "
    "of all calls. Capacity is per replica, in blocks; each replica is an LRU cache of its own "
    "over the calls routed to it, in timeline order; a call's hits are the leading run of its "
    "full blocks present when it starts."
)


def _check(replicas: int, routing: str) -> None:
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing {routing!r}; expected one of {', '.join(ROUTINGS)}")
    if isinstance(replicas, bool) or int(replicas) != replicas or replicas < 1:
        raise ValueError(f"replicas must be a whole number >= 1, got {replicas!r}")


def session_replicas(ids: Sequence[str], replicas: int) -> np.ndarray:
    """int64 [len(ids)]: the replica of each session id, blake2b(id as UTF-8) mod `replicas`
    (the digest's first 8 bytes, big-endian): the same in every process."""
    _check(replicas, "session")
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(str(i).encode("utf-8"), digest_size=8).digest(), "big")
            % int(replicas)
            for i in ids
        ],
        dtype=np.int64,
    )


def _prefix_route(tl: Timeline, replicas: int) -> np.ndarray:
    # one dict for the whole fleet: key -> bit mask of the replicas it was sent to
    index: dict[int, int] = {}
    sent = [0] * replicas
    out = np.empty(tl.calls, dtype=np.int64)
    keys = np.asarray(tl.keys).tolist()
    offsets = tl.offsets.tolist()
    everyone = (1 << replicas) - 1
    for c in range(tl.calls):
        a, b = offsets[c], offsets[c + 1]
        # longest leading run held by some replica: the first position no replica holds
        lo, hi = a, b
        while lo < hi:
            mid = (lo + hi) // 2
            if index.get(keys[mid], 0):
                lo = mid + 1
            else:
                hi = mid
        # the replicas holding the run's last key match it all, and none matches more
        mask = index[keys[lo - 1]] if lo > a else everyone
        best, best_sent = -1, -1
        r = 0
        while mask:
            if mask & 1 and (best < 0 or sent[r] < best_sent):
                best, best_sent = r, sent[r]
            mask >>= 1
            r += 1
        bit = 1 << best
        for k in keys[a:b]:
            index[k] = index.get(k, 0) | bit
        sent[best] += b - a
        out[c] = best
    return out


def route(
    tl: Timeline, replicas: int, routing: str, trace_ids: Sequence[str] | None = None
) -> np.ndarray:
    """int64 [calls]: the replica of every timeline call under `routing` (see the module doc).
    `trace_ids[s]` is the id of session index s (`Timeline.session_ids`); without them the
    session hash runs over the session index's decimal text."""
    _check(replicas, routing)
    replicas = int(replicas)
    if routing == "round_robin":
        return np.arange(tl.calls, dtype=np.int64) % replicas
    if routing == "session":
        traces, inverse = np.unique(np.asarray(tl.session, dtype=np.int64), return_inverse=True)
        if trace_ids is not None:
            if traces.size and traces[-1] >= len(trace_ids):
                raise ValueError(f"trace_ids has {len(trace_ids)} ids, session {traces[-1]} used")
            ids = [str(trace_ids[t]) for t in traces.tolist()]
        else:
            ids = [str(t) for t in traces.tolist()]
        return session_replicas(ids, replicas)[inverse.reshape(-1)]
    return _prefix_route(tl, replicas)


class ReplicaLoad(BaseModel):
    replica: int
    calls: int = Field(description="calls routed to this replica")
    blocks: int = Field(description="full blocks of those calls")
    traces: int = Field(description="distinct traces with at least one call here")


class FleetPoint(BaseModel):
    capacity_blocks: int | None = Field(description="per replica, in blocks; None: unbounded")
    hits: int = Field(description="full-block hits of every replica together")
    blocks: int = Field(description="full blocks of all calls")
    hit_rate: float | None = Field(description="hits / blocks (aggregate over blocks)")
    replica_hits: list[int] = Field(description="hits of each replica")
    replica_hit_rate: list[float | None] = Field(description="each replica's hits / its blocks")


class FleetCurve(BaseModel):
    definition: str = DEFINITION
    routing: str
    replicas: int
    calls: int
    blocks_total: int = Field(description="full blocks of all calls: every point's denominator")
    load: list[ReplicaLoad]
    load_imbalance: float | None = Field(description="most blocks on one replica / the mean")
    points: list[FleetPoint] = Field(description="in the order the capacities were given")


def fleet_curve(
    tl: Timeline,
    replicas: int,
    routing: str,
    capacities: Sequence[int | None],
    trace_ids: Sequence[str] | None = None,
) -> FleetCurve:
    """Fleet hit rate at each per-replica capacity (blocks; None: unbounded), with the calls
    routed by `routing` (`route`); one LRU depth pass per replica."""
    _check(replicas, routing)
    caps = [None if c is None else int(c) for c in capacities]
    if any(c is not None and c < 0 for c in caps):
        raise ValueError(
            f"capacity must be >= 0 blocks, got {min(c for c in caps if c is not None)}"
        )
    replicas = int(replicas)
    assign = route(tl, replicas, routing, trace_ids)
    lengths = np.asarray(tl.lengths, dtype=np.int64)
    hits = np.zeros((len(caps), replicas), dtype=np.int64)
    load = []
    for r in range(replicas):
        positions = np.flatnonzero(assign == r)
        sub = tl.subset(positions)
        depth, _ = start_depths(np.asarray(sub.keys), sub.lengths)
        never = int(depth.size) + 1
        depth[depth < 0] = never
        run_max = segmented_cummax(depth, sub.lengths, never)
        run_max.sort()
        for i, c in enumerate(caps):
            limit = run_max.dtype.type(never if c is None else min(c, never))
            hits[i, r] = int(np.searchsorted(run_max, limit, side="left"))
        load.append(
            ReplicaLoad(
                replica=r,
                calls=int(positions.size),
                blocks=int(sub.lengths.sum()),
                traces=int(np.unique(sub.session).size),
            )
        )
    per_replica = np.array([x.blocks for x in load], dtype=np.int64)
    total = int(lengths.sum())

    def rate(h: int, n: int) -> float | None:
        return h / n if n else None

    return FleetCurve(
        routing=routing,
        replicas=replicas,
        calls=tl.calls,
        blocks_total=total,
        load=load,
        load_imbalance=(float(per_replica.max() / per_replica.mean()) if total else None),
        points=[
            FleetPoint(
                capacity_blocks=c,
                hits=int(hits[i].sum()),
                blocks=total,
                hit_rate=rate(int(hits[i].sum()), total),
                replica_hits=hits[i].tolist(),
                replica_hit_rate=[
                    rate(int(h), int(n)) for h, n in zip(hits[i], per_replica, strict=True)
                ],
            )
            for i, c in enumerate(caps)
        ],
    )
