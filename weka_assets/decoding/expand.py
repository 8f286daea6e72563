"""Expand every call of a dataset once, streamed: what a replay client or an export does.

Each call's exact token ids are produced (`DecodedDataset.expand_all`) and consumed by a
checksum that reads every token (a sum, weighted by the call's index: cheap enough that the
expansion, not the consumer, is what is measured), never held beyond one conversation's
buffer. Trace shards
run across the worker processes; their checksums add up, so the result does not depend on
how the work was split.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weka_assets.decoding.dataset import DecodedDataset, open_dataset
from weka_assets.parallel import SHARD_CALLS, ordered_map, workers

MASK = (1 << 64) - 1


@dataclass
class Expansion:
    calls: int
    tokens: int
    checksum: int  # sum over calls of (call index + 1) * sum(tokens), modulo 2**64

    def __add__(self, other: "Expansion") -> "Expansion":
        return Expansion(
            self.calls + other.calls,
            self.tokens + other.tokens,
            (self.checksum + other.checksum) & MASK,
        )


def call_checksum(i: int, tokens: np.ndarray) -> int:
    """(i + 1) * sum(tokens) modulo 2**64: reads every token of call `i`."""
    return ((i + 1) * int(tokens.sum(dtype=np.int64))) & MASK


def expand_calls(ds: DecodedDataset, start: int = 0, stop: int | None = None) -> Expansion:
    total = Expansion(0, 0, 0)
    checksum = 0
    for i, tokens in ds.expand_all(start, stop):
        total.calls += 1
        total.tokens += tokens.size
        checksum += call_checksum(i, tokens)
    total.checksum = checksum & MASK
    return total


def _expand_shard(shard: DecodedDataset) -> Expansion:
    """Worker task: expand every call of one shard (checksums weighted by global index)."""
    offset = shard.manifest["first_call"]
    total = Expansion(0, 0, 0)
    checksum = 0
    for i, tokens in shard.expand_all():
        total.calls += 1
        total.tokens += tokens.size
        checksum += call_checksum(i + offset, tokens)
    total.checksum = checksum & MASK
    return total


def expand_dataset(path: Path | str, progress=None) -> Expansion:
    """Expand every call of the stored dataset at `path`, in trace shards across workers
    (each worker gets its shard's arrays, not the whole dataset)."""
    ds = open_dataset(path)
    slices = ds.trace_slices()
    bounds, first, calls = [], 0, 0
    for t, sl in enumerate(slices):
        calls += sl.stop - sl.start
        if calls >= SHARD_CALLS:
            bounds.append((first, t + 1))
            first, calls = t + 1, 0
    if first < len(slices):
        bounds.append((first, len(slices)))

    def shards():
        for f, e in bounds:
            shard = ds.shard(f, e)
            shard.manifest = {"first_call": slices[f].start}
            yield shard

    total = Expansion(0, 0, 0)
    if progress is not None:
        progress("expand", 0, len(bounds), "shards")
    for done, part in enumerate(ordered_map(_expand_shard, shards(), workers()), start=1):
        total = total + part
        if progress is not None:
            progress("expand", done, len(bounds), "shards")
    return total
