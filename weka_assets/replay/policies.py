"""Eviction policies other than LRU on the shared timeline: Belady's clairvoyant OPT and
time-based expiry (TTL), with the hit definition of `capacity`.

Every policy replays an `accesses.Timeline` the way `capacity` replays LRU: calls in timeline
order, each instantaneous at its start; a call's hits are the leading run of its full-block keys
present in the cache when it starts; then all its keys are touched in order, inserting the
missing ones and evicting as the policy says beyond the capacity. Per-call results are in
timeline order (`Timeline.order` maps them to `ds.calls`).

OPT (Belady 1966, "A study of replacement algorithms for a virtual-storage computer"; as a
stack algorithm, Mattson, Gecsei, Slutz & Traiger 1970, "Evaluation techniques for storage
hierarchies"): when the cache is over capacity after an insertion, evict the cached key whose
next use is farthest in the future, a key never used again first. The key just inserted is a
candidate too (it is "in the cache" once inserted, as it is for LRU at capacity 0): a block
whose next use is farther than every cached block's is dropped at once rather than displacing
one needed sooner. The next-use time is the flat position of the key's next access, so no two
live keys tie, and of two blocks of the same next call the deeper one goes first.

With chained keys (a block's key fixes every block before it, so a block's parent is always
used again before the block itself) this never breaks a leading run: a cached block that is used
again always has its parent cached, since the farthest next use goes first and a child's is
always farther than its parent's (a child inserted after its parent was dropped goes at once).
So the cached blocks of a call are a leading run, OPT's leading-run hits are its per-access hits,
which no eviction or admission policy exceeds, and any policy's leading-run hits are at most its
per-access hits: OPT bounds every policy's hits at that capacity. (On arbitrary keys, repeated
or not chained, `opt_call_hits` is still exactly Belady's leading-run hits; the bound need not
hold.)

OPT is a stack algorithm (Mattson et al.): each access has a smallest capacity at which it hits,
and Bilardi, Ekanadham & Pattnaik (CF 2017, "Optimal on-line computation of stack distances for
MIN and OPT") compute it in O(log V) per access with balanced trees. That is a per-access loop of
tree updates as well, with no vectorised numpy form, so it is not attempted here: `opt_call_hits`
simulates one capacity in one pass of a binary heap (see its docstring for its speed), and the
capacities of a curve are separate passes.

TTL: a cached key expires `ttl_s` seconds after its last use (the start time of the last call
that touched it), optionally within an LRU cache of a capacity. An expired key was used less
recently than every unexpired one, so it sits below them in LRU order and expiring it changes no
other key's LRU position: a key is present at a call's start iff it was touched before, its age
then is at most `ttl_s` and its LRU depth (`capacity.start_depths`) is below the capacity. Like
the depths, the ages do not depend on the TTL or the capacity, so one pass gives every (TTL,
capacity) point: the hits are the leading positions whose running maxima of depth and of age
are both in range.

`opt_reference_hits` and `ttl_reference_hits` are the direct, obviously correct simulations the
tests compare against.
"""

import bisect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from weka_assets.replay.accesses import Timeline
from weka_assets.replay.capacity import (
    ReuseProfile,
    previous_touch,
    segmented_cummax,
    start_depths,
)

POLICIES = ("opt", "ttl")


# ---- shared helpers ---------------------------------------------------------------------------


def _check_capacity(capacity: int | None) -> None:
    if capacity is not None and capacity < 0:
        raise ValueError(f"capacity must be >= 0 blocks, got {capacity}")


def _per_call(flags: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per call, how many of its positions are set (int64)."""
    out = np.zeros(lengths.size, dtype=np.int64)
    nonempty = lengths > 0
    if flags.size:
        starts = (np.cumsum(lengths) - lengths)[nonempty]
        out[nonempty] = np.add.reduceat(flags.astype(np.int32), starts)
    return out


def _leading_run(hit: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per call, the number of leading positions whose flags are all set."""
    from weka_assets.replay.kernels import leading_runs

    lengths = np.asarray(lengths, dtype=np.int64)
    if not hit.size:
        return np.zeros(lengths.size, dtype=np.int64)
    return leading_runs(np.ascontiguousarray(hit, dtype=np.bool_), lengths)


def next_touch(keys: np.ndarray, prev: np.ndarray | None = None) -> np.ndarray:
    """Per position, the next position holding the same key, or -1 (from `previous_touch`)."""
    from weka_assets.replay.kernels import next_touches

    if prev is None:
        prev = previous_touch(keys)
    return next_touches(np.ascontiguousarray(prev))


# ---- OPT --------------------------------------------------------------------------------------


def _max_live(nxt: np.ndarray, prev: np.ndarray) -> int:
    """The most keys ever cached at once by a cache that keeps every key until its last use:
    from this capacity on, OPT never evicts a key that is used again. A key is live from an
    access with a next one to that next access (`kernels.max_live`)."""
    from weka_assets.replay.kernels import max_live

    return int(max_live(nxt, prev)) if nxt.size else 0


def _narrow(nxt: np.ndarray) -> np.ndarray:
    """Next positions as int32 where they fit (the OPT pass reads them at every capacity)."""
    return nxt.astype(np.int32) if nxt.size < 2**31 - 1 else nxt


def _opt_hit_flags(
    nxt: np.ndarray, prev: np.ndarray, capacity: int, live: int | None = None
) -> np.ndarray:
    """Per access, whether Belady's OPT of `capacity` keys hits it (bool): the compiled
    `kernels.opt_hit_flags`. `live` (`_max_live`) is the same at every capacity: a curve
    computes it once, and `nxt` narrowed (`_narrow`) once.

    A cached key is stored as the position of its next access: `mark[v]` says "the key next
    accessed at v is cached", so an access at t hits iff `mark[t]`, and at the end `mark` is the
    hit flag of every access (nothing writes `mark[t]` once t is past). A max-heap holds the
    next uses of the cached keys; a hit leaves its old entry behind, stale but harmless: every
    live entry is later than now, so a stale one is never the farthest, and stale entries are
    dropped when the heap fills. A key never used again is never inserted: OPT would evict it
    before any other, so it cannot change what the others do.
    """
    from weka_assets.replay.kernels import opt_hit_flags

    n = nxt.size
    if capacity <= 0 or not n:
        return np.zeros(n, dtype=bool)
    if capacity >= (_max_live(nxt, prev) if live is None else live):
        return prev >= 0  # nothing used again is ever evicted: the unbounded hits
    return opt_hit_flags(nxt, int(capacity))


def opt_call_hits(keys: np.ndarray, lengths: np.ndarray, capacity: int | None) -> np.ndarray:
    """Per call (timeline order), Belady's OPT hits with a cache of `capacity` keys (None:
    unbounded).

    One heap pass over the accesses (`_opt_hit_flags`); a call's hits are the leading run of its
    per-access hits (while they last nothing is inserted or evicted, so that is exactly the
    leading run present at its start).
    """
    _check_capacity(capacity)
    return opt_curve_hits(keys, lengths, [capacity])[capacity]


def opt_curve_hits(
    keys: np.ndarray,
    lengths: np.ndarray,
    capacities: Sequence[int | None],
    prev: np.ndarray | None = None,
) -> dict[int | None, np.ndarray]:
    """`opt_call_hits` at every capacity: the next uses computed once, the capacities on every
    core (the compiled pass lets go of the GIL). Measured on the 7.9 M accesses of the policies
    benchmark (2 cores): 0.04-0.15 s a capacity for the pass, 0.01 s for its leading runs,
    0.03 s once for the next uses and the live count."""
    from weka_assets.parallel import on_threads

    for c in capacities:
        _check_capacity(c)
    lengths = np.asarray(lengths, dtype=np.int64)
    if prev is None:
        prev = previous_touch(np.asarray(keys))
    nxt = next_touch(keys, prev)
    live = _max_live(nxt, prev)
    nxt = _narrow(nxt)
    out: dict[int | None, np.ndarray] = {}

    def one(c: int | None) -> None:
        hit = prev >= 0 if c is None else _opt_hit_flags(nxt, prev, int(c), live)
        out[c] = _leading_run(hit, lengths)

    order = list(dict.fromkeys(capacities))
    on_threads(one, order)
    return {c: out[c] for c in order}


def opt_reference_hits(keys: np.ndarray, lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Per call, Belady's OPT hits by direct simulation: a set of keys; when an insertion puts it
    over capacity, the next use of every cached key (the key just inserted included) is looked
    up in the rest of the sequence and the farthest goes, a key never used again first."""
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0 blocks, got {capacity}")
    keys = np.asarray(keys).tolist()
    where: dict = {}
    for t, k in enumerate(keys):
        where.setdefault(k, []).append(t)

    def next_use(k, t: int) -> float:
        pos = where[k]
        i = bisect.bisect_right(pos, t)
        return pos[i] if i < len(pos) else float("inf")

    cache: set = set()
    hits = np.zeros(len(lengths), dtype=np.int64)
    t = 0
    for c, length in enumerate(np.asarray(lengths).tolist()):
        call = keys[t : t + length]
        run = 0
        while run < length and call[run] in cache:
            run += 1
        hits[c] = run
        for k in call:
            if k not in cache:
                cache.add(k)
                if len(cache) > capacity:
                    cache.remove(max(cache, key=lambda x: next_use(x, t)))
            t += 1
    return hits


# ---- TTL --------------------------------------------------------------------------------------


@dataclass
class TTLProfile:
    """One pass over a timeline: every (TTL, capacity) point's hits follow from it.

    Flat arrays run over the accesses in timeline order, cut into calls by `lengths`.
    """

    lengths: np.ndarray  # int64 [calls]: full blocks of each call, timeline order
    run_max_depth: np.ndarray  # [n]: running maximum of LRU depth at the call's start in the call
    run_max_age: np.ndarray  # float64 [n]: the same of the age (s) since last use; inf if unseen
    never: int  # the depth of a key never touched before: larger than any real depth

    def _ok(self, ttl_s: float, capacity: int | None) -> np.ndarray:
        _check_capacity(capacity)
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0 seconds, got {ttl_s}")
        limit = self.never if capacity is None else min(int(capacity), self.never)
        ok = self.run_max_age <= ttl_s
        ok &= self.run_max_depth < self.run_max_depth.dtype.type(limit)
        return ok

    def call_hits(self, ttl_s: float, capacity: int | None = None) -> np.ndarray:
        """Per call (timeline order), hits with expiry after `ttl_s` seconds and an LRU cache of
        `capacity` blocks (None: no capacity limit)."""
        return _per_call(self._ok(ttl_s, capacity), self.lengths)

    def total_hits(
        self,
        ttl_s: float,
        capacities: Sequence[int | None],
        calls: np.ndarray | None = None,
    ) -> dict[int | None, int]:
        """Total hits at each capacity for one TTL (one sort, then a search per capacity);
        `calls`, a boolean mask over the calls (e.g. `tl.role == k`), counts only those."""
        ok = self._ok(ttl_s, None)
        if calls is not None:
            ok &= np.repeat(np.asarray(calls, dtype=bool), self.lengths)
        depths = np.sort(self.run_max_depth[ok])
        out = {}
        for cap in capacities:
            _check_capacity(cap)
            limit = self.never if cap is None else min(int(cap), self.never)
            out[cap] = int(np.searchsorted(depths, depths.dtype.type(limit), side="left"))
        return out


def ttl_profile(
    keys: np.ndarray,
    lengths: np.ndarray,
    start_s: np.ndarray,
    lru: ReuseProfile | None = None,
    prev: np.ndarray | None = None,
) -> TTLProfile:
    """Ages and LRU depths of every access at its call's start, as running maxima per call.

    `start_s` (per call) must not decrease. `lru`, a `capacity.reuse_profile` of the same
    timeline, supplies the depths instead of a second depth pass. A key repeated within its
    call takes its first occurrence's age, as `start_depths` does for depth.
    """
    keys = np.asarray(keys)
    lengths = np.asarray(lengths, dtype=np.int64)
    start_s = np.asarray(start_s, dtype=np.float64)
    calls = lengths.size
    if start_s.size != calls:
        raise ValueError(f"start_s has {start_s.size} values for {calls} calls")
    if calls and (np.diff(start_s) < 0).any():
        raise ValueError("start_s must not decrease along the timeline")
    n = keys.size
    if lru is not None:
        if lru.run_max.size != n:
            raise ValueError("the LRU profile is not of this timeline")
        run_max_depth, never = lru.run_max, lru.never
    else:
        depth, _ = start_depths(keys, lengths)
        never = n + 1
        depth[depth < 0] = never
        run_max_depth = segmented_cummax(depth, lengths, never)
        del depth

    idx_type = np.int32 if max(n, calls) < 2**31 - 2 else np.int64
    prev = (previous_touch(keys) if prev is None else prev).astype(idx_type, copy=False)
    call_of = np.repeat(np.arange(calls, dtype=idx_type), lengths)
    start_of_call = np.repeat((np.cumsum(lengths) - lengths).astype(idx_type), lengths)
    # a key repeated within its call: the previous touch of its first occurrence in the call
    rep = np.flatnonzero(prev >= start_of_call)
    first = rep.copy()
    while first.size:
        back = prev[first]
        inside = back >= start_of_call[first]
        if not inside.any():
            break
        first = np.where(inside, back, first)
    last = prev.copy()
    last[rep] = prev[first]
    del prev, start_of_call, rep, first
    # the age's running maximum is the start minus the earliest last-use call so far (starts do
    # not decrease): a running maximum of (calls - 1 - that call), `calls` for a key never seen
    seen = last >= 0
    rev = np.full(n, calls, dtype=idx_type)
    rev[seen] = calls - 1 - call_of[last[seen]]
    del last, seen
    run = segmented_cummax(rev, lengths, calls)
    del rev
    earliest = calls - 1 - run.astype(np.int64)  # -1: a key never seen before
    run_max_age = np.full(n, np.inf)
    touched = earliest >= 0
    run_max_age[touched] = start_s[call_of[touched]] - start_s[earliest[touched]]
    return TTLProfile(
        lengths=lengths, run_max_depth=run_max_depth, run_max_age=run_max_age, never=never
    )


def ttl_call_hits(
    keys: np.ndarray,
    lengths: np.ndarray,
    start_s: np.ndarray,
    ttl_s: float,
    capacity: int | None = None,
) -> np.ndarray:
    """Per call (timeline order), hits with expiry after `ttl_s` seconds and an LRU cache of
    `capacity` blocks (None: no limit). For several points, build `ttl_profile` once."""
    return ttl_profile(keys, lengths, start_s).call_hits(ttl_s, capacity)


def ttl_curve(
    profile: TTLProfile,
    ttl_s: float,
    capacities: Sequence[int],
    calls: np.ndarray | None = None,
) -> dict[int | None, int]:
    """Total hits at each capacity (blocks) and unbounded (None) for one TTL."""
    return profile.total_hits(ttl_s, [*capacities, None], calls)


def ttl_reference_hits(
    keys: np.ndarray,
    lengths: np.ndarray,
    start_s: np.ndarray,
    ttl_s: float,
    capacity: int | None = None,
) -> np.ndarray:
    """Per call, TTL hits by direct simulation: an OrderedDict of key -> last use, least
    recently used first; at each call's start every key last used more than `ttl_s` seconds
    before is dropped, then the leading run is counted and the keys touched as `lru_hits` does."""
    cache: OrderedDict = OrderedDict()
    hits = np.zeros(len(lengths), dtype=np.int64)
    keys = np.asarray(keys).tolist()
    t = 0
    starts = np.asarray(start_s, dtype=np.float64).tolist()
    for c, (length, start) in enumerate(zip(np.asarray(lengths).tolist(), starts, strict=True)):
        for k in [k for k, used in cache.items() if start - used > ttl_s]:
            del cache[k]
        call = keys[t : t + length]
        t += length
        run = 0
        while run < length and call[run] in cache:
            run += 1
        hits[c] = run
        for k in call:
            if k in cache:
                cache.move_to_end(k)
            cache[k] = start
            if capacity is not None and len(cache) > capacity:
                cache.popitem(last=False)
    return hits


# ---- for the curve code -----------------------------------------------------------------------


def policy_call_hits(
    tl: Timeline,
    policy: str,
    capacities: Sequence[int],
    *,
    ttl_s: float = 300.0,
    profile: ReuseProfile | None = None,
    prev: np.ndarray | None = None,
) -> dict[int | None, np.ndarray]:
    """Per-call hits (timeline order) of `policy` ("opt" or "ttl") at each capacity (blocks)
    and unbounded (None). `ttl_s` is the TTL's expiry; `profile`, a `capacity.reuse_profile` of
    the same timeline, saves the TTL its depth pass (OPT does not use it); `prev`, the keys'
    `previous_touch`, saves both their sort."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: expected one of {', '.join(POLICIES)}")
    caps = [int(c) for c in capacities]
    for c in caps:
        _check_capacity(c)
    if policy == "ttl":
        if profile is not None and not np.array_equal(profile.order, tl.order):
            raise ValueError("the LRU profile is not of this timeline's order")
        prof = ttl_profile(tl.keys, tl.lengths, tl.start_s, profile, prev)
        return {c: prof.call_hits(ttl_s, c) for c in [*caps, None]}
    return opt_curve_hits(tl.keys, tl.lengths, [*caps, None], prev)
