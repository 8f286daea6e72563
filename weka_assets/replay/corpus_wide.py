"""Corpus-wide figures: one seen-set for the whole corpus, calls on one timeline.

The theoretical hit rate of decoder.md keeps one seen-set per trace. Tools that read a
Mooncake file (aiperf's `analyze-trace`, vLLM's and SGLang's benchmarks) see one namespace for
the whole file instead, so to compare with them this module computes the figures over the
corpus timeline that the exports (weka_assets/exports) write:

- **Timeline order** (`timeline_order`): calls sorted by (t_abs, trace index, index in the
  dataset), stable, t_abs as recorded (each Weka trace on its own clock starting near 0; a
  corpus-wide clock for a dataset read from a Mooncake file). Within a trace that is its
  replay order (calls are stored in it).
- **Block identity** (`block_classes`): two block rows are the same block exactly when their
  `block_offsets` rows (and block sizes) are equal. The offsets are a PRF of (seed, scope, id)
  with collision probability below 1e-12, so equal offsets mean the same (scope, id): this
  keeps the decoded scope (per trace, corpus-wide, per context) without knowing it.
- **aiperf's `cache_hit_rate`** (aiperf 0.13.0 `PrefixAnalyzer._compute_per_request_hit_rates`):
  the mean over requests with a non-empty `hash_ids` (empty ones are skipped, not counted as
  0) of (leading run of ids seen in an earlier request) / len(hash_ids), in file order; the
  seen-set is updated after each request, so an id repeated within one request is not a hit
  there. None when no request has ids (aiperf prints 0.0).
- **Block-weighted corpus-wide theoretical hit rate**: sum of those leading runs / sum of
  len(hash_ids). For a per-trace scope it equals the per-trace `theoretical_hit_rate`: no block
  is shared across traces, and the timeline keeps each trace's own order.

Computed with numpy over what each call adds (its new block rows), never by expanding calls:
the ids a call shares with its conversation's previous call are hits (that call came earlier
on the timeline), and only added rows can be a block's first occurrence.
"""

import statistics
from dataclasses import dataclass

import numpy as np

from weka_assets.decoding.dataset import DecodedDataset, row_chunks
from weka_assets.decoding.prf import mix64
from weka_assets.replay.prefix import segment_positions

ROW_CHUNK = 1 << 20  # added rows per vectorised step (whole calls; bounds the flat arrays)
ORDERING = (
    "calls sorted by (t_abs as recorded, trace index, index in the dataset), stable; t_abs is "
    "on each trace's own clock (every trace starts near 0)"
)


def timeline_order(ds: DecodedDataset) -> np.ndarray:
    """Call indices in corpus timeline order (see ORDERING): the one order the exports write
    and the corpus-wide figures use. Within a trace it is the trace's replay order (its calls
    are stored in (t_abs, document) order)."""
    t_abs = ds.column("t_abs").astype(np.float64)
    trace = ds.column("trace").astype(np.int64)
    return np.lexsort((np.arange(t_abs.size, dtype=np.int64), trace, t_abs))


def block_classes(ds: DecodedDataset) -> tuple[np.ndarray, int]:
    """(class of every block row, number of classes): rows with equal `block_offsets` rows and
    equal block sizes share a class. Classes are numbered in the order of a sort by offsets."""
    rows = int(ds.block_id.size)
    if rows == 0:
        return np.empty(0, np.int64), 0
    offsets = np.concatenate(list(row_chunks(ds.block_offsets))).reshape(rows, -1)
    bs_of_trace = np.array([int(t["block_size"]) for t in ds.traces], dtype=np.int64)
    bs = bs_of_trace[np.concatenate(list(row_chunks(ds.block_trace)))]
    # one sort of a 64-bit hash of the row, then a check that rows with equal hashes are equal
    # in full; only if not (about n^2 / 2^65 odds), the full lexicographic sort
    key = np.zeros(rows, dtype=np.uint64)
    for j in range(offsets.shape[1]):
        key ^= offsets[:, j].astype(np.uint64)
        key = mix64(key, out=key)
    order = np.argsort(key)
    key = key[order]
    new = np.empty(rows, dtype=bool)
    new[0] = True
    np.not_equal(key[1:], key[:-1], out=new[1:])
    del key
    a, b = order[:-1][~new[1:]], order[1:][~new[1:]]
    if (offsets[a] != offsets[b]).any() or (bs[a] != bs[b]).any():
        order = np.lexsort([offsets[:, j] for j in range(offsets.shape[1])] + [bs])
        srt = offsets[order]
        new[1:] = np.any(srt[1:] != srt[:-1], axis=1) | (bs[order][1:] != bs[order][:-1])
    cls = np.empty(rows, dtype=np.int64)
    cls[order] = np.cumsum(new) - 1
    return cls, int(new.sum())


@dataclass
class CorpusWideHits:
    """Per-call figures on the corpus timeline (aligned with the dataset's calls)."""

    order: np.ndarray  # call indices in timeline order
    hits: np.ndarray  # leading run of ids seen in an earlier call of the timeline
    total: np.ndarray  # len(hash_ids)

    @property
    def corpus_wide_theoretical_hit_rate(self) -> float | None:
        total = int(self.total.sum())
        return int(self.hits.sum()) / total if total else None

    @property
    def aiperf_analyze_trace_hit_rate(self) -> float | None:
        """aiperf's mean of per-request rates, in timeline order, over requests with ids
        (statistics.mean, as aiperf computes it: the same float, not only close)."""
        o = self.order[self.total[self.order] > 0]
        if o.size == 0:
            return None
        return statistics.mean((self.hits[o] / self.total[o]).tolist())


def corpus_wide_hits(ds: DecodedDataset, order: np.ndarray | None = None) -> CorpusWideHits:
    """Leading-run hits of every call with one seen-set for the whole corpus (see the module)."""
    order = timeline_order(ds) if order is None else order
    m = ds.n_calls
    n_ids = ds.column("n_ids").astype(np.int64)
    hits = np.zeros(m, np.int64)
    if m == 0:
        return CorpusWideHits(order, hits, n_ids)
    shared = ds.column("shared").astype(np.int64)
    starts = ds.column("rows_start").astype(np.int64)
    added = n_ids - shared
    pos = np.empty(m, np.int64)
    pos[order] = np.arange(m, dtype=np.int64)
    cls, n_cls = block_classes(ds)
    tail_rows = np.asarray(ds.tail_rows)

    def added_classes(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """The classes of calls [a, b)'s added rows (flat) and each one's call (local)."""
        call_of, within = segment_positions(added[a:b])
        rows = tail_rows[starts[a:b][call_of] + within]
        return cls[rows], call_of

    # calls in chunks of about ROW_CHUNK added rows (a call larger than that is one chunk)
    ends = np.cumsum(added)
    cuts = np.unique(np.searchsorted(ends, np.arange(ROW_CHUNK, int(ends[-1]), ROW_CHUNK)) + 1)
    bounds = [0, *cuts[cuts < m].tolist(), m]
    chunks = list(zip(bounds[:-1], bounds[1:], strict=True))
    # where each class first appears on the timeline: only added rows can be first
    first = np.full(n_cls, m, np.int64)
    for a, b in chunks:
        k, call_of = added_classes(a, b)
        np.minimum.at(first, k, pos[a:b][call_of])
    # each call: its shared ids, then the leading run of added ids first seen earlier
    for a, b in chunks:
        k, call_of = added_classes(a, b)
        seg = added[a:b]
        seen = first[k] < pos[a:b][call_of]
        within = np.arange(k.size, dtype=np.int64) - np.repeat(np.cumsum(seg) - seg, seg)
        miss = np.where(seen, seg[call_of], within)  # a hit never stops the run
        lead = np.zeros(b - a, np.int64)
        nonempty = seg > 0
        if k.size:
            lead[nonempty] = np.minimum.reduceat(miss, (np.cumsum(seg) - seg)[nonempty])
        hits[a:b] = shared[a:b] + lead
    return CorpusWideHits(order, hits, n_ids)
