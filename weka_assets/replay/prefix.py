"""Vectorised building blocks of an unbounded prefix cache.

Calls are segments of one flat key array, in replay order. A call's hits are the leading run
of its keys that an earlier call already put in the cache; with an unbounded cache that is
"first seen in an earlier call", computed for all calls at once with one sort.
"""

from functools import lru_cache

import numpy as np

from weka_assets.decoding.prf import mix64

# Odd multiplier of the chained key; its inverse modulo 2**64 lets a segmented cumsum chain keys.
CHAIN_P = 0x9E3779B97F4A7C15
CHAIN_Q = pow(CHAIN_P, -1, 1 << 64)


def segment_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(call index of every flat position, position within its call)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    call_of = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    return call_of, np.arange(call_of.size, dtype=np.int64) - starts[call_of]


def leading_hits(
    keys: np.ndarray,
    lengths: np.ndarray,
    earlier: np.ndarray | None = None,
    groups: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Per call, the leading run of keys first seen in an earlier call (unbounded cache).

    `earlier`: per key, whether calls before these (an earlier chunk of the same replay)
    already put it in the cache. `groups`: (first index, inverse) of the keys as
    `np.unique` gives them, when the caller has them (`arrays.first_appearances`)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    hits = np.zeros(lengths.size, dtype=np.int64)
    if keys.size == 0:
        return hits
    call_of, pos = segment_positions(lengths)
    if groups is None:
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    else:
        first, inverse = groups
    seen = call_of[first][inverse] < call_of
    if earlier is not None:
        seen |= earlier
    miss_pos = np.where(seen, lengths[call_of], pos)  # a hit never stops the run
    nonempty = lengths > 0
    starts = (np.cumsum(lengths) - lengths)[nonempty]
    hits[nonempty] = np.minimum.reduceat(miss_pos, starts)
    return hits


_POWERS: list[np.ndarray] = [np.ones(1, np.uint64), np.ones(1, np.uint64)]


def power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(P**k, P**-k) modulo 2**64 for k < n (at least n entries; the table grows by doubling)."""
    p, q = _POWERS
    while p.size < n:
        k = p.size
        p = np.concatenate([p, p * p[k - 1] * np.uint64(CHAIN_P)])
        q = np.concatenate([q, q * q[k - 1] * np.uint64(CHAIN_Q)])
        _POWERS[:] = [p, q]
    return p, q


def chain_keys(content: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Prefix-chained block keys: key_k of a call depends on the contents of its blocks 0..k.

    key_k = mix64(sum_{i<=k} content_i * P**(k-i) + k), modulo 2**64, computed for every call
    at once as P**k * (segmented cumsum of content_i * P**-i).
    """
    content = np.asarray(content, dtype=np.uint64)
    if content.size == 0:
        return content
    _, pos = segment_positions(lengths)
    ppow, qpow = power_tables(int(pos.max()) + 1)
    weighted = content * qpow[pos]
    csum = np.cumsum(weighted, dtype=np.uint64)
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    before = np.concatenate([[np.uint64(0)], csum])[ends - lengths]  # csum just before each call
    call_of = np.repeat(np.arange(lengths.size), lengths)
    return mix64((csum - before[call_of]) * ppow[pos] + pos.astype(np.uint64))


# Odd base of the polynomial content hash of a block's tokens.
TOKEN_R = 0xD1B54A32D192ED03


@lru_cache(maxsize=4)  # a few block sizes: each costs 8 bytes per token of a block
def _token_weights(bs: int) -> np.ndarray:
    return power_series(TOKEN_R, bs)


def power_series(base: int, n: int) -> np.ndarray:
    """base**k modulo 2**64 for k < n (uint64)."""
    out = np.ones(max(n, 1), dtype=np.uint64)
    k = 1
    while k < n:  # doubling: out[k:2k] = out[:k] * base**k
        step = min(k, n - k)
        out[k : k + step] = out[:step] * out[k - 1] * np.uint64(base)
        k += step
    return out[:n]


def token_block_hash(tokens: np.ndarray) -> np.ndarray:
    """64-bit content hash of each row of a [blocks, bs] token array (from the token values):
    mix64(sum_k token_k * R**k), modulo 2**64."""
    tokens = np.asarray(tokens)
    w = _token_weights(tokens.shape[1])
    return mix64((tokens.astype(np.uint64) * w).sum(axis=1, dtype=np.uint64))


class FillerHasher:
    """`token_block_hash` of blocks made of filler sub-blocks, without gathering their tokens.

    With G(x) = sum_{y<x} filler[y] * R**y, a run of filler tokens filler[o:o+m] placed at
    block positions a..a+m-1 contributes R**a * (G(o+m) - G(o)) * R**-o to the block's sum.
    Equal, modulo 2**64, to hashing the gathered tokens; O(sub-blocks) per block, not O(bs).
    """

    def __init__(self, filler_ext: np.ndarray):
        n = filler_ext.size
        powers = power_series(TOKEN_R, n + 1)
        self.prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(filler_ext.astype(np.uint64) * powers[:n], dtype=np.uint64, out=self.prefix[1:])
        self.inverse = power_series(pow(TOKEN_R, -1, 1 << 64), n + 1)

    def hashes(self, offsets: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Hash of each block whose sub-block j (of `lengths[j]` tokens at block position
        `starts[j]`) begins at filler offset `offsets[:, j]`."""
        total = np.zeros(offsets.shape[0], dtype=np.uint64)
        shift = power_series(TOKEN_R, int(starts.max()) + 1 if starts.size else 1)
        for j in range(starts.size):
            o = offsets[:, j].astype(np.int64)
            run = (self.prefix[o + int(lengths[j])] - self.prefix[o]) * self.inverse[o]
            total += run * shift[int(starts[j])]
        return mix64(total, out=total)
