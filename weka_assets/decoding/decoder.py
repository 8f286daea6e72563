"""Decode traces into a compact synthetic dataset (decoder.md), one trace at a time.

Scope: under the `trace` policy (the contract, the default) every conversation of a trace,
parent and subagents, draws its blocks from one scope, the trace id, so a block shared across
agents decodes to the same tokens. The legacy `session` policy scopes each subagent on its own
agent id, reproducing the historic bug for comparison only.

A call is stored as what it adds to its conversation: the number of leading ids it shares
with the conversation's previous call (in replay order) and the block rows of the rest.
Each distinct (scope, id) is stored once. A trace decodes on its own (`decode_trace`), so
traces are independent shards that any number of workers can decode.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from weka_assets.arrays import dense_ranks, distinct
from weka_assets.decoding.dataset import CALL_COLUMNS, REQUESTS, DecodedDataset
from weka_assets.decoding.filler import Filler
from weka_assets.decoding.prf import block_offsets, tail_offset
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.errors import TraceError
from weka_assets.traces.parsed import ParsedRecord
from weka_assets.traces.reader import RawRecord, parse_record
from weka_assets.traces.requests import RequestTable
from weka_assets.traces.schema import Trace, common_prefix
from weka_assets.traces.scope import AnalysedRecord, analyse_parsed, trace_decode_scope
from weka_assets.traces.timeline import replay_order

# The PRF scope of every block of a corpus-wide namespace (hash_id_scope global): one string
# for the whole corpus, so the same id decodes to the same tokens in every trace.
CORPUS_SCOPE = "@corpus"


def conversation_scope(trace: Trace, conv: int, policy: str, decode_scope: str = "trace") -> str:
    """The PRF scope of a conversation's blocks.

    The decode scope (the trace's proven layout) gives the namespace: the trace id (`trace`),
    the corpus (`corpus`), or for a subagent its own agent id (`context`: each context
    numbers its own blocks). The legacy `session` policy scopes a subagent on its own agent id
    whatever the layout, reproducing the historic bug for comparison only."""
    if conv and (policy == "session" or decode_scope == "context"):
        return f"{trace.id}#{trace.subagents[conv - 1].agent_id}"
    return CORPUS_SCOPE if decode_scope == "corpus" else trace.id


def tail_scope(trace: Trace, scope: str) -> str:
    """The scope of a conversation's unhashed tails: always within the trace (a tail is no
    block, so it is never shared across traces, even in a corpus-wide namespace)."""
    return trace.id if scope == CORPUS_SCOPE else scope


@dataclass
class TracePiece:
    """One decoded trace. Block rows and call indices are local to the trace; the dataset
    writer shifts them when it appends the piece."""

    trace: dict
    block_id: np.ndarray  # int64 [r]
    block_offsets: np.ndarray  # uint32 [r, S]
    tail_rows: np.ndarray  # int64: local block rows of every call's new ids
    calls: dict[str, np.ndarray]  # CALL_COLUMNS; `prev` local (-1 none), `rows_start` local
    done: int = 0  # corpus bytes read when this trace was (for progress)
    total: int = 0

    @property
    def n_calls(self) -> int:
        return int(self.calls["tokens_in"].size)

    def head(self, calls: int) -> "TracePiece":
        """The trace's first `calls` calls as a piece of their own, holding only the block
        rows they use (what the drift measurement decodes: never a copy of a whole trace)."""
        if calls >= self.n_calls:
            return self
        end = int(self.calls["rows_start"][calls])
        used = distinct(self.tail_rows[:end])
        cols = {k: np.array(v[:calls]) for k, v in self.calls.items()}
        return TracePiece(
            trace=dict(self.trace, calls=calls),
            block_id=self.block_id[used],
            block_offsets=self.block_offsets[used],
            tail_rows=np.searchsorted(used, self.tail_rows[:end]).astype(np.int64),
            calls=cols,
            done=self.done,
            total=self.total,
        )


def decode_trace(
    trace: "Trace | RequestTable", settings: DecodeSettings, n: int, decode_scope: str = "trace"
) -> TracePiece:
    """Decode one trace against a filler corpus of `n` tokens, in its decode scope."""
    if isinstance(trace, RequestTable):
        return decode_requests(trace, settings, n, decode_scope)
    order = replay_order(trace)
    policy, seed = settings.scope_policy, settings.seed
    ordinal: dict[int, int] = {}  # id(call) -> index in its conversation (document order)
    doc_prev: dict[int, object] = {}  # id(call) -> the call before it in its conversation
    for conv in [trace.parent_calls] + [s.calls for s in trace.subagents]:
        for k, c in enumerate(conv):
            ordinal[id(c)] = k
            if k:
                doc_prev[id(c)] = conv[k - 1]
    # each call against the previous call of its conversation in replay order
    m = len(order)
    prev = np.full(m, -1, dtype=np.int64)
    shared = np.zeros(m, dtype=np.int64)
    last: dict[int, int] = {}
    for k, c in enumerate(order):
        p = last.get(c.conv)
        if p is not None:
            prev[k] = p
            # replay order within a conversation is almost always document order
            same = doc_prev.get(id(c)) is order[p]
            shared[k] = c.shared if same else common_prefix(order[p].ids, c.ids)
        last[c.conv] = k
    scope_of = [conversation_scope(trace, c.conv, policy, decode_scope) for c in order]
    scopes = sorted(set(scope_of))
    tail_rows = [np.empty(0, np.int64)] * m
    ids_parts, offsets_parts = [], []
    n_blocks = 0
    for scope in scopes:
        members = [k for k in range(m) if scope_of[k] == scope]
        tails = [order[k].ids[shared[k] :] for k in members]
        uniq, inverse = np.unique(np.concatenate(tails), return_inverse=True)
        rows = n_blocks + inverse.astype(np.int64, copy=False)
        bounds = np.cumsum([0] + [t.size for t in tails])
        for k, a, b in zip(members, bounds[:-1], bounds[1:], strict=True):
            tail_rows[k] = rows[a:b]
        ids_parts.append(uniq)
        offsets_parts.append(block_offsets(seed, scope, uniq, settings.sub_blocks, n))
        n_blocks += int(uniq.size)
    bs = trace.block_size
    tokens_in = np.fromiter((c.tokens_in for c in order), np.int64, m)
    n_ids = np.fromiter((c.ids.size for c in order), np.int64, m)
    full_in = tokens_in // bs
    n_full = np.minimum(n_ids, full_in)
    partial = np.where(n_ids > full_in, tokens_in % bs, 0)
    tail = tokens_in - n_full * bs - partial
    tail_len = np.fromiter((r.size for r in tail_rows), np.int64, m)
    cols = {
        "trace": np.zeros(m),
        "conv": [c.conv for c in order],
        "request": [c.request for c in order],
        "inner": [c.inner for c in order],
        "role": [0 if c.conv == 0 else 1 for c in order],
        "t_abs": [c.t_abs for c in order],
        "tokens_in": tokens_in,
        "tokens_out": [c.tokens_out for c in order],
        "block_size": np.full(m, bs),
        "rows_start": np.cumsum(tail_len) - tail_len,
        "n_ids": n_ids,
        "n_full": n_full,
        "partial_len": partial,
        "tail_len": tail,
        "tail_offset": [
            tail_offset(seed, tail_scope(trace, scope_of[k]), c.conv, ordinal[id(c)], n)
            if tail[k]
            else 0
            for k, c in enumerate(order)
        ],
        "prev": prev,
        "shared": shared,
    }
    s = settings.sub_blocks
    return TracePiece(
        trace={
            "id": trace.id,
            # the file's name: its path within the corpus (a folder's traces lie directly in
            # it), never where this machine keeps the corpus
            "file": PurePath(trace.file).name,
            "line": trace.line,
            "block_size": bs,
            "scopes": scopes,
            "decode_scope": decode_scope,
            "calls": m,
        },
        block_id=np.concatenate(ids_parts) if ids_parts else np.empty(0, np.int64),
        block_offsets=np.concatenate(offsets_parts)
        if offsets_parts
        else np.empty((0, s), np.uint32),
        tail_rows=np.concatenate(tail_rows) if m else np.empty(0, np.int64),
        calls={k: np.asarray(v, dtype=CALL_COLUMNS[k]) for k, v in cols.items()},
    )


def decode_requests(
    table: RequestTable, settings: DecodeSettings, n: int, decode_scope: str = "corpus"
) -> TracePiece:
    """`decode_trace` of a file of requests read as columns, vectorised: each request is a
    conversation of its own (it shares nothing stored with another; its rows are all its
    ids), and in a corpus-wide namespace each distinct id is one block row. Calls are in
    replay order (time, then file order); `request` is the request's index in the file.

    The tokens are those the one-trace-per-line decode gave: blocks from the corpus scope,
    and a request's unhashed tail from the scope of its old trace id `<file name>:<line>`."""
    if decode_scope != "corpus":  # a file of requests is one namespace
        raise ValueError(f"a file of requests decodes in the corpus scope, not {decode_scope!r}")
    m = table.n_requests
    seed = settings.seed
    # block rows: each distinct id once, in id order (ranks do not depend on the call order)
    ranked = dense_ranks(table.ids)
    if ranked is None:
        uniq, file_rows = np.unique(table.ids, return_inverse=True)
    else:
        uniq, file_rows = ranked
    offsets = block_offsets(seed, CORPUS_SCOPE, uniq, settings.sub_blocks, n)
    scopes = [CORPUS_SCOPE]
    order = np.argsort(table.t, kind="stable")
    n_ids = table.n_ids[order]
    rows_start = np.cumsum(n_ids) - n_ids
    if (order == np.arange(m)).all():  # already in time order (the usual file)
        rows = file_rows
    else:
        rows = _reorder(file_rows, table.offsets[:-1][order], n_ids, rows_start)
    del file_rows
    bs = table.block_size
    tokens_in = table.tokens_in[order]
    full_in = tokens_in // bs
    n_full = np.minimum(n_ids, full_in)
    partial = np.where(n_ids > full_in, tokens_in % bs, 0)
    tail = tokens_in - n_full * bs - partial
    name = PurePath(table.file).name
    lines = table.line[order]
    tail_offsets = np.zeros(m, np.int64)
    sessions = table.session is not None
    if sessions:  # a session's k-th request: tail scope and ordinal as its own trace had
        conv, inner = table.session[order], table.position[order]
        for k in np.flatnonzero(tail).tolist():
            scope = table.session_name(int(conv[k]))
            tail_offsets[k] = tail_offset(seed, scope, 0, int(inner[k]), n)
    else:  # each request was a trace of its own, `<file name>:<line>`
        conv, inner = np.zeros(m), np.full(m, -1)
        for k in np.flatnonzero(tail).tolist():
            tail_offsets[k] = tail_offset(seed, f"{name}:{int(lines[k])}", 0, 0, n)
    cols = {
        "trace": np.zeros(m),
        "conv": conv,
        "request": order,
        "inner": inner,
        "role": np.zeros(m),
        "t_abs": table.t[order],
        "tokens_in": tokens_in,
        "tokens_out": table.tokens_out[order],
        "block_size": np.full(m, bs),
        "rows_start": rows_start,
        "n_ids": n_ids,
        "n_full": n_full,
        "partial_len": partial,
        "tail_len": tail,
        "tail_offset": tail_offsets,
        "prev": np.full(m, -1),
        "shared": np.zeros(m),
    }
    return TracePiece(
        trace={
            "id": table.id,
            "file": name,
            "line": None,
            "block_size": bs,
            "scopes": scopes,
            "decode_scope": decode_scope,
            "calls": m,
            "layout": REQUESTS,
            **({"session_roots": table.session_roots.tolist()} if sessions else {}),
        },
        block_id=uniq,
        block_offsets=offsets,
        tail_rows=rows,
        calls={k: np.asarray(v, dtype=CALL_COLUMNS[k]) for k, v in cols.items()},
    )


def _reorder(values, starts, lengths, new_starts, chunk: int = 1 << 22) -> np.ndarray:
    """Segments of `values` (at `starts`, of `lengths`) laid one after another (at
    `new_starts`), gathered a chunk of segments at a time."""
    out = np.empty(int(lengths.sum()), dtype=values.dtype)
    ends = np.cumsum(lengths)
    i = 0
    while i < lengths.size:
        j = max(int(np.searchsorted(ends, ends[i] - lengths[i] + chunk)), i + 1)
        j = min(j, lengths.size)
        a, b = int(new_starts[i]), int(ends[j - 1])
        idx = np.repeat(starts[i:j] - new_starts[i:j], lengths[i:j]) + np.arange(a, b)
        out[a:b] = values[idx]
        i = j
    return out


def decode_record(
    raw: RawRecord | ParsedRecord,
    targets: tuple[tuple[DecodeSettings, int], ...],
    excluded: frozenset[str] = frozenset(),
) -> tuple[TracePiece, ...] | TraceError | None:
    """Worker task: parse one raw record once (or rebuild it from the scope pass's parse) and
    decode it for each (settings, filler size) of `targets`, in their order (None when the
    trace is excluded)."""
    # a frame of the kept parse, or a record the scope pass held (`pipeline.HeldRecord`)
    rec = raw.record() if hasattr(raw, "record") else parse_record(raw)
    if rec.error is not None:
        return rec.error
    if rec.trace.id in excluded:
        return None
    scope = trace_decode_scope(rec.trace)
    pieces = tuple(decode_trace(rec.trace, settings, n, scope) for settings, n in targets)
    for piece in pieces:
        piece.done, piece.total = raw.done, raw.total
    return pieces


def scope_and_decode_record(
    raw: RawRecord, settings: DecodeSettings, n: int
) -> tuple[AnalysedRecord, TracePiece | None]:
    """Worker task of the one-pass decode: parse once, analyse the trace's scope, and decode
    it when the analysis passed (the corpus report decides later what is published)."""
    rec = parse_record(raw)
    analysed = analyse_parsed(rec, raw)
    piece = None
    if analysed.scope is not None and analysed.scope.decode_scope is not None:
        piece = decode_trace(rec.trace, settings, n, analysed.scope.decode_scope)
        piece.done, piece.total = raw.done, raw.total
    return analysed, piece


def concat_pieces(
    pieces: Iterable[TracePiece], filler: np.ndarray, manifest: dict
) -> DecodedDataset:
    """Join decoded traces into one in-memory dataset (small corpora and tests)."""
    pieces = list(pieces)
    s = pieces[0].block_offsets.shape[1] if pieces else 4
    blocks = calls = rows = 0
    block_trace, tail_rows, cols = [], [], {k: [] for k in CALL_COLUMNS}
    for t, p in enumerate(pieces):
        block_trace.append(np.full(p.block_id.size, t, np.int32))
        tail_rows.append(p.tail_rows + blocks)
        shifted = dict(p.calls)
        shifted["trace"] = np.full(p.n_calls, t, CALL_COLUMNS["trace"])
        shifted["rows_start"] = p.calls["rows_start"] + rows
        shifted["prev"] = np.where(p.calls["prev"] >= 0, p.calls["prev"] + calls, -1)
        for k in CALL_COLUMNS:
            cols[k].append(shifted[k])
        blocks += p.block_id.size
        rows += p.tail_rows.size
        calls += p.n_calls

    def cat(parts, dtype, shape=(0,)):
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(shape, dtype)

    return DecodedDataset(
        filler=filler,
        block_trace=cat(block_trace, np.int32),
        block_id=cat([p.block_id for p in pieces], np.int64),
        block_offsets=cat([p.block_offsets for p in pieces], np.uint32, (0, s)),
        tail_rows=cat(tail_rows, np.int64),
        calls={k: cat(v, CALL_COLUMNS[k]) for k, v in cols.items()},
        traces=[p.trace for p in pieces],
        manifest=manifest,
    )


def decode_traces(
    traces: Iterable[Trace], settings: DecodeSettings, filler: Filler, manifest: dict | None = None
) -> DecodedDataset:
    """Decode every trace into one in-memory dataset (each distinct (scope, id) stored once)."""
    pieces = (decode_trace(t, settings, filler.size, trace_decode_scope(t)) for t in traces)
    return concat_pieces(pieces, filler.tokens, manifest or {})
