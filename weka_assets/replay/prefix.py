"""Vectorised building blocks of an unbounded prefix cache.

Calls are segments of one flat key array, in replay order. A call's hits are the leading run
of its keys that an earlier call already put in the cache; with an unbounded cache that is
"first seen in an earlier call", computed for all calls at once with one sort.
"""

from functools import cache

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


def leading_hits(keys: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per call, the leading run of keys first seen in an earlier call (unbounded cache)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    hits = np.zeros(lengths.size, dtype=np.int64)
    if keys.size == 0:
        return hits
    call_of, pos = segment_positions(lengths)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    seen = call_of[first][inverse] < call_of
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


@cache
def _token_weights(bs: int) -> np.ndarray:
    return mix64(np.arange(1, bs + 1, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)) | np.uint64(
        1
    )


def token_block_hash(tokens: np.ndarray) -> np.ndarray:
    """64-bit content hash of each row of a [blocks, bs] token array (from the token values)."""
    tokens = np.asarray(tokens)
    w = _token_weights(tokens.shape[1])
    return mix64((tokens.astype(np.uint64) * w).sum(axis=1, dtype=np.uint64))
