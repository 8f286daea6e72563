"""Prefix-cache figures with an unbounded cache: theoretical (from ids) and token replay (from
the decoded tokens), compared call by call.

The token replay keys each full block by its decoded tokens (a content hash of the gathered
token ids, chained with the previous block's key), never by ids: if decoding lost or invented a
shared prefix, its hits would differ from the theoretical ones and `fidelity_mismatched_calls`
would say so. Each distinct block row's content hash is computed once (memoised), from its
tokens.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from weka_assets.arrays import distinct, first_appearances
from weka_assets.decoding.dataset import ROLES, DecodedDataset, RowWalker
from weka_assets.decoding.prf import MASK, mix64
from weka_assets.parallel import SHARD_CALLS, ordered_map, workers
from weka_assets.replay.corpus_wide import corpus_wide_hits
from weka_assets.replay.prefix import (
    FillerHasher,
    leading_hits,
    power_tables,
    segment_positions,
    token_block_hash,
)

ROW_CHUNK = 1 << 16


class HitFigures(BaseModel):
    calls: int
    blocks: int  # all hash ids (the theoretical total)
    hits: int
    full_blocks: int
    full_block_hits: int
    token_blocks: int  # full blocks of the expanded prompts
    token_hits: int
    fidelity_mismatched_calls: int
    theoretical_hit_rate: float | None
    theoretical_full_block_hit_rate: float | None
    token_replay_hit_rate: float | None


# the figures a table row shows: counts, the three rates, the fidelity mismatches
HEADLINE = (
    "calls",
    "blocks",
    "theoretical_hit_rate",
    "theoretical_full_block_hit_rate",
    "token_replay_hit_rate",
    "fidelity_mismatched_calls",
)


def headline(f: HitFigures) -> dict:
    return {k: getattr(f, k) for k in HEADLINE}


class ReplayResult(HitFigures):
    per_role: dict[str, HitFigures]
    per_trace: list[dict]
    cross_trace_shared_blocks: int
    dataset: str | None = None  # the decode key
    # one seen-set for the whole corpus, calls on its timeline (replay/corpus_wide.py):
    # block-weighted, and aiperf analyze-trace's mean of per-request rates
    corpus_wide_theoretical_hit_rate: float | None = None
    aiperf_analyze_trace_hit_rate: float | None = None
    # the hash-id namespace the dataset was decoded in: `corpus` when some trace shares one
    # namespace with the whole corpus (Mooncake lines, `global` traces), else `trace` (or
    # `context`); it decides which figure is the headline (`headline_figure`)
    namespace: str = "trace"

    def headline_figure(self) -> tuple[str, float | None, str]:
        """(name, value, definition) of the figure to lead with. In a corpus-wide namespace the
        per-trace figures count each trace against its own earlier calls only (0 for a
        one-call Mooncake trace), so the headline is the corpus-wide one."""
        if self.namespace == "corpus":
            return (
                "corpus-wide theoretical hit rate",
                self.corpus_wide_theoretical_hit_rate,
                "hit blocks / all blocks of every call, one seen-set for the whole corpus, "
                "calls on the corpus timeline (aggregate)",
            )
        return (
            "theoretical hit rate",
            self.theoretical_hit_rate,
            f"hit blocks / all blocks of every call, one seen-set per {self.namespace} (aggregate)",
        )


def dataset_namespace(ds: DecodedDataset) -> str:
    """`corpus` when some trace was decoded in the corpus-wide namespace (the manifest's
    `decode_scopes`), else the one scope its traces were decoded in (`trace`, `context`)."""
    scopes = {k for k, n in (ds.manifest.get("decode_scopes") or {}).items() if n}
    if "corpus" in scopes:
        return "corpus"
    return scopes.pop() if len(scopes) == 1 else "trace"


@dataclass
class CallFigures:
    """Per-call figures, aligned with the dataset's calls table."""

    total: np.ndarray
    hits: np.ndarray
    full_total: np.ndarray
    full_hits: np.ndarray
    token_total: np.ndarray
    token_hits: np.ndarray

    def mismatched(self) -> np.ndarray:
        return self.token_hits != self.full_hits


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def figures(cf: CallFigures, mask: np.ndarray | slice = slice(None)) -> HitFigures:
    s = {
        k: int(getattr(cf, k)[mask].sum())
        for k in ("total", "hits", "full_total", "full_hits", "token_total", "token_hits")
    }
    return HitFigures(
        calls=int(cf.total[mask].size),
        blocks=s["total"],
        hits=s["hits"],
        full_blocks=s["full_total"],
        full_block_hits=s["full_hits"],
        token_blocks=s["token_total"],
        token_hits=s["token_hits"],
        fidelity_mismatched_calls=int(cf.mismatched()[mask].sum()),
        theoretical_hit_rate=_rate(s["hits"], s["total"]),
        theoretical_full_block_hit_rate=_rate(s["full_hits"], s["full_total"]),
        token_replay_hit_rate=_rate(s["token_hits"], s["token_total"]),
    )


def _session_rows(cf: CallFigures, sl: slice, session: np.ndarray, ids: list[str]) -> list[dict]:
    """`figures` of every session of one trace (its calls `sl`, their session indices), as
    per-trace table rows, in session order: summed with `bincount`, not one pass each."""
    first = int(session.min()) if session.size else 0
    local = session - first
    n = int(local.max()) + 1 if local.size else 0

    def total(values) -> list[int]:
        return np.bincount(local, weights=values[sl], minlength=n).astype(np.int64).tolist()

    calls = np.bincount(local, minlength=n).tolist()
    blocks, hits = total(cf.total), total(cf.hits)
    full, full_hits = total(cf.full_total), total(cf.full_hits)
    tok, tok_hits = total(cf.token_total), total(cf.token_hits)
    mismatched = total(cf.mismatched().astype(np.int64))
    return [
        {
            "trace": ids[first + k],
            "calls": calls[k],
            "blocks": blocks[k],
            "theoretical_hit_rate": _rate(hits[k], blocks[k]),
            "theoretical_full_block_hit_rate": _rate(full_hits[k], full[k]),
            "token_replay_hit_rate": _rate(tok_hits[k], tok[k]),
            "fidelity_mismatched_calls": mismatched[k],
        }
        for k in range(n)
    ]


def row_content_hashes(ds: DecodedDataset, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Content hash of the tokens of block rows [start, stop) (each distinct block once):
    `token_block_hash` of each block's tokens, evaluated from its filler offsets."""
    stop = ds.block_id.size if stop is None else stop
    out = np.empty(stop - start, dtype=np.uint64)
    hasher = FillerHasher(ds._filler_ext)
    bs_of_trace = np.array([t["block_size"] for t in ds.traces], dtype=np.int64)
    sizes = bs_of_trace[np.asarray(ds.block_trace[start:stop])]
    for bs in distinct(sizes).tolist():
        rows = np.flatnonzero(sizes == bs)
        starts, lengths = ds.sub_block_spans(bs)
        for a in range(0, rows.size, ROW_CHUNK):
            chunk = rows[a : a + ROW_CHUNK]
            offsets = np.asarray(ds.block_offsets[chunk + start])[:, : starts.size]
            out[chunk] = hasher.hashes(offsets, starts, lengths)
    return out


def _tail_block_hashes(ds: DecodedDataset, i: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Content hashes of full blocks made of unhashed tail filler (truncated id lists)."""
    c = ds.calls
    bs = int(c["block_size"][i])
    extra = int(c["tokens_in"][i]) // bs - int(c["n_full"][i])
    if extra <= 0:
        return np.empty(0, dtype=np.uint64)
    start = int(c["n_full"][i]) * bs
    tokens = ds.expand_call(i, rows)[start : start + extra * bs].reshape(extra, bs)
    return token_block_hash(tokens)


class KeyWalker:
    """The token replay's keys of each call, call after call in dataset order.

    A call's `tokens_in // block_size` full blocks are keyed by the content hash of their
    tokens (hashed blocks from the per-row `content`, unhashed tail blocks from their expanded
    tokens), chained: key_k = mix64(S_k + k) with S_k = S_(k-1) * P + content_k. The first K
    keys of a call equal its conversation predecessor's (same rows, all full in both), so only
    keys K.. are computed. A returned array is valid until the next call of its conversation.

    The definition, call by call: the replay and the capacity sweep compute the same keys
    vectorised per trace (`trace_new_keys`, `token_block_keys`), tested equal to this walk.
    """

    def __init__(self, ds: DecodedDataset, content: np.ndarray, row_offset: int = 0):
        self.ds, self.content, self.row_offset = ds, content, row_offset
        self.rows = RowWalker(ds)
        self._last: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        c = ds.calls
        self._prev, self._shared, self._full = c["prev"], c["shared"], c["n_full"]
        self._total = c["tokens_in"] // c["block_size"]

    def keys(self, i: int) -> tuple[np.ndarray, int]:
        """(all token-block keys of call `i`, K: how many lead keys its predecessor had)."""
        p, nf, n = int(self._prev[i]), int(self._full[i]), int(self._total[i])
        rows = self.rows.rows(i)
        bufs = self._last.pop(p, None) if p >= 0 else None
        if bufs is None:
            k0 = 0
            s_buf, k_buf = np.empty(max(2 * n, 64), np.uint64), np.empty(max(2 * n, 64), np.uint64)
        else:
            s_buf, k_buf = bufs
            k0 = min(int(self._shared[i]), int(self._full[p]), nf)
            if s_buf.size < n:
                s_new, k_new = np.empty(2 * n, np.uint64), np.empty(2 * n, np.uint64)
                s_new[:k0], k_new[:k0] = s_buf[:k0], k_buf[:k0]
                s_buf, k_buf = s_new, k_new
        if n > k0:
            content = self.content[rows[k0:nf] - self.row_offset]
            if n > nf:
                content = np.concatenate([content, _tail_block_hashes(self.ds, i, rows)])
            ppow, qpow = power_tables(n - k0 + 1)
            j = n - k0
            acc = np.cumsum(content * qpow[:j], dtype=np.uint64) * ppow[:j]
            if k0:
                acc += s_buf[k0 - 1] * ppow[1 : j + 1]
            s_buf[k0:n] = acc
            acc += np.arange(k0, n, dtype=np.uint64)
            k_buf[k0:n] = mix64(acc, out=acc)
        self._last[i] = (s_buf, k_buf)
        return k_buf[:n], k0


def trace_new_keys(
    ds: DecodedDataset, calls: np.ndarray, content: np.ndarray, row_offset: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The token keys each call of one trace adds (see `KeyWalker`), vectorised over the trace.

    Call j's first K_j keys equal its predecessor's; keys K_j..T_j are new. With
    W_k = sum_(q<=k) content_q * P**-q, key_k = mix64(P**k * W_k + k): the new keys of every
    call come from one segmented cumulative sum, plus W at K_j - 1, read from the ancestor
    that computed that position. Returns (new keys concatenated, their number per call, K).
    """
    c = ds.calls
    m = calls.size
    a = int(calls[0])
    prev = c["prev"][calls].astype(np.int64)
    local = np.where(prev >= 0, prev - a, -1)
    shared = c["shared"][calls].astype(np.int64)
    nf = c["n_full"][calls].astype(np.int64)
    total = (c["tokens_in"][calls] // c["block_size"][calls]).astype(np.int64)
    has = local >= 0
    k0 = np.zeros(m, np.int64)
    k0[has] = np.minimum(np.minimum(shared[has], nf[local[has]]), nf[has])
    seg = total - k0
    starts = np.cumsum(seg) - seg
    flat = np.empty(int(seg.sum()), dtype=np.uint64)
    # hashed blocks K..nf: from the call's own new rows when K >= shared (the usual case)
    idn = np.maximum(nf - k0, 0)
    fast = k0 >= shared
    pos = segment_positions(idn[fast])[1]
    src = np.repeat(c["rows_start"][calls][fast] + (k0 - shared)[fast], idn[fast]) + pos
    dst = np.repeat(starts[fast], idn[fast]) + pos
    flat[dst] = content[np.asarray(ds.tail_rows)[src] - row_offset]
    for j in np.flatnonzero(~fast & (idn > 0)).tolist():  # a block shared but not full before
        rows = ds.call_rows(int(calls[j]))[k0[j] : nf[j]]
        flat[starts[j] : starts[j] + idn[j]] = content[rows - row_offset]
    for j in np.flatnonzero(total > nf).tolist():  # unhashed tail blocks (truncated lists)
        at = starts[j] + max(nf[j] - k0[j], 0)
        flat[at : starts[j] + seg[j]] = _tail_block_hashes(ds, int(calls[j]))
    # positions and the segmented sum
    position = np.repeat(k0, seg) + segment_positions(seg)[1]
    ppow, qpow = power_tables(int(total.max()) + 1 if m else 1)
    csum = np.cumsum(flat * qpow[position], dtype=np.uint64)
    before = np.concatenate([[np.uint64(0)], csum])[starts]
    within = csum - np.repeat(before, seg)  # sum over the call's new positions up to here
    base = [0] * m  # W at K_j - 1, as Python ints modulo 2**64
    k_l, local_l, starts_l = k0.tolist(), local.tolist(), starts.tolist()
    for j in range(m):
        q = k_l[j] - 1
        if q < 0:
            continue
        anc = local_l[j]
        while k_l[anc] > q:
            anc = local_l[anc]
        base[j] = (base[anc] + int(within[starts_l[anc] + q - k_l[anc]])) & MASK
    w = within + np.repeat(np.array(base, dtype=np.uint64), seg)
    keys = w * ppow[position]
    keys += position.astype(np.uint64)
    return mix64(keys, out=keys), seg, k0


def token_block_keys(
    ds: DecodedDataset, content: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The token replay's keys of every call of `ds` (see `KeyWalker`), concatenated in call
    order, and the number of blocks per call. Per trace, the keys each call adds come from
    `trace_new_keys` (vectorised); the lead keys a call shares with its predecessor are copied
    from the predecessor's, which comes before it (the benchmark's 8 M keys: 0.02-0.13 s,
    against 0.10-0.23 s walking call by call)."""
    if content is None:
        content = row_content_hashes(ds)
    c = ds.calls
    lengths = (c["tokens_in"] // c["block_size"]).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), dtype=np.uint64)
    prev = c["prev"]
    for sl in ds.trace_slices():
        if sl.start == sl.stop:
            continue
        calls = np.arange(sl.start, sl.stop)
        new, added, lead = trace_new_keys(ds, calls, content)
        out[np.repeat(starts[calls] + lead, added) + segment_positions(added)[1]] = new
        for i, k in zip(calls[lead > 0].tolist(), lead[lead > 0].tolist(), strict=True):
            a, p = int(starts[i]), int(starts[int(prev[i])])
            out[a : a + k] = out[p : p + k]
    return out, lengths


@dataclass
class _TraceHits:
    calls: slice
    hits: np.ndarray
    token_hits: np.ndarray
    keys: np.ndarray  # the distinct token keys of each trace, concatenated


def _replay_traces(ds: DecodedDataset, first: int, last: int) -> _TraceHits:
    """Unbounded-cache hits of the calls of traces [first, last), from what each call adds.

    Every id (key) a call shares with its conversation predecessor is a hit: that call came
    earlier. The rest are hits while they lead the call and first occurred in an earlier
    call; first occurrences can only be among the added ids (keys), so only those are looked
    at."""
    slices = ds.trace_slices()
    a, b = slices[first].start, slices[last - 1].stop
    c = ds.calls
    r0, r1 = (int(x) for x in ds.trace_rows()[[first, last]])
    content = row_content_hashes(ds, r0, r1)
    hits = np.zeros(b - a, np.int64)
    token_hits = np.zeros(b - a, np.int64)
    keys = []
    for t in range(first, last):
        sl = slices[t]
        if sl.start == sl.stop:
            continue
        if _request_layout(ds, t, sl):
            replay = _replay_sessions if "session_roots" in ds.traces[t] else _replay_requests
            h, th, k = replay(ds, sl, content, r0)
            hits[sl.start - a : sl.stop - a], token_hits[sl.start - a : sl.stop - a] = h, th
            keys.append(k)
            continue
        calls = np.arange(sl.start, sl.stop)
        shared = c["shared"][calls].astype(np.int64)
        added = (c["n_ids"][calls] - shared).astype(np.int64)
        starts = c["rows_start"][calls].astype(np.int64)
        tail = np.asarray(ds.tail_rows)[np.repeat(starts, added) + segment_positions(added)[1]]
        ids = np.asarray(ds.block_id)[tail]
        if ds.traces[t].get("decode_scope") == "context":
            ids = context_keys(ids, np.repeat(c["conv"][calls], added))
        hits[calls - a] = shared + leading_hits(ids, added)
        new, lengths, lead = trace_new_keys(ds, calls, content, r0)
        token_hits[calls - a] = lead + leading_hits(new, lengths)
        keys.append(distinct(new))
    return _TraceHits(slice(a, b), hits, token_hits, _cat(keys))


REQUEST_CHUNK_IDS = 1 << 21  # ids of the calls one step of `_replay_requests` looks at


def _request_layout(ds: DecodedDataset, t: int, sl: slice) -> bool:
    """Whether trace `t` is a file of requests (`decoding.decoder.decode_requests`): a
    corpus-wide namespace whose calls share nothing stored, so its block rows are its ids."""
    return ds.traces[t].get("decode_scope") == "corpus" and bool(
        (np.asarray(ds.calls["prev"][sl]) < 0).all()
    )


def _replay_requests(
    ds: DecodedDataset, sl: slice, content: np.ndarray, row_offset: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_replay_traces` of one trace of requests, a chunk of calls at a time, so memory is
    one chunk's plus what the cache has seen (a flag per block row, the sorted distinct token
    keys) however many requests the trace holds. Returns (hits, token hits, distinct keys)."""
    c = ds.calls
    n_ids = np.asarray(c["n_ids"][sl], dtype=np.int64)
    rows_start = np.asarray(c["rows_start"][sl], dtype=np.int64)
    hits = np.zeros(n_ids.size, np.int64)
    token_hits = np.zeros(n_ids.size, np.int64)
    seen_rows = np.zeros(content.size, dtype=bool)
    seen_keys = np.empty(0, np.uint64)
    ends = np.cumsum(n_ids)
    i = 0
    while i < n_ids.size:
        j = max(int(np.searchsorted(ends, ends[i] - n_ids[i] + REQUEST_CHUNK_IDS)), i + 1)
        j = min(j, n_ids.size)
        lengths = n_ids[i:j]
        # calls without a predecessor: their rows lie one after another in `tail_rows`
        rows = np.asarray(ds.tail_rows[rows_start[i] : rows_start[i] + int(lengths.sum())])
        rows = rows - row_offset
        _, first, inverse = first_appearances(rows)
        hits[i:j] = leading_hits(rows, lengths, seen_rows[rows], (first, inverse))
        seen_rows[rows] = True
        new, added, _ = trace_new_keys(
            ds, np.arange(sl.start + i, sl.start + j), content, row_offset
        )
        uniq, first, inverse = np.unique(new, return_index=True, return_inverse=True)
        at = np.minimum(np.searchsorted(seen_keys, uniq), max(seen_keys.size - 1, 0))
        before = seen_keys[at] == uniq if seen_keys.size else np.zeros(uniq.size, bool)
        token_hits[i:j] = leading_hits(new, added, before[inverse], (first, inverse))
        seen_keys = np.sort(np.concatenate([seen_keys, uniq[~before]]))
        i = j
    return hits, token_hits, seen_keys


def _replay_sessions(
    ds: DecodedDataset, sl: slice, content: np.ndarray, row_offset: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_replay_requests` of a trace of requests with sessions (Bailian): each call against its
    own session's earlier calls (turn order: `inner`), as a Weka trace's calls are against
    their trace's, a chunk of whole sessions at a time. Returns (hits, token hits, each
    session's distinct keys)."""
    c = ds.calls
    conv = np.asarray(c["conv"][sl], dtype=np.int64)
    walk = np.lexsort((np.asarray(c["inner"][sl], dtype=np.int64), conv))
    conv = conv[walk]
    n_ids = np.asarray(c["n_ids"][sl], dtype=np.int64)[walk]
    rows_start = np.asarray(c["rows_start"][sl], dtype=np.int64)[walk]
    hits = np.zeros(walk.size, np.int64)
    token_hits = np.zeros(walk.size, np.int64)
    keys = []
    ends = np.cumsum(n_ids)
    i = 0
    while i < walk.size:
        j = max(int(np.searchsorted(ends, ends[i] - n_ids[i] + REQUEST_CHUNK_IDS)), i + 1)
        j = int(np.searchsorted(conv, conv[min(j, walk.size) - 1], side="right"))  # whole
        lengths = n_ids[i:j]
        at = np.repeat(rows_start[i:j], lengths) + segment_positions(lengths)[1]
        rows = np.asarray(ds.tail_rows)[at] - row_offset
        session = conv[i:j] - conv[i]
        # (session, row) as one key: the same block in two sessions is two keys
        hits[walk[i:j]] = leading_hits(np.repeat(session, lengths) * content.size + rows, lengths)
        new, added, _ = trace_new_keys(ds, sl.start + walk[i:j], content, row_offset)
        uniq, inverse = np.unique(new, return_inverse=True)
        pairs = np.repeat(session, added) * max(uniq.size, 1) + inverse.reshape(-1)
        _, first, pair_inverse = np.unique(pairs, return_index=True, return_inverse=True)
        token_hits[walk[i:j]] = leading_hits(pairs, added, None, (first, pair_inverse))
        keys.append(new[first])
        i = j
    return hits, token_hits, _cat(keys)


def context_keys(ids: np.ndarray, conv: np.ndarray) -> np.ndarray:
    """Keys of ids in a per-context namespace: the same id in two contexts is two blocks."""
    if ids.size == 0:
        return ids
    pairs = np.stack([conv.astype(np.int64), ids])
    return np.unique(pairs, axis=1, return_inverse=True)[1].reshape(-1)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def _replay_shard(shard: DecodedDataset) -> _TraceHits:
    """Worker task: the figures of one shard (its call indices local to it)."""
    return _replay_traces(shard, 0, len(shard.traces))


def _shifted(r: _TraceHits, first_call: int) -> _TraceHits:
    """A shard's figures with its call indices made global again."""
    r.calls = slice(r.calls.start + first_call, r.calls.stop + first_call)
    return r


def _trace_shards(ds: DecodedDataset, target_calls: int) -> list[tuple[int, int]]:
    """Consecutive trace ranges of about `target_calls` calls each."""
    out, first, calls = [], 0, 0
    for t, sl in enumerate(ds.trace_slices()):
        calls += sl.stop - sl.start
        if calls >= target_calls:
            out.append((first, t + 1))
            first, calls = t + 1, 0
    if first < len(ds.traces):
        out.append((first, len(ds.traces)))
    return out


class _KeyBuckets:
    """Every trace's distinct token keys, spilled to 16 files by their top bits, so counting
    the keys several traces share needs memory for a sixteenth of them, not all."""

    N = 16

    def __enter__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="weka-keys-")
        self._files = [open(Path(self._dir.name) / f"{b}.u64", "wb") for b in range(self.N)]
        return self

    def add(self, keys: np.ndarray) -> None:
        bucket = (keys >> np.uint64(60)).astype(np.int8)
        for b in range(self.N):
            keys[bucket == b].tofile(self._files[b])

    def repeated(self) -> int:
        """How many keys beyond the first of each distinct key (a key in k traces counts k-1)."""
        total = 0
        for f in self._files:
            f.close()
            keys = np.fromfile(f.name, dtype=np.uint64)
            total += int(keys.size - distinct(keys).size)
        return total

    def __exit__(self, *exc):
        for f in self._files:
            f.close()
        self._dir.cleanup()


def replay_unbounded(ds: DecodedDataset, progress=None) -> tuple[ReplayResult, CallFigures]:
    """All unbounded-cache figures of a decoded dataset, per corpus, role and trace.

    A stored dataset is replayed in trace shards across the worker processes."""
    # the coordinator reads only the columns it needs (file reads when stored)
    m = ds.n_calls
    n_ids = ds.column("n_ids").astype(np.int64)
    n_full = ds.column("n_full").astype(np.int64)
    token_total = (ds.column("tokens_in") // ds.column("block_size")).astype(np.int64)
    cf = CallFigures(
        total=n_ids,
        hits=np.zeros(m, np.int64),
        full_total=n_full,
        full_hits=np.zeros(m, np.int64),
        token_total=token_total,
        token_hits=np.zeros(m, np.int64),
    )
    # shards of a fixed size, so memory does not grow with the corpus; a worker gets its
    # shard's arrays, not the whole dataset
    shards = _trace_shards(ds, SHARD_CALLS)
    n_workers = workers() if len(shards) > 1 else 1
    pieces = (ds.shard(f, e) for f, e in shards)
    if n_workers > 1:
        pieces = ordered_map(_replay_shard, pieces, n_workers)
    else:
        pieces = map(_replay_shard, pieces)
    starts = [ds.trace_slices()[f].start for f, _ in shards]
    results = (_shifted(r, a) for r, a in zip(pieces, starts, strict=True))
    done = 0
    if progress is not None:
        progress("replay", 0, len(shards), "shards")
    with _KeyBuckets() as buckets:
        for r in results:
            cf.hits[r.calls] = r.hits
            cf.token_hits[r.calls] = r.token_hits
            buckets.add(r.keys)
            done += 1
            if progress is not None:
                progress("replay", done, len(shards), "shards")
        cross = buckets.repeated()
    cf.full_hits = np.minimum(cf.hits, n_full)
    overall = figures(cf)
    per_role = {role: figures(cf, ds.role_mask(role)) for role in ROLES}
    per_trace = []
    has_sessions = any("session_roots" in t for t in ds.traces)
    session, session_ids = ds.sessions() if has_sessions else (None, [])
    for t, sl in zip(ds.traces, ds.trace_slices(), strict=True):
        if "session_roots" in t:  # a file of sessions: a row per session, as a trace's
            per_trace += _session_rows(cf, sl, session[sl], session_ids)
        else:
            per_trace.append({"trace": t["id"], **headline(figures(cf, sl))})
    result = ReplayResult(
        **overall.model_dump(),
        per_role=per_role,
        per_trace=per_trace,
        cross_trace_shared_blocks=cross,
        dataset=ds.decode_key,  # content-derived, never a local path
    )
    wide = corpus_wide_hits(ds)
    result.corpus_wide_theoretical_hit_rate = wide.corpus_wide_theoretical_hit_rate
    result.namespace = dataset_namespace(ds)
    result.aiperf_analyze_trace_hit_rate = wide.aiperf_analyze_trace_hit_rate
    return result, cf
