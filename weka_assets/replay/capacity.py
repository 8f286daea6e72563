"""Prefix-cache hit rate as a function of KV-cache size, all sessions of a corpus on one server.

The unbounded token replay says what a perfect cache could reuse. Here every call of the
corpus is put on one timeline (`schedule.global_order`) and fed into one cache of full blocks
shared by all sessions, with LRU eviction:

- Keys are exactly the unbounded token replay's: each full block of a call is keyed by the
  content hash of its tokens chained with the previous block's key (`prefix.chain_keys`),
  including the full blocks of unhashed tail filler. With a capacity at least the number of
  distinct keys (or none) the hits are therefore the unbounded replay's, call by call, as long
  as no key is shared across traces (decoding scopes content per trace, so it never is; a
  corpus decoded with the historic `session` scope would show cross-trace hits here).
- A call's hits are the leading run of its full-block keys present in the cache when it starts.
  Then all its full blocks are touched in order (its last block becomes the most recently used),
  inserting the missing ones and evicting least recently used blocks beyond the capacity.
- Calls are instantaneous at their start time: no call durations, no blocks pinned by running
  requests, no queueing. The recorded start times already encode that a parent waits for its
  non-background subagents (see `schedule`). The live replay measures what a real server does.

The whole curve comes from one pass. LRU has the inclusion property: a cache of capacity C
holds exactly the C most recently used keys, so a key is present at a call's start iff its
*depth* then (the number of distinct other keys touched since its last touch) is < C, and a
call's hits at C are the number of its leading positions whose running maximum of depth is
< C (a key never touched before has infinite depth). The depths do not depend on C, so one
pass gives every capacity. (The depth at the call's start gives the same hits as the classic
reuse distance at each access inside the call: the running maxima of the two are < C for the
same leading positions.)

How the depths are computed (`start_depths`): with `prev[t]` the previous touch of the key at
flat position t, the key's depth at the start S of its call is the number of "live" positions
in (prev[t], S), a live position being the latest touch of its key so far. Each call removes
the live marks of the positions it re-touches and marks its own range [S, S + L). Prefix reuse
makes both kinds of update come in runs: a call re-touching k consecutive blocks of an earlier
call has k consecutive `prev` values, their depths are d, d - 1, ..., d - k + 1, and their
unmarking is one range update. So only one query per run and two range updates per run (plus
one per call) are needed; they are answered offline, all at once, by a vectorised
divide-and-conquer over event time (`_earlier_ramp_sums`, O(E log^2 E) numpy work for E events,
E much smaller than the number of blocks on prefix-structured traffic; O(n log^2 n) in the worst
case of no consecutive reuse at all). Everything else is O(n log n) sorting or O(n) numpy.

`simulate_lru` is the direct, obviously correct reference for one capacity (an OrderedDict), used
by the tests.
"""

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from weka_assets.arrays import distinct
from weka_assets.decoding.dataset import ROLES, DecodedDataset
from weka_assets.parallel import on_threads
from weka_assets.replay.plotting import figure_png, new_figure, plain_log_labels
from weka_assets.replay.schedule import Arrival, global_order
from weka_assets.replay.unbounded import token_block_keys

# ---- KV geometry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KVGeometry:
    """KV-cache size of one token for a dense-attention model: keys and values of every layer."""

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2  # bf16 / fp16

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def bytes_per_block(self, block_size: int) -> int:
        return self.bytes_per_token * int(block_size)

    def blocks_for_bytes(self, n_bytes: float, block_size: int) -> int:
        """How many whole blocks of `block_size` tokens fit in `n_bytes`."""
        return int(n_bytes // self.bytes_per_block(block_size))


# Published configs (config.json on the Hugging Face hub: num_hidden_layers,
# num_key_value_heads, head_dim or hidden_size / num_attention_heads), KV in bf16.
# Only dense-attention (MHA/GQA) models whose KV size is 2 * layers * kv_heads * head_dim *
# dtype_bytes per token belong here. MLA models (DeepSeek-V2/V3: a compressed latent per
# layer), sliding-window or hybrid-attention models are not this formula and are left out.
KV_PRESETS: dict[str, KVGeometry] = {
    g.name: g
    for g in (
        KVGeometry("llama-3.1-8b", layers=32, kv_heads=8, head_dim=128),
        KVGeometry("llama-3.1-70b", layers=80, kv_heads=8, head_dim=128),
        KVGeometry("llama-3.1-405b", layers=126, kv_heads=8, head_dim=128),
        KVGeometry("qwen2.5-7b", layers=28, kv_heads=4, head_dim=128),
        KVGeometry("qwen2.5-32b", layers=64, kv_heads=8, head_dim=128),
        KVGeometry("qwen2.5-72b", layers=80, kv_heads=8, head_dim=128),
        KVGeometry("mistral-7b", layers=32, kv_heads=8, head_dim=128),  # v0.3: no sliding window
    )
}

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_CAPACITY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str, what: str) -> tuple[str, float] | None:
    """("blocks", n) from "5000" / "5000blocks", ("bytes", n) from a size ("512MB", "16GiB":
    decimal KB/MB/GB/TB, binary KiB/MiB/GiB/TiB, B; case-insensitive); None when `text` is
    neither. A ValueError names `what` for a fractional block count or an unknown unit."""
    m = _CAPACITY.match(str(text))
    if not m:
        return None
    number, unit = m.group(1), m.group(2).lower()
    if unit in ("", "block", "blocks"):
        if not re.fullmatch(r"\d+", number):
            raise ValueError(f"{what}: a number of blocks must be a whole number")
        return "blocks", int(number)
    if unit not in _UNITS:
        raise ValueError(f"{what}: unknown unit {m.group(2)!r}")
    return "bytes", float(number) * _UNITS[unit]


def parse_capacity(text: str, block_size: int, geometry: KVGeometry | None = None) -> int:
    """A cache capacity in blocks, from a number of blocks or a size in bytes (`parse_size`),
    which needs the model's KV geometry and the block size; a size rounds down to whole blocks."""
    size = parse_size(text, f"capacity {text!r}")
    if size is None:
        raise ValueError(f"capacity {text!r}: expected a number of blocks or a size like 16GiB")
    kind, value = size
    if kind == "blocks":
        return int(value)
    if geometry is None:
        raise ValueError(f"capacity {text!r} is a size in bytes: it needs a KV geometry")
    if block_size <= 0:
        raise ValueError(f"block_size must be > 0, got {block_size}")
    return geometry.blocks_for_bytes(value, block_size)


# ---- keys and the access sequence -------------------------------------------------------------


def call_block_keys(ds: DecodedDataset) -> tuple[np.ndarray, np.ndarray]:
    """(chained full-block keys of every call concatenated in `ds.calls` order, blocks per call).

    The same construction as the unbounded token replay: content hash of each hashed full
    block's tokens, then the content hashes of full blocks of unhashed tail filler, chained per
    call by `chain_keys`. A call has `tokens_in // block_size` full blocks.
    """
    return token_block_keys(ds)


def reorder_segments(values: np.ndarray, lengths: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Concatenate the segments of `values` (segment lengths `lengths`) in `order`.

    Gathered about SPREAD_CHUNK values at a time, so the peak is the input and the result."""
    starts = np.cumsum(lengths) - lengths
    lens = lengths[order]
    new_starts = np.cumsum(lens) - lens
    out = np.empty(int(lens.sum()), dtype=values.dtype)

    def gather(chunk: tuple[int, int, int, int]) -> None:
        i, j, a, b = chunk
        # per value: its old position, as (old start - new start) + new position
        idx = np.repeat(starts[order[i:j]] - new_starts[i:j], lens[i:j])
        idx += np.arange(a, b, dtype=idx.dtype)
        out[a:b] = values[idx]

    on_threads(gather, _segment_chunks(lens))
    return out


def _segment_chunks(lengths: np.ndarray):
    """(first segment, end segment, first value, end value) of runs of whole segments holding
    about SPREAD_CHUNK values each (a longer segment is a run of its own)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    i = 0
    while i < lengths.size:
        a = int(ends[i] - lengths[i])
        j = max(int(np.searchsorted(ends, a + SPREAD_CHUNK, side="right")), i + 1)
        yield i, j, a, int(ends[j - 1])
        i = j


@dataclass
class ReuseProfile:
    """One pass over the shared timeline: every capacity's hits follow from it.

    Flat arrays run over the blocks of all calls in global order; `order[k]` is the `ds.calls`
    index of the k-th call on the timeline.
    """

    order: np.ndarray  # int64 [calls]: ds call index of each call on the timeline
    lengths: np.ndarray  # int64 [calls]: full blocks of each call, in ds order
    depth: np.ndarray  # int32 [n] (int64 past 2**31): depth at the call's start; `never` if unseen
    run_max: np.ndarray  # [n]: running maximum of depth within the call (depth's dtype)
    role: np.ndarray  # int8 [n]: role of the block's call
    distinct_blocks: int
    never: int  # the depth of a key never touched before: larger than any real depth

    @property
    def blocks(self) -> int:
        return int(self.depth.size)

    def _limit(self, capacity: int | None) -> int:
        if capacity is None:
            return self.never
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0 blocks, got {capacity}")
        return min(int(capacity), self.never)

    def call_hits(self, capacity: int | None) -> np.ndarray:
        """Hits of every call (aligned with `ds.calls`) with an LRU cache of `capacity` blocks;
        `None` is unbounded."""
        lens = self.lengths[self.order]
        hit = (self.run_max < self._limit(capacity)).astype(np.int64)
        per_timeline = np.zeros(lens.size, dtype=np.int64)
        nonempty = lens > 0
        if hit.size:
            starts = (np.cumsum(lens) - lens)[nonempty]
            per_timeline[nonempty] = np.add.reduceat(hit, starts)
        out = np.zeros(lens.size, dtype=np.int64)
        out[self.order] = per_timeline
        return out


def reuse_profile(
    ds: DecodedDataset,
    arrival: Arrival = Arrival(),
    time_scale: float = 1.0,
    *,
    timeline=None,
    prev: np.ndarray | None = None,
) -> ReuseProfile:
    """Keys of every call on the shared timeline and their LRU depths at each call's start.

    `timeline`: the dataset's `accesses.Timeline` of the same arrival and time scale, whose keys
    are used instead of computing them again, with `prev` (`previous_touch` of its keys) when
    the caller has it too (the policy sweep shares both)."""
    if timeline is not None:
        order = timeline.order
        lengths = np.empty(order.size, dtype=np.int64)
        lengths[order] = timeline.lengths
        depth, distinct = start_depths(timeline.keys, timeline.lengths, prev=prev)
    else:
        keys, lengths = call_block_keys(ds)
        order = global_order(ds, arrival, time_scale)
        flat = [reorder_segments(keys, lengths, order)]
        del keys
        depth, distinct = start_depths(flat, lengths[order])  # takes the keys (frees them early)
    role = np.repeat(np.asarray(ds.calls["role"], dtype=np.int8)[order], lengths[order])
    never = int(depth.size) + 1
    depth[depth < 0] = never
    return ReuseProfile(
        order=order,
        lengths=lengths,
        depth=depth,
        run_max=segmented_cummax(depth, lengths[order], never),
        role=role,
        distinct_blocks=distinct,
        never=never,
    )


def segmented_cummax(values: np.ndarray, lengths: np.ndarray, bound: int) -> np.ndarray:
    """Running maximum within each segment, for values in [0, bound] (in `values`' dtype)."""
    out = np.empty_like(values)
    lengths = np.asarray(lengths, dtype=np.int64)

    def chunk_max(chunk: tuple[int, int, int, int]) -> None:
        i, j, a, b = chunk
        # each segment lifted above every earlier one, so one running maximum never crosses a
        # segment boundary (64-bit for this chunk only)
        lift = np.repeat(np.arange(j - i, dtype=np.int64) * np.int64(bound + 1), lengths[i:j])
        run = values[a:b] + lift
        np.maximum.accumulate(run, out=run)
        out[a:b] = run - lift

    on_threads(chunk_max, _segment_chunks(lengths))
    return out


# ---- the depth pass ---------------------------------------------------------------------------


# accesses per step of the chunked passes, which run on threads (`on_threads`). Small on purpose:
# a thread's temporaries come from a malloc arena of its own, which keeps what it grew to after
# the thread ends (malloc_trim leaves it): chunks of 1 << 20 kept 60 MB in the process after a
# sweep of the benchmark's 8 M accesses, 1 << 16 keeps 7 MB, at the same speed.
SPREAD_CHUNK = 1 << 16


def start_depths(
    keys: np.ndarray | list[np.ndarray], lengths: np.ndarray, prev: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """(LRU depth of every access's key at the start of its call, number of distinct keys).

    `keys` may come as a one-item list: the caller hands the array over, and it is freed as
    soon as the previous touches are known (the sweep's peak memory).

    `keys` are the accesses in time order, cut into calls by `lengths`. The depth is the number
    of distinct keys touched since the key's last touch before the call; -1 when the key was not
    touched before the call (a key repeated within a call gets the depth of its first occurrence
    in that call). `prev`: `previous_touch(keys)`, when the caller has it already.
    """
    if isinstance(keys, list):  # [keys]: the caller hands them over, freed once used
        keys = np.asarray(keys.pop())
    keys = np.asarray(keys)
    lengths = np.asarray(lengths, dtype=np.int64)
    n = keys.size
    if n == 0:
        return np.full(0, -1, dtype=np.int64), 0
    if prev is None:
        prev = previous_touch(keys)  # first: its sort is the peak, before the arrays below
    del keys
    # positions fit in 32 bits far beyond any sweep's budget: half the memory per access
    pos_type = np.int32 if n < 2**31 - 1 else np.int64
    depth = np.full(n, -1, dtype=pos_type)
    ends = np.cumsum(lengths)
    start_of_call = np.repeat((ends - lengths).astype(pos_type), lengths)  # where its call starts

    touched = prev >= 0
    distinct = int(n - np.count_nonzero(touched))
    query = touched & (prev < start_of_call)  # last touched in an earlier call
    # runs: consecutive positions of one call whose previous touches are consecutive too
    cont = np.zeros(n, dtype=bool)
    for a in range(1, n, SPREAD_CHUNK):  # in chunks: no temporary of the accesses' size
        b = min(a + SPREAD_CHUNK, n)
        cont[a:b] = (
            (start_of_call[a:b] == start_of_call[a - 1 : b - 1])
            & (prev[a:b] == prev[a - 1 : b - 1] + 1)
            & touched[a - 1 : b - 1]
            & (query[a:b] == query[a - 1 : b - 1])
        )
    heads = np.flatnonzero(touched & ~cont)
    # a run ends before the first position after its head that does not continue it
    stops = np.flatnonzero(~cont)
    del cont
    nxt = np.searchsorted(stops, heads, side="right")
    run_len = np.where(nxt < stops.size, stops[np.minimum(nxt, stops.size - 1)], n) - heads
    del stops, nxt
    head_call = np.searchsorted(ends, heads, side="right")  # the call of each run head

    # events on one time axis: per call, its queries (run heads that need one), then its updates
    # (unmark each run of previous touches, mark the call's own range).
    q_heads = heads[query[heads]]
    nonempty = np.flatnonzero(lengths > 0)
    call_start = (ends - lengths)[nonempty]
    # a range update of [l, r] by w is two ramps: +w at a = r and -w at a = l - 1, where a ramp
    # (a, w) adds w * max(0, a - p) to the live count in (p, inf) seen by a later query at p
    ramp_call = np.concatenate([head_call, head_call, nonempty, nonempty])
    ramp_a = np.concatenate(
        [
            prev[heads] + run_len - 1,
            prev[heads] - 1,
            call_start + lengths[nonempty] - 1,
            call_start - 1,
        ]
    )
    ramp_w = np.concatenate(
        [
            np.full(heads.size, -1, np.int64),
            np.full(heads.size, 1, np.int64),
            np.full(nonempty.size, 1, np.int64),
            np.full(nonempty.size, -1, np.int64),
        ]
    )
    ev_call = np.concatenate([head_call[query[heads]], ramp_call])
    ev_kind = np.concatenate([np.ones(q_heads.size, np.int8), np.zeros(ramp_a.size, np.int8)])
    ev_val = np.concatenate([prev[q_heads], ramp_a])
    ev_w = np.concatenate([np.zeros(q_heads.size, np.int64), ramp_w])
    # queries of a call come before its updates: sort by (call, kind descending)
    ev = np.lexsort((1 - ev_kind, ev_call))
    s_w, s_wa = _earlier_ramp_sums(ev_val[ev], ev_w[ev], ev_kind[ev] == 1)
    is_q = ev_kind[ev] == 1
    head_depth = s_wa[is_q] - ev_val[ev][is_q] * s_w[is_q]
    q_head_of = ev[is_q]  # indices into the event arrays: the first q_heads.size are queries
    d_head = np.empty(q_heads.size, dtype=np.int64)
    d_head[q_head_of] = head_depth
    # the events are done with: freed before the spread (the sweep's peak was here)
    del ev_call, ev_kind, ev_val, ev_w, ev, s_w, s_wa, is_q, head_depth, q_head_of
    del ramp_call, ramp_a, ramp_w, q_heads, head_call

    # spread each run head's depth along its run: d, d - 1, ...
    d_run = np.full(heads.size, -1, dtype=np.int64)
    d_run[query[heads]] = d_head

    def spread(a: int) -> None:  # in chunks: its temporaries stay small; each its own slice
        q = np.flatnonzero(query[a : a + SPREAD_CHUNK]) + a
        rid = np.searchsorted(heads, q, side="right") - 1
        depth[q] = d_run[rid] - (q - heads[rid])

    on_threads(spread, range(0, n, SPREAD_CHUNK))

    # a key repeated within its call: the depth of its first occurrence in the call
    # (with the chained keys of prompts only on a 64-bit collision: a key includes its position)
    rep = np.flatnonzero(touched & ~query)
    first = rep.copy()
    while first.size:  # follow prev back to the first occurrence within the call
        back = prev[first]
        inside = back >= start_of_call[first]
        if not inside.any():
            break
        first = np.where(inside, back, first)
    depth[rep] = depth[first]
    return depth, distinct


def previous_touch(keys: np.ndarray) -> np.ndarray:
    """Per position, the previous position holding the same key, or -1.

    One plain sort of 64-bit words (the key's high bits above the position's bits, the position
    below), which numpy does much faster than an argsort. Distinct keys that share those high
    bits are caught by comparing the full keys and resolved exactly by an argsort of just
    their positions.
    """
    keys = np.asarray(keys).astype(np.uint64, copy=False)
    n = keys.size
    if n < 2:
        return np.full(n, -1, dtype=np.int64)
    bits = int(n - 1).bit_length()
    low = np.uint64((1 << bits) - 1)
    # built and sorted in place: the peak is about two arrays of the accesses
    srt = keys & ~low
    for a in range(0, n, SPREAD_CHUNK):  # the positions, without a whole arange beside
        srt[a : a + SPREAD_CHUNK] |= np.arange(a, min(a + SPREAD_CHUNK, n), dtype=np.uint64)
    srt.sort()
    # neighbours in key order with equal high bits, then equal full keys; chunk by chunk, so
    # no temporary of the accesses' size exists beside the sorted words
    same_high = np.empty(n - 1, dtype=bool)
    for a in range(0, n - 1, SPREAD_CHUNK):
        hi = srt[a : a + SPREAD_CHUNK + 1] >> np.uint64(bits)
        same_high[a : a + SPREAD_CHUNK] = hi[1:] == hi[:-1]
    srt &= low
    pos = srt.view(np.int64)  # the positions, in key order
    same = np.empty(n - 1, dtype=bool)
    # positions in 32 bits while they fit: half the memory of the sweep's longest-lived array
    prev = np.full(n, -1, dtype=np.int32 if n < 2**31 - 1 else np.int64)

    def link(a: int) -> None:  # chunks write disjoint slices of `same` and positions of `prev`
        p = pos[a : a + SPREAD_CHUNK + 1]
        k = keys[p]
        same[a : a + SPREAD_CHUNK] = s = same_high[a : a + SPREAD_CHUNK] & (k[1:] == k[:-1])
        prev[p[1:][s]] = p[:-1][s]

    # random reads and writes over the accesses: on every core (the sweep's longest loop)
    on_threads(link, range(0, n - 1, SPREAD_CHUNK))
    if (same_high & ~same).any():  # different keys in one group of equal high bits
        clash = distinct(keys[pos[1:][same_high & ~same]] & ~low)
        where = np.flatnonzero(np.isin(keys & ~low, clash))
        o = np.lexsort((where, keys[where]))
        w, k = where[o], keys[where][o]
        eq = k[1:] == k[:-1]
        prev[w[1:]] = np.where(eq, w[:-1], -1)
        prev[w[0]] = -1
    return prev


def _earlier_ramp_sums(
    val: np.ndarray, w: np.ndarray, is_query: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each query event q (at value p): sums over earlier ramp events u with val_u > p of
    w_u and of w_u * val_u. Events are in time order; offline divide and conquer over time:
    at each level, the queries of every right half against the ramps of its left half, by one
    sort of (block, value, kind) and cumulative sums."""
    e = val.size
    s_w = np.zeros(e, dtype=np.int64)
    s_wa = np.zeros(e, dtype=np.int64)
    if e < 2 or not is_query.any():
        return s_w, s_wa
    idx = np.arange(e, dtype=np.int64)
    vmin = int(val.min())
    span = int(val.max()) - vmin + 1
    wa = w * val
    width = 1
    while width < e:
        right = (idx // width) & 1 == 1
        rel = np.flatnonzero(np.where(right, is_query, ~is_query))
        if rel.size:
            block = rel // (2 * width)
            kind = is_query[rel].astype(np.int64)  # ramps (0) before queries (1) on ties
            if e * span < 1 << 61:
                o = np.argsort((block * span + (val[rel] - vmin)) * 2 + kind)
            else:  # the composite key would overflow int64
                o = np.lexsort((kind, val[rel], block))
            r, b = rel[o], block[o]
            ramp = ~is_query[r]
            cw = np.cumsum(np.where(ramp, w[r], 0))
            cwa = np.cumsum(np.where(ramp, wa[r], 0))
            end = np.searchsorted(b, b, side="right") - 1
            q = ~ramp
            s_w[r[q]] += (cw[end] - cw)[q]
            s_wa[r[q]] += (cwa[end] - cwa)[q]
        width *= 2
    return s_w, s_wa


# ---- the direct reference ---------------------------------------------------------------------


def lru_hits(keys: np.ndarray, lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Per call, hits of a plain LRU cache of `capacity` keys (an OrderedDict, oldest first):
    the leading run of the call's keys present when it starts; then every key is touched in
    order, inserting the missing ones and evicting the least recently used beyond capacity."""
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0 blocks, got {capacity}")
    cache: OrderedDict = OrderedDict()
    hits = np.zeros(len(lengths), dtype=np.int64)
    keys = np.asarray(keys).tolist()
    start = 0
    for c, length in enumerate(np.asarray(lengths).tolist()):
        call = keys[start : start + length]
        start += length
        run = 0
        while run < length and call[run] in cache:
            run += 1
        hits[c] = run
        for k in call:
            if k in cache:
                cache.move_to_end(k)
            else:
                cache[k] = None
                if len(cache) > capacity:
                    cache.popitem(last=False)
    return hits


def simulate_lru(
    ds: DecodedDataset, capacity: int, arrival: Arrival = Arrival(), time_scale: float = 1.0
) -> np.ndarray:
    """Hits of every call (aligned with `ds.calls`) by a direct LRU simulation of one capacity:
    the reference the one-pass curve is tested against."""
    keys, lengths = call_block_keys(ds)
    order = global_order(ds, arrival, time_scale)
    out = np.zeros(ds.n_calls, dtype=np.int64)
    out[order] = lru_hits(reorder_segments(keys, lengths, order), lengths[order], capacity)
    return out


# ---- the curve --------------------------------------------------------------------------------


class RolePoint(BaseModel):
    hits: int
    blocks: int
    hit_rate: float | None


class CapacityPoint(BaseModel):
    capacity_blocks: int | None  # None: unbounded
    capacity_bytes: int | None  # with a KV geometry and a single block size
    hits: int
    blocks: int
    hit_rate: float | None
    per_role: dict[str, RolePoint]


LRU_DEFINITION = (
    "lru: one shared LRU cache of full blocks; calls instantaneous at their start; a call's "
    "hits are the leading run of its full blocks cached when it starts, then its blocks are "
    "touched head to tail; hit rate = hit blocks / full blocks of all calls (aggregate)"
)


class CapacityCurve(BaseModel):
    dataset: str | None = None  # the decode key
    policy: str = "lru"  # the eviction policy (sizing.POLICIES)
    definition: str = LRU_DEFINITION  # what a hit is under this policy, what the rate divides
    arrival: dict
    time_scale: float
    geometry: dict | None = None
    block_size: int | None  # None when the corpus mixes block sizes
    calls: int
    blocks_total: int  # full blocks of all calls: every point's denominator
    distinct_blocks: int  # distinct keys: at this capacity LRU never evicts a reused block
    points: list[CapacityPoint]  # increasing capacity, the unbounded point last


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def capacity_traces(ds: DecodedDataset, max_blocks: int) -> int:
    """How many leading traces fit in `max_blocks` block accesses (at least one; 0: all): the
    budget that bounds a sweep's memory (about 70 bytes per access at its peak)."""
    if max_blocks <= 0:
        return len(ds.traces)
    blocks = ds.column("tokens_in") // ds.column("block_size")
    per_trace = np.array([int(blocks[sl].sum()) for sl in ds.trace_slices()], dtype=np.int64)
    return max(1, int(np.searchsorted(np.cumsum(per_trace), max_blocks, side="right")))


def capacity_part(ds: DecodedDataset, max_blocks: int) -> tuple[DecodedDataset, int]:
    """What a sweep bounded by `max_blocks` block accesses covers (0: all): the leading
    traces (`capacity_traces`), and the number of them. A file of requests is one trace of
    millions of calls, so when its first trace alone is over the budget and it is such a
    file, the sweep covers its leading requests up to the budget (`part.n_calls` of them)."""
    n = capacity_traces(ds, max_blocks)
    part = ds.head(n)
    if max_blocks <= 0 or n != 1 or not part.traces:
        return part, n
    sl = part.trace_slices()[0]
    if part.traces[0].get("decode_scope") != "corpus" or (part.calls["prev"][sl] >= 0).any():
        return part, n
    blocks = part.calls["tokens_in"][sl] // part.calls["block_size"][sl]
    calls = max(1, int(np.searchsorted(np.cumsum(blocks), max_blocks, side="right")))
    return part.head_calls(calls), n


def default_capacities(ds: DecodedDataset, points: int = 12) -> list[int]:
    """A log-spaced sweep of `points` capacities (blocks) up to the number of distinct blocks."""
    keys = np.sort(call_block_keys(ds)[0])
    distinct = int(keys.size > 0) + int(np.count_nonzero(keys[1:] != keys[:-1]))
    return sweep_capacities(distinct, points)


def sweep_capacities(distinct: int, points: int) -> list[int]:
    if distinct <= 0:
        return [0]
    lo = max(1, distinct // 1024)
    return sorted({int(round(x)) for x in np.geomspace(lo, distinct, max(points, 2))})


def capacity_curve(
    ds: DecodedDataset,
    capacities: Sequence[int] | None = None,
    arrival: Arrival = Arrival(),
    time_scale: float = 1.0,
    geometry: KVGeometry | None = None,
    profile: ReuseProfile | None = None,
    points: int = 12,
) -> CapacityCurve:
    """Hit rate of one shared LRU cache at each capacity (blocks), plus the unbounded point.

    `capacities=None` sweeps `points` capacities as `default_capacities` does, from the
    profile's own count of distinct blocks (no second pass over the keys). `profile` reuses an
    earlier `reuse_profile` of the same dataset, arrival and time scale.
    """
    prof = profile if profile is not None else reuse_profile(ds, arrival, time_scale)
    caps = (
        sweep_capacities(prof.distinct_blocks, points)
        if capacities is None
        else sorted({int(c) for c in capacities})
    )
    if caps and caps[0] < 0:
        raise ValueError(f"capacity must be >= 0 blocks, got {caps[0]}")
    sizes = ds.block_sizes
    block_size = sizes[0] if len(sizes) == 1 else None
    sorted_max = {}
    for k, role in enumerate(ROLES):  # one copy per role, sorted in place
        sorted_max[role] = prof.run_max[prof.role == k]
        sorted_max[role].sort()
    points = []
    for cap in [*caps, None]:
        # in the arrays' own dtype: numpy casts a whole array to search for a Python int in it
        # (about 2 ms a search of the benchmark's 8 M accesses, 13 capacities x 2 roles)
        limit = prof.run_max.dtype.type(prof._limit(cap))
        per_role = {}
        for role, rm in sorted_max.items():
            hits = int(np.searchsorted(rm, limit, side="left"))
            per_role[role] = RolePoint(
                hits=hits, blocks=int(rm.size), hit_rate=_rate(hits, rm.size)
            )
        hits = sum(p.hits for p in per_role.values())
        points.append(
            CapacityPoint(
                capacity_blocks=cap,
                capacity_bytes=(
                    cap * geometry.bytes_per_block(block_size)
                    if cap is not None and geometry is not None and block_size is not None
                    else None
                ),
                hits=hits,
                blocks=prof.blocks,
                hit_rate=_rate(hits, prof.blocks),
                per_role=per_role,
            )
        )
    return CapacityCurve(
        dataset=ds.decode_key,  # content-derived, never a local path
        arrival={
            "mode": arrival.mode,
            "interval_s": arrival.interval_s,
            "rate_per_s": arrival.rate_per_s,
            "seed": arrival.seed,
        },
        time_scale=time_scale,
        geometry=(
            {"name": geometry.name, "bytes_per_token": geometry.bytes_per_token}
            if geometry is not None
            else None
        ),
        block_size=block_size,
        calls=ds.n_calls,
        blocks_total=prof.blocks,
        distinct_blocks=prof.distinct_blocks,
        points=points,
    )


# every label has a bounded size (rates 0.0-1.0, capacities in engineering units, fixed texts):
# the margins tight_layout chose for the benchmark's curve, a little wider on the right
PLOT_MARGINS = {"left": 0.11, "right": 0.96, "bottom": 0.155, "top": 0.82}


def plot_png(curve: CapacityCurve) -> bytes:
    """`plot_figure` as a small PNG."""
    return figure_png(plot_figure(curve), PLOT_MARGINS)


def plot_figure(curve: CapacityCurve):
    """Hit rate against capacity (log x), one line per role and one for all calls; the
    unbounded hit rates as dotted lines."""
    bounded = [p for p in curve.points if p.capacity_blocks is not None and p.capacity_blocks > 0]
    unbounded = next((p for p in curve.points if p.capacity_blocks is None), None)
    fig, ax = new_figure(6.4, 4.0)
    x = [p.capacity_blocks for p in bounded]
    series = [("all calls", lambda p: p.hit_rate)] + [
        (role, lambda p, r=role: p.per_role[r].hit_rate) for role in ROLES
    ]
    for k, (label, get) in enumerate(series):
        color = f"C{k}"
        y = [get(p) for p in bounded]
        if all(v is None for v in y):
            continue
        ax.plot(
            x,
            [np.nan if v is None else v for v in y],
            marker="o",
            ms=3,
            label=label,
            color=color,
        )
        if unbounded is not None and get(unbounded) is not None:
            ax.axhline(get(unbounded), color=color, ls=":", lw=1)
    ax.set_xscale("log")
    plain_log_labels(ax.xaxis)
    ax.set_ylim(0, 1.02)
    unit = "blocks"
    if curve.block_size:
        unit = f"blocks of {curve.block_size} tokens"
    ax.set_xlabel(f"KV-cache capacity ({unit})")
    ax.set_ylabel("prefix-cache hit rate")
    geo = ""
    if curve.geometry and curve.block_size:
        geo = f", {curve.geometry['name']}"
        per_block = curve.geometry["bytes_per_token"] * curve.block_size / 2**30
        top = ax.secondary_xaxis(
            "top", functions=(lambda b: b * per_block, lambda g: g / per_block)
        )
        plain_log_labels(top.xaxis, engineering=False)
        top.set_xlabel(f"GiB of KV cache ({curve.geometry['name']})", fontsize=8)
    ax.set_title(
        f"shared LRU cache, {curve.calls} calls, arrival {curve.arrival['mode']}{geo}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig
