"""Deterministic synthetic Mooncake-format traces, at production scale.

Benchmarks need a one-request-per-line trace of any size with the shape of Mooncake's
published conversation trace: about 12,000 requests an hour, prompts of a few to a hundred
512-token blocks (hash_ids covering the whole prompt), a few shared system prompts, multi-turn
conversations whose prompts grow turn by turn and interleave with each other, ids minted in
first-appearance order over one corpus-wide namespace. `copies` > 1 repeats the base trace
with disjoint ids (copy k adds k times the base's id count) at the same timestamps: k times the
load with the same per-copy sharing, so a figure that is a rate stays the same and anything
that is a count scales by exactly k.

Determinism: only `random.Random.random()` feeds the output (as in `synthetic.generator`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import orjson

from weka_assets.atomic import atomic_write

BLOCK = 512
BAILIAN_BLOCK = 16  # tokens per id in the Bailian variant
_SYSTEM_PROMPTS = 24  # distinct shared system prompts
_SYSTEM_BLOCKS = (2, 14)  # blocks of one system prompt
_P_NEW = 0.3  # a request opens a new conversation
_ACTIVE = 160  # conversations open at once, at most
_TURN_BLOCKS = (1, 4)  # full blocks a turn adds
_MAX_BLOCKS = 48  # a conversation ends once its prompt would pass this
_MEAN_GAP_MS = 300.0  # mean time between requests


def _base(n: int, seed: int) -> tuple[list[tuple[int, int, int, list[int], int]], int]:
    """The base trace's requests (timestamp ms, input_length, output_length, ids, the index of
    the conversation's previous request or -1) and how many distinct ids it mints."""
    rnd = random.Random(seed)
    next_id = 0

    def mint(k: int) -> list[int]:
        nonlocal next_id
        out = list(range(next_id, next_id + k))
        next_id += k
        return out

    systems: list[list[int] | None] = [None] * _SYSTEM_PROMPTS
    system_len = [
        _SYSTEM_BLOCKS[0] + int(rnd.random() * (_SYSTEM_BLOCKS[1] - _SYSTEM_BLOCKS[0] + 1))
        for _ in range(_SYSTEM_PROMPTS)
    ]
    active: list[list[int]] = []  # each conversation's full blocks so far
    last: list[int] = []  # each open conversation's latest request (-1: none yet)
    out = []
    t = 0.0
    for _ in range(n):
        if not active or (len(active) < _ACTIVE and rnd.random() < _P_NEW):
            s = int(rnd.random() ** 2 * _SYSTEM_PROMPTS)  # a few prompts are most used
            if systems[s] is None:
                systems[s] = mint(system_len[s])
            active.append(list(systems[s]))
            last.append(-1)
            i = len(active) - 1
        else:
            i = int(rnd.random() * len(active))
        conv = active[i]
        lo, hi = _TURN_BLOCKS
        conv.extend(mint(lo + int(rnd.random() * (hi - lo + 1))))
        partial = 1 + int(rnd.random() * (BLOCK - 1))
        ids = conv + mint(1)  # the partial last block: its own id, never reused
        t -= _MEAN_GAP_MS * math.log(1.0 - rnd.random())
        out.append(
            (int(t), len(conv) * BLOCK + partial, 20 + int(rnd.random() * 700), ids, last[i])
        )
        last[i] = len(out) - 1
        if len(conv) + _TURN_BLOCKS[1] > _MAX_BLOCKS:
            active.pop(i)
            last.pop(i)
    return out, next_id


def iter_mooncake_lines(n: int = 12_000, copies: int = 1, seed: int = 0) -> Iterator[bytes]:
    """The trace's lines (JSON, newline-terminated): the base of `n` requests, `copies` times
    with disjoint ids."""
    base, distinct = _base(n, seed)
    for k in range(copies):
        off = k * distinct
        for ts, n_in, n_out, ids, _ in base:
            row = {
                "timestamp": ts,
                "input_length": n_in,
                "output_length": n_out,
                "hash_ids": [i + off for i in ids] if off else ids,
            }
            yield orjson.dumps(row) + b"\n"


def write_mooncake_trace(path: Path | str, n: int = 12_000, copies: int = 1, seed: int = 0) -> Path:
    """Write the trace to `path` (atomically); returns the path."""
    return write_trace(path, iter_mooncake_lines(n, copies, seed))


def iter_bailian_lines(n: int = 12_000, copies: int = 1, seed: int = 0) -> Iterator[bytes]:
    """The same requests as Bailian lines (../shared/docs/formats.md): each conversation a
    session linked by `parent_chat_id` with its `turn`, `timestamp` in seconds, 16-token blocks
    (`input_length` counts 16 tokens an id). Chat ids are the requests' indices over all
    copies, so copy k's sessions are the base's with disjoint chat ids and hash ids."""
    base, distinct = _base(n, seed)
    turns = []
    for *_, prev in base:
        turns.append(turns[prev] + 1 if prev >= 0 else 1)
    for k in range(copies):
        off, chat0 = k * distinct, k * len(base)
        for j, (ts, n_in, n_out, ids, prev) in enumerate(base):
            row = {
                "chat_id": chat0 + j,
                "parent_chat_id": chat0 + prev if prev >= 0 else -1,
                "timestamp": ts / 1000.0,
                "input_length": (len(ids) - 1) * BAILIAN_BLOCK + 1 + (n_in % (BAILIAN_BLOCK - 1)),
                "output_length": n_out,
                "type": "text",
                "turn": turns[j],
                "hash_ids": [i + off for i in ids] if off else ids,
            }
            yield orjson.dumps(row) + b"\n"


def write_trace(path: Path | str, lines: Iterator[bytes]) -> Path:
    """Write `lines` to `path` (atomically); returns the path."""
    path = Path(path)
    with atomic_write(path) as fh:
        buf = []
        for line in lines:
            buf.append(line)
            if len(buf) >= 4096:
                fh.write(b"".join(buf))
                buf.clear()
        fh.write(b"".join(buf))
    return path


def write_bailian_trace(path: Path | str, n: int = 12_000, copies: int = 1, seed: int = 0) -> Path:
    """A Bailian-format trace of the same conversations (`iter_bailian_lines`)."""
    return write_trace(path, iter_bailian_lines(n, copies, seed))
