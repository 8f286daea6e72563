"""Every call of a corpus on the shared timeline with the chained keys of its full blocks: the
input every eviction policy, tier and replica model replays.

The keys are the unbounded token replay's (`unbounded.token_block_keys`): a call of `n` prompt
tokens has `n // B` full blocks, each keyed by its tokens chained with the previous block's key,
so equal keys mean equal prefixes. The calls are in `schedule.global_order` (start time, then
trace and replay order), and every per-call array below is in that order, not `ds.calls` order.
"""

from dataclasses import dataclass

import numpy as np

from weka_assets.decoding.dataset import DecodedDataset
from weka_assets.replay.schedule import Arrival, call_start_times, global_order


@dataclass
class Timeline:
    """The calls of a dataset in timeline order and their full-block keys, concatenated."""

    order: np.ndarray  # int64 [calls]: the `ds.calls` index of each timeline position
    keys: np.ndarray  # uint64 [blocks]: full-block keys of every call, calls in timeline order
    lengths: np.ndarray  # int64 [calls]: full blocks of each call
    start_s: np.ndarray  # float64 [calls]: start on the shared timeline, seconds
    tokens_in: np.ndarray  # int64 [calls]: prompt tokens
    tokens_out: np.ndarray  # int64 [calls]: recorded output tokens
    block_size: np.ndarray  # int64 [calls]: tokens per block
    role: np.ndarray  # int8 [calls]: index into `dataset.ROLES`
    # int64 [calls]: the call's session (`DecodedDataset.sessions`: its trace, or its own
    # request in a file of requests), an index into `session_ids`
    session: np.ndarray
    session_ids: list[str]

    @property
    def calls(self) -> int:
        return int(self.order.size)

    @property
    def offsets(self) -> np.ndarray:
        """int64 [calls + 1]: where each call's keys start in `keys` (and the end)."""
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def subset(self, positions: np.ndarray) -> "Timeline":
        """The calls at these timeline positions (increasing), as a timeline of their own."""
        positions = np.asarray(positions, dtype=np.int64)
        offsets = self.offsets
        lens = self.lengths[positions]
        starts = offsets[positions]
        idx = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(
            int(lens.sum()), dtype=np.int64
        )
        return Timeline(
            order=self.order[positions],
            keys=self.keys[idx],
            lengths=lens,
            start_s=self.start_s[positions],
            tokens_in=self.tokens_in[positions],
            tokens_out=self.tokens_out[positions],
            block_size=self.block_size[positions],
            role=self.role[positions],
            session=self.session[positions],
            session_ids=self.session_ids,
        )


def timeline(ds: DecodedDataset, arrival: Arrival = Arrival(), time_scale: float = 1.0) -> Timeline:
    """The dataset's calls on the shared timeline (`schedule.global_order`) with their keys."""
    from weka_assets.replay.capacity import call_block_keys, reorder_segments

    keys, lengths = call_block_keys(ds)
    order = global_order(ds, arrival, time_scale)
    flat = reorder_segments(keys, lengths, order)
    c = ds.calls
    session, session_ids = ds.sessions()
    return Timeline(
        order=order,
        keys=flat,
        lengths=lengths[order],
        start_s=call_start_times(ds, arrival, time_scale)[order],
        tokens_in=np.asarray(c["tokens_in"], dtype=np.int64)[order],
        tokens_out=np.asarray(c["tokens_out"], dtype=np.int64)[order],
        block_size=np.asarray(c["block_size"], dtype=np.int64)[order],
        role=np.asarray(c["role"], dtype=np.int8)[order],
        session=session[order],
        session_ids=session_ids,
    )
