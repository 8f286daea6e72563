"""Decode traces into a compact synthetic dataset (decoder.md).

Scope: under the `trace` policy (the contract, the default) every conversation of a trace,
parent and subagents, draws its blocks from one scope, the trace id, so a block shared across
agents decodes to the same tokens. The legacy `session` policy scopes each subagent on its own
agent id, reproducing the historic bug for comparison only.
"""

from collections.abc import Iterable

import numpy as np

from weka_assets.decoding.dataset import CALL_COLUMNS, DecodedDataset
from weka_assets.decoding.filler import Filler
from weka_assets.decoding.prf import block_offsets, tail_offset
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.traces.schema import Call, Trace
from weka_assets.traces.timeline import replay_order


def conversation_scope(trace: Trace, conv: int, policy: str) -> str:
    """The PRF scope of a conversation: the trace id, or (legacy `session`) the agent's own id."""
    if conv == 0 or policy == "trace":
        return trace.id
    return f"{trace.id}#{trace.subagents[conv - 1].agent_id}"


class _Builder:
    def __init__(self, settings: DecodeSettings, filler: Filler):
        self.settings = settings
        self.filler = filler
        self.cols: dict[str, list] = {k: [] for k in CALL_COLUMNS}
        self.rows: list[np.ndarray] = []
        self.n_rows_ids = 0
        self.block_trace: list[np.ndarray] = []
        self.block_id: list[np.ndarray] = []
        self.block_offsets: list[np.ndarray] = []
        self.n_blocks = 0
        self.traces: list[dict] = []

    def add(self, trace: Trace) -> None:
        t_index = len(self.traces)
        order = replay_order(trace)
        policy, seed, n = self.settings.scope_policy, self.settings.seed, self.filler.size
        ordinal: dict[int, int] = {}  # id(call) -> index in its conversation
        for conv in [trace.parent_calls] + [s.calls for s in trace.subagents]:
            for k, c in enumerate(conv):
                ordinal[id(c)] = k
        scopes = sorted({conversation_scope(trace, c.conv, policy) for c in trace.calls})
        call_rows: dict[int, np.ndarray] = {}
        for scope in scopes:
            members = [c for c in order if conversation_scope(trace, c.conv, policy) == scope]
            ids = np.concatenate([c.ids for c in members]) if members else np.empty(0, np.int64)
            uniq, inverse = np.unique(ids, return_inverse=True)
            rows = self.n_blocks + inverse
            bounds = np.cumsum([0] + [c.ids.size for c in members])
            for c, a, b in zip(members, bounds[:-1], bounds[1:], strict=True):
                call_rows[id(c)] = rows[a:b]
            self.block_trace.append(np.full(uniq.size, t_index, dtype=np.int32))
            self.block_id.append(uniq)
            self.block_offsets.append(block_offsets(seed, scope, uniq, self.settings.sub_blocks, n))
            self.n_blocks += int(uniq.size)
        bs = trace.block_size
        for c in order:
            self._add_call(trace, t_index, c, bs, call_rows[id(c)], ordinal[id(c)], n)
        self.traces.append(
            {
                "id": trace.id,
                "file": trace.file,
                "line": trace.line,
                "block_size": bs,
                "scopes": scopes,
                "calls": len(order),
            }
        )

    def _add_call(self, trace: Trace, t_index: int, c: Call, bs: int, rows, k: int, n: int) -> None:
        length = c.ids.size
        full_in = c.tokens_in // bs
        n_full = min(length, full_in)
        partial = c.tokens_in % bs if length > full_in else 0
        tail = c.tokens_in - n_full * bs - partial
        scope = conversation_scope(trace, c.conv, self.settings.scope_policy)
        values = {
            "trace": t_index,
            "conv": c.conv,
            "request": c.request,
            "inner": c.inner,
            "role": 0 if c.conv == 0 else 1,
            "t_abs": c.t_abs,
            "tokens_in": c.tokens_in,
            "tokens_out": c.tokens_out,
            "block_size": bs,
            "rows_start": self.n_rows_ids,
            "n_ids": length,
            "n_full": n_full,
            "partial_len": partial,
            "tail_len": tail,
            "tail_offset": tail_offset(self.settings.seed, scope, c.conv, k, n) if tail else 0,
        }
        for key, v in values.items():
            self.cols[key].append(v)
        self.rows.append(rows)
        self.n_rows_ids += length

    def build(self, manifest: dict) -> DecodedDataset:
        def cat(parts, dtype, shape=(0,)):
            return (
                np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(shape, dtype)
            )

        s = self.settings.sub_blocks
        return DecodedDataset(
            filler=self.filler.tokens,
            block_trace=cat(self.block_trace, np.int32),
            block_id=cat(self.block_id, np.int64),
            block_offsets=cat(self.block_offsets, np.uint32, (0, s)),
            call_rows=cat(self.rows, np.int64),
            calls={k: np.asarray(v, dtype=CALL_COLUMNS[k]) for k, v in self.cols.items()},
            traces=self.traces,
            manifest=manifest,
        )


def decode_traces(
    traces: Iterable[Trace], settings: DecodeSettings, filler: Filler, manifest: dict | None = None
) -> DecodedDataset:
    """Decode every trace into one in-memory dataset (each distinct (scope, id) stored once)."""
    builder = _Builder(settings, filler)
    for trace in traces:
        builder.add(trace)
    return builder.build(manifest or {})
