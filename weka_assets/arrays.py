"""Array helpers for the hot paths."""

import numpy as np


def distinct(values) -> np.ndarray:
    """Sorted distinct values of an array.

    Sort-based on purpose: numpy 2.4's plain `np.unique` hashes, which measured about 50x
    slower than a sort on 650,000 random 64-bit keys (0.44 s against 0.009 s).
    """
    s = np.sort(np.asarray(values).ravel())
    if s.size < 2:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def first_appearances(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What `np.unique(values, return_index=True, return_inverse=True)` gives (the sorted
    distinct values, the index of each one's first appearance, each value's rank), in time
    linear in the array when the values are dense (block ids minted in sequence are): about
    0.4 s against `np.unique`'s 7.8 s on 29 M ids. Sparse values take `np.unique`."""
    values = np.asarray(values, dtype=np.int64)
    n = values.size
    if n == 0:
        return values[:0], np.empty(0, np.int64), np.empty(0, np.int64)
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo + 1
    if span > 4 * n + 1024:
        return np.unique(values, return_index=True, return_inverse=True)
    first = np.full(span, n, dtype=np.int64)
    np.minimum.at(first, values - lo, np.arange(n, dtype=np.int64))
    present = first < n
    rank = np.cumsum(present, dtype=np.int64) - 1
    return np.flatnonzero(present) + lo, first[present], rank[values - lo]


RANK_CHUNK = 1 << 22  # values ranked at once by `dense_ranks`


def dense_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted distinct values, each value's rank among them) of dense values, a chunk at a
    time, so the extra memory is one flag per value in the range and a chunk of temporaries;
    None when the values are sparse (`first_appearances` then takes `np.unique`)."""
    n = values.size
    if n == 0:
        return values[:0].astype(np.int64), np.empty(0, np.int64)
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo + 1
    if span > 4 * n + 1024:
        return None
    present = np.zeros(span, dtype=bool)
    for a in range(0, n, RANK_CHUNK):
        present[values[a : a + RANK_CHUNK] - lo] = True
    rank = np.cumsum(present, dtype=np.int64) - 1
    out = np.empty(n, dtype=np.int64)
    for a in range(0, n, RANK_CHUNK):
        out[a : a + RANK_CHUNK] = rank[values[a : a + RANK_CHUNK] - lo]
    return np.flatnonzero(present) + lo, out


def dense_first(values: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(lo, the index of each value's first appearance for every value in lo..max, the
    array's size where a value is absent) of dense values, a chunk at a time (no temporary
    the size of `values`); None when they are sparse."""
    n = values.size
    if n == 0:
        return None
    lo, hi = int(values.min()), int(values.max())
    if hi - lo + 1 > 4 * n + 1024:
        return None
    first = np.full(hi - lo + 1, n, dtype=np.int64)
    for a in range(0, n, RANK_CHUNK):
        b = min(a + RANK_CHUNK, n)
        np.minimum.at(first, values[a:b] - lo, np.arange(a, b, dtype=np.int64))
    return lo, first
