"""The decoder's pseudo-random function: documented, language-neutral, vectorised.

All arithmetic is on unsigned 64-bit integers modulo 2**64. `mix64` is the SplitMix64
finaliser (Steele, Lea, Flood 2014), a bijection with full avalanche:

    mix64(x): x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB; x ^= x >> 31

Inputs are absorbed one 64-bit word at a time, `h = mix64(h ^ word)`, starting from a domain
constant, so each use below is a chain of `mix64` calls that any language reproduces:

    scope_word(s)         = first 8 bytes (little-endian) of sha256(utf-8 of s)
    block offset j        = mix64(mix64(mix64(mix64(BLOCK ^ seed) ^ scope_word) ^ id) ^ (j + 1)) mod N
    tail offset           = mix64(mix64(mix64(mix64(mix64(TAIL ^ seed) ^ scope_word) ^ conv) ^ call)) mod N

`seed` is the decode seed as an unsigned 64-bit word, `id` the hash id, `j` the sub-block index,
`conv` the conversation (0 parent, k the k-th subagent), `call` the call's index in that
conversation, `N` the filler corpus length. BLOCK and TAIL are distinct domain constants, so a
tail offset never reuses a block's draw.
"""

import hashlib

import numpy as np

MASK = (1 << 64) - 1
BLOCK_DOMAIN = 0x626C6F636B763031  # "blockv01"
TAIL_DOMAIN = 0x7461696C76303031  # "tailv001"
PRF_NAME = "splitmix64-chain/v1"

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


def mix64_int(x: int) -> int:
    """Scalar SplitMix64 finaliser on Python ints (the reference for `mix64`)."""
    x &= MASK
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    x ^= x >> 31
    return x


def mix64(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Vectorised SplitMix64 finaliser on a uint64 array (wrapping multiply); `out` may be
    `x` itself (in place)."""
    if out is None:
        out = x.astype(np.uint64, copy=True)
    elif out is not x:
        out[...] = x
    x = out
    x ^= x >> np.uint64(30)
    x *= _C1
    x ^= x >> np.uint64(27)
    x *= _C2
    x ^= x >> np.uint64(31)
    return x


def scope_word(scope: str) -> int:
    return int.from_bytes(hashlib.sha256(scope.encode("utf-8")).digest()[:8], "little")


def _absorb(h: int, *words: int) -> int:
    for w in words:
        h = mix64_int(h ^ (w & MASK))
    return h


def block_offsets(seed: int, scope: str, ids: np.ndarray, sub_blocks: int, n: int) -> np.ndarray:
    """Offsets into the filler corpus for each id's sub-blocks: uint32 array [len(ids), sub_blocks]."""
    prefix = np.uint64(_absorb(BLOCK_DOMAIN, seed, scope_word(scope)))
    h = mix64(np.asarray(ids, dtype=np.uint64) ^ prefix)
    out = np.empty((h.size, sub_blocks), dtype=np.uint32)
    for j in range(sub_blocks):
        out[:, j] = mix64(h ^ np.uint64(j + 1)) % np.uint64(n)
    return out


def tail_offset(seed: int, scope: str, conv: int, call: int, n: int) -> int:
    return _absorb(TAIL_DOMAIN, seed, scope_word(scope), conv, call) % n
