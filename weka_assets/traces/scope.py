"""Proof of the hash-id namespace layout, per trace and per corpus (scope-contract.md).

`analyse_trace` computes every per-trace definition with numpy (no per-id Python); the
corpus report aggregates them into the figures a reviewer of a scope change asks for, and
decides whether anything may be decoded. docs/definitions.md pins every interpretation.
"""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel

from weka_assets.arrays import RANK_CHUNK, dense_first, distinct
from weka_assets.errors import Location, TraceError
from weka_assets.traces import formats
from weka_assets.traces.reader import RawRecord, Record, parse_record
from weka_assets.traces.requests import RequestTable
from weka_assets.traces.schema import DECLARED_SCOPES, Call, Trace
from weka_assets.traces.timeline import inner_time_convention

Policy = Literal["fail", "exclude"]
WALKS = ("document", "parent_first")
# Decode scopes (formats.md): one namespace per trace, across the corpus, or per context
DECODE_SCOPES = ("trace", "corpus", "context")
HASHING = ("floor", "ceil", "truncated", "over")
# The figures of scope-contract.md's corpus report, in the order a reviewer reads them.
CONTRACT_FIGURES = (
    "traces", "traces_with_subagents", "subagents", "declared_scope", "minting_order",
    "perfect_traces", "base", "fresh_below_events", "gap_events", "holes_traces",
    "subagent_first_block", "reset_signature_subagents", "parent_share", "sibling_share",
    "prefix_declared_traces", "verdict", "position_violations", "hashing", "inner_time",
)  # fmt: skip


@dataclass(slots=True)
class SubagentScope:
    agent_id: str
    request: int
    first_block: int | None
    reset_signature: bool
    parent_share: float | None
    sibling_share: float | None
    inner_time: str | None


@dataclass(slots=True)
class TraceScope:
    trace: str
    file: str
    line: int | None
    block_size: int
    calls: int
    ids: int
    base: int | None
    max_id: int | None
    distinct_ids: int
    fresh_below: dict[str, int]
    gaps: dict[str, int]
    minting_order: str
    perfect: bool
    holes: int
    position_violations: int
    hashing: dict[str, int]
    subagents: list[SubagentScope]
    prefix_declared: bool
    subagents_before_parent: int
    partial_prefix_events: int
    convention: str
    verdict: str = field(default="shared")
    declared: str | None = "local"  # hash_id_scope as written (None: absent)
    layouts: tuple[str, ...] = ()  # the layouts the data allows: trace, context (corpus: global)
    decode_scope: str | None = "trace"  # None: no layout (the trace cannot be decoded)
    evidence: str | None = None  # why the data contradicts, or what decided, the layout
    # global traces only: the trace's distinct ids in first-appearance order, and the block
    # index of each first appearance (the corpus-wide proof joins them across traces)
    first_ids: np.ndarray | None = None
    first_pos: np.ndarray | None = None

    @property
    def inferred(self) -> bool:
        return self.declared is None


def _first_appearance_events(walk: np.ndarray, base: int) -> tuple[int, int]:
    """(fresh-below, gap) events of the first-appearance sequence of one walk."""
    if walk.size == 0:
        return 0, 0
    _, first = np.unique(walk, return_index=True)
    seq = walk[np.sort(first)]
    expected = base + np.arange(seq.size, dtype=np.int64)
    return int((seq < expected).sum()), int((seq > expected).sum())


def _hashing(trace: Trace) -> tuple[dict[str, int], np.ndarray, str]:
    """Per-call hashing conventions, the `over` mask, and the trace's style (floor/ceil/...)."""
    n = np.fromiter((c.tokens_in for c in trace.calls), dtype=np.int64, count=len(trace.calls))
    length = np.fromiter((c.ids.size for c in trace.calls), dtype=np.int64, count=len(trace.calls))
    return hashing_of(n, length, trace.block_size)


def hashing_of(
    n: np.ndarray, length: np.ndarray, bs: int
) -> tuple[dict[str, int], np.ndarray, str]:
    """`_hashing` of calls given as arrays: prompt tokens `n`, hash ids `length`."""
    floor_n, ceil_n = n // bs, -(-n // bs)
    over = length > ceil_n
    floor = ~over & (length == floor_n)
    ceil = ~over & ~floor & (length == ceil_n)
    truncated = ~over & ~floor & ~ceil
    counts = {
        "floor": int(floor.sum()),
        "ceil": int(ceil.sum()),
        "truncated": int(truncated.sum()),
        "over": int(over.sum()),
    }
    partial = n % bs != 0
    ceil_seen, floor_seen = bool((ceil & partial).any()), bool((floor & partial).any())
    style = {(True, True): "mixed", (True, False): "ceil", (False, True): "floor"}.get(
        (ceil_seen, floor_seen), "undetermined"
    )
    return counts, over, style


def _check_hard_rules(trace: Trace, over: np.ndarray) -> None:
    if over.any():
        call = trace.calls[int(np.argmax(over))]
        ceil_n = -(-call.tokens_in // trace.block_size)
        raise TraceError(
            "hash_ids_over",
            f"{call.ids.size} hash ids for in={call.tokens_in}: more than ceil(in / block_size) = {ceil_n}",
            Location(
                trace.file,
                trace.line,
                trace.id,
                call.request,
                None if call.inner < 0 else call.inner,
            ),
        )
    for sub in trace.subagents:
        if inner_time_convention(sub) == "mixed":
            raise TraceError(
                "mixed_inner_time",
                f"subagent {sub.agent_id!r}: some inner t are before its spawn t={sub.t} and some are not",
                Location(trace.file, trace.line, trace.id, sub.request),
            )


@dataclass(slots=True)
class _Tails:
    """What each call adds to its conversation: the ids after its common prefix with the
    previous call of the same conversation, with their block indices.

    Every id in a shared prefix already occurred, at the same index, in that previous call,
    which comes earlier in both walks. So first appearances, their order, the distinct ids,
    the (id, index) pairs and each conversation's id set are exactly those of the tails,
    which are a small fraction of all ids: the analysis runs on them.
    """

    ids: dict[int, np.ndarray]  # id(call) -> tail ids
    pos: dict[int, np.ndarray]  # id(call) -> their block indices
    # calls whose common prefix reaches into the previous call's hashed partial block
    partial_prefix_events: int


def _tails(trace: Trace) -> _Tails:
    ids, pos = {}, {}
    events = 0
    prev_of: dict[int, Call] = {}
    for c in trace.calls:
        prev = prev_of.get(c.conv)
        cp = c.shared if prev is not None else 0
        if prev is not None and cp:
            k = prev.ids.size
            if k > prev.tokens_in // trace.block_size and cp == k:
                events += 1
        ids[id(c)] = c.ids[cp:]
        pos[id(c)] = np.arange(cp, c.ids.size, dtype=np.int64)
        prev_of[c.conv] = c
    return _Tails(ids, pos, events)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _convention(base, hashing_style, minting, inner_times) -> str:
    rel = set(inner_times)
    if (
        base == 0
        and hashing_style in ("ceil", "undetermined")
        and minting == "document"
        and rel <= {"absolute"}
    ):
        return "semianalysis"
    if (
        base == 1
        and hashing_style in ("floor", "undetermined")
        and minting in ("document", "parent_first")
        and rel <= {"relative"}
    ):
        return "kv-cache-tester"
    return "other"


def analyse_trace(trace: "Trace | RequestTable") -> TraceScope:
    """Every per-trace definition of the scope contract; raises `TraceError` on a hard error."""
    if isinstance(trace, RequestTable):
        return analyse_requests(trace)
    hashing, over, style = _hashing(trace)
    _check_hard_rules(trace, over)

    tails = _tails(trace)
    doc = _cat([tails.ids[id(c)] for c in trace.calls])
    pos = _cat([tails.pos[id(c)] for c in trace.calls])
    n_ids = sum(c.ids.size for c in trace.calls)
    subs = trace.subagents
    if doc.size == 0:
        base = max_id = None
        n_distinct = holes = violations = 0
        fresh = dict.fromkeys(WALKS, 0)
        gaps = dict.fromkeys(WALKS, 0)
    else:
        uniq, first, inverse = np.unique(doc, return_index=True, return_inverse=True)
        base, max_id, n_distinct = int(uniq[0]), int(uniq[-1]), int(uniq.size)
        holes = max_id - base + 1 - n_distinct
        moved = pos != pos[first][inverse]
        violations = int(distinct(inverse[moved]).size)
        seq = doc[np.sort(first)]
        expected = base + np.arange(seq.size, dtype=np.int64)
        fresh = {"document": int((seq < expected).sum())}
        gaps = {"document": int((seq > expected).sum())}
        if subs:
            pf = _cat([tails.ids[id(c)] for c in trace.parent_first_calls()])
            f, g = _first_appearance_events(pf, base)
        else:
            f, g = fresh["document"], gaps["document"]
        fresh["parent_first"], gaps["parent_first"] = f, g

    if not subs:
        minting = "document" if fresh["document"] == 0 else "none"
    else:
        ok = [w for w in WALKS if fresh[w] == 0]
        minting = min(ok, key=lambda w: (gaps[w], WALKS.index(w))) if ok else "none"
    perfect = minting != "none" and gaps[minting] == 0 and doc.size > 0

    parent_set = distinct(_cat([tails.ids[id(c)] for c in trace.parent_calls]))
    sub_sets = [distinct(_cat([tails.ids[id(c)] for c in s.calls])) for s in subs]
    multi = np.empty(0, dtype=np.int64)
    if len(subs) > 1:
        allsub, counts = np.unique(np.concatenate(sub_sets), return_counts=True)
        multi = allsub[counts > 1]
    sub_scopes = []
    for s, ids in zip(subs, sub_sets, strict=True):
        first_block = next((int(c.ids[0]) for c in s.calls if c.ids.size), None)
        reset = bool(
            ids.size > 1 and base is not None and ids[0] == base and ids[-1] - base + 1 == ids.size
        )
        pshare = float(np.isin(ids, parent_set, assume_unique=True).mean()) if ids.size else None
        sshare = (
            float(np.isin(ids, multi, assume_unique=True).mean())
            if ids.size and len(subs) > 1
            else None
        )
        sub_scopes.append(
            SubagentScope(
                s.agent_id, s.request, first_block, reset, pshare, sshare, inner_time_convention(s)
            )
        )

    if any(s.reset_signature for s in sub_scopes):
        verdict = "reset"
    elif minting == "none":
        verdict = "ambiguous"
    else:
        verdict = "shared"
    if subs and base is not None:  # each context's own first-appearance sequence
        contexts = [trace.parent_calls] + [s.calls for s in subs]
        context_events = [
            _first_appearance_events(_cat([tails.ids[id(c)] for c in conv]), base)
            for conv in contexts
        ]
    else:  # one context: its sequence is the document walk's
        context_events = [(fresh["document"], gaps["document"])]
    layout = _layout(trace, verdict, minting, gaps, sub_scopes, base, context_events)

    first_parent_t = trace.parent_calls[0].t if trace.parent_calls else None
    before_parent = sum(1 for s in subs if first_parent_t is not None and s.t < first_parent_t)

    return TraceScope(
        trace=trace.id,
        file=trace.file,
        line=trace.line,
        block_size=trace.block_size,
        calls=len(trace.calls),
        ids=int(n_ids),
        base=base,
        max_id=max_id,
        distinct_ids=n_distinct,
        fresh_below=fresh,
        gaps=gaps,
        minting_order=minting,
        perfect=bool(perfect),
        holes=holes,
        position_violations=violations,
        hashing=hashing,
        subagents=sub_scopes,
        prefix_declared=(trace.tool_tokens + trace.system_tokens) > 0,
        subagents_before_parent=before_parent,
        partial_prefix_events=tails.partial_prefix_events,
        convention=_convention(
            base, style, minting, [s.inner_time for s in sub_scopes if s.inner_time]
        ),
        verdict=layout.verdict,
        declared=trace.scope,
        layouts=layout.layouts,
        decode_scope=layout.decode_scope,
        evidence=layout.evidence,
        first_ids=seq if layout.decode_scope == "corpus" and doc.size else None,
        first_pos=pos[np.sort(first)] if layout.decode_scope == "corpus" and doc.size else None,
    )


def analyse_requests(table: RequestTable) -> TraceScope:
    """`analyse_trace` of a file of requests read as columns (`traces.requests`), every
    definition vectorised. Each request is a conversation of its own with no subagents, so
    the walks are the file order, each request's ids are its tails, and no prefix reaches
    into an earlier request's partial block."""
    bs = table.block_size
    n = table.tokens_in
    length = table.n_ids
    hashing, over, style = hashing_of(n, length, bs)
    if over.any():
        k = int(np.argmax(over))
        raise TraceError(
            "hash_ids_over",
            f"{int(length[k])} hash ids for in={int(n[k])}: more than ceil(in / block_size) "
            f"= {-(-int(n[k]) // bs)}",
            table.request_location(k),
        )
    doc = table.ids
    if doc.size == 0:
        base = max_id = None
        n_distinct = holes = violations = 0
        fresh = dict.fromkeys(WALKS, 0)
        gaps = dict.fromkeys(WALKS, 0)
        seq = first_pos = None
    else:
        uniq, first, seq, first_pos, moved = _request_walk(table)
        base, max_id, n_distinct = int(uniq[0]), int(uniq[-1]), int(uniq.size)
        holes = max_id - base + 1 - n_distinct
        violations = int(moved)
        expected = base + np.arange(seq.size, dtype=np.int64)
        f, g = int((seq < expected).sum()), int((seq > expected).sum())
        fresh = dict.fromkeys(WALKS, f)
        gaps = dict.fromkeys(WALKS, g)
    minting = "document" if fresh["document"] == 0 else "none"
    perfect = minting != "none" and gaps[minting] == 0 and doc.size > 0
    verdict = "shared" if minting != "none" else "ambiguous"
    layout = _layout(
        table, verdict, minting, gaps, [], base, [(fresh["document"], gaps["document"])]
    )
    corpus = layout.decode_scope == "corpus"
    return TraceScope(
        trace=table.id,
        file=table.file,
        line=None,
        block_size=bs,
        calls=table.n_requests,
        ids=int(doc.size),
        base=base,
        max_id=max_id,
        distinct_ids=n_distinct,
        fresh_below=fresh,
        gaps=gaps,
        minting_order=minting,
        perfect=bool(perfect),
        holes=holes,
        position_violations=violations,
        hashing=hashing,
        subagents=[],
        prefix_declared=False,
        subagents_before_parent=0,
        partial_prefix_events=0,
        convention=_convention(base, style, minting, []),
        verdict=layout.verdict,
        declared=table.scope,
        layouts=layout.layouts,
        decode_scope=layout.decode_scope,
        evidence=layout.evidence,
        first_ids=seq if corpus else None,
        first_pos=first_pos if corpus else None,
    )


def _request_walk(table: RequestTable):
    """The document walk of a file of requests: (distinct ids, index of each one's first
    appearance, the first-appearance sequence, the block index of each first appearance, how
    many ids sit at another block index than where they first appeared). Dense ids (minted in
    sequence) take a chunked pass with no temporary the size of the file's ids; others take
    `np.unique`."""
    doc, offsets = table.ids, table.offsets
    found = dense_first(doc)
    if found is None:
        pos = np.arange(doc.size, dtype=np.int64) - np.repeat(offsets[:-1], table.n_ids)
        uniq, first, inverse = np.unique(doc, return_index=True, return_inverse=True)
        moved = distinct(inverse[pos != pos[first][inverse]]).size
        order = np.sort(first)
        return uniq, first, doc[order], pos[order], moved
    lo, first_of = found
    present = first_of < doc.size
    uniq = np.flatnonzero(present) + lo
    first = first_of[present]
    # the block index where each value first appears, looked up by value
    at = first_of.copy()
    at[present] = first - offsets[np.searchsorted(offsets, first, side="right") - 1]
    moved = []
    n_ids = table.n_ids
    ends = offsets[1:]
    i = 0
    while i < n_ids.size:  # a chunk of whole requests at a time
        j = min(max(int(np.searchsorted(ends, offsets[i] + RANK_CHUNK)), i + 1), n_ids.size)
        a, b = int(offsets[i]), int(offsets[j])
        pos = np.arange(a, b, dtype=np.int64) - np.repeat(offsets[i:j], n_ids[i:j])
        ids = doc[a:b]
        moved.append(ids[pos != at[ids - lo]])
        i = j
    order = np.sort(first)
    first_pos = order - offsets[np.searchsorted(offsets, order, side="right") - 1]
    return uniq, first, doc[order], first_pos, distinct(np.concatenate(moved)).size


def trace_decode_scope(trace: Trace) -> str | None:
    """The decode scope of a trace past the gate: the declared one, or (declaration absent)
    the one its data shows."""
    claimed = DECLARED_SCOPES[trace.scope]
    return claimed if claimed is not None else analyse_trace(trace).decode_scope


@dataclass(frozen=True, slots=True)
class _Layout:
    verdict: str
    layouts: tuple[str, ...]
    decode_scope: str | None
    evidence: str | None


def _layout(trace, verdict, minting, gaps, sub_scopes, base, context_events) -> _Layout:
    """The layouts the data allows, and the decode scope: the declared one when the data
    agrees, or (declaration absent) the one the data shows.

    - trace: a minting walk over the whole trace and no subagent renumbering from the base;
    - context: every context (parent, each subagent) mints its own ids from the base (no
      fresh-below event in its own first-appearance sequence) and every subagent's first
      block is the base.
    A trace with one context allows both (they decode identically). When the data allows both
    for a trace with subagents, the one with fewer gap events wins, and a tie is read as
    `context`: without proof of sharing, no sharing is invented.
    """
    reset = next((x for x in sub_scopes if x.reset_signature), None)
    trace_ok = verdict == "shared"
    starts = [x for x in sub_scopes if x.first_block is not None]
    late = next((x for x in starts if x.first_block != base), None)
    fresh = next((k for k, (f, _) in enumerate(context_events) if f), None)
    context_ok = fresh is None and late is None
    layouts = tuple(k for k, ok in (("trace", trace_ok), ("context", context_ok)) if ok)
    claimed = DECLARED_SCOPES[trace.scope]

    def who(k: int) -> str:
        return "the parent" if k == 0 else f"subagent {trace.subagents[k - 1].agent_id!r}"

    if claimed == "corpus":  # proven across the corpus (`corpus_wide_proof`)
        return _Layout("shared", ("corpus",), "corpus", None)
    if claimed == "trace":
        evidence = None
        if reset is not None:
            evidence = (
                f"subagent {reset.agent_id!r} renumbers from the base {base} (its ids are "
                f"exactly {base}..max): each context numbers its own blocks, not one namespace "
                "per trace"
            )
        elif verdict == "ambiguous":
            evidence = "no walk mints the ids in order (fresh-below events under every walk)"
        return _Layout(verdict, layouts, "trace", evidence)
    if claimed == "context":
        if not context_ok:
            if late is not None:
                evidence = (
                    f"subagent {late.agent_id!r} starts at block {late.first_block}, not at the "
                    f"base {base}: it does not number its own blocks"
                )
            else:
                evidence = f"{who(fresh)} has unseen ids below its own counter (fresh-below)"
            raise TraceError(
                "scope_contradicted",
                f"hash_id_scope 'per_context', but {evidence}",
                trace.location,
            )
        return _Layout("shared", layouts, "context", None)
    # absent: the data decides
    if len(layouts) == 2 and trace.subagents:
        ctx_gaps = sum(g for _, g in context_events)
        chosen = "trace" if gaps[minting] < ctx_gaps else "context"
        evidence = (
            f"both layouts fit; {chosen} has fewer gap events ({gaps[minting]} per trace, "
            f"{ctx_gaps} per context; a tie reads as context)"
        )
        return _Layout("shared", layouts, chosen, evidence)
    if layouts:
        # one context: both fit and decode alike, read as per-trace
        return _Layout("shared", layouts, layouts[0], None)
    return _Layout(
        verdict if verdict != "shared" else "ambiguous",
        layouts,
        None,
        "neither a per-trace minting walk nor per-context numbering explains the ids",
    )


def corpus_wide_proof(scopes: list[TraceScope]) -> tuple[dict | None, list[TraceError]]:
    """The proof of a corpus-wide namespace over the traces decoded with the corpus scope:
    each id keeps one block index across traces (ids of prefix-chained blocks do), and the
    first-appearance sequence over the corpus (traces in corpus order) as findings.

    Returns the figures (None without such traces) and one error per trace whose ids sit at
    other block indices than in an earlier trace, naming the id and both traces."""
    wide = [s for s in scopes if s.decode_scope == "corpus" and s.first_ids is not None]
    if not wide:
        return None, []
    ids = np.concatenate([s.first_ids for s in wide])
    pos = np.concatenate([s.first_pos for s in wide])
    owner = np.concatenate([np.full(s.first_ids.size, k, np.int64) for k, s in enumerate(wide)])
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    conflict = pos != pos[first][inverse]
    errors = []
    for k in distinct(owner[conflict]).tolist():
        at = int(np.flatnonzero(conflict & (owner == k))[0])
        earlier = wide[int(owner[first[inverse[at]]])]
        s = wide[k]
        errors.append(
            TraceError(
                "scope_contradicted",
                f"hash_id_scope 'global', but id {int(ids[at])} is at block "
                f"{int(pos[at])} here and at block {int(pos[first[inverse[at]]])} in trace "
                f"{earlier.trace!r}: one corpus-wide namespace keeps each id at one block index",
                Location(s.file, s.line, s.trace),
            )
        )
    seq = ids[np.sort(first)]
    base = int(uniq[0])
    expected = base + np.arange(seq.size, dtype=np.int64)
    figures = {
        "traces": len(wide),
        "ids": int(sum(s.ids for s in wide)),
        "distinct_ids": int(uniq.size),
        "base": base,
        "max_id": int(uniq[-1]),
        "ids_in_several_traces": int((np.bincount(inverse) > 1).sum()),
        "position_conflicts": int(distinct(inverse[conflict]).size),
        "fresh_below_events": int((seq < expected).sum()),
        "gap_events": int((seq > expected).sum()),
    }
    return figures, errors


class ShareStats(BaseModel):
    traces_affected: int
    mean: float | None
    median: float | None


class FirstBlockStats(BaseModel):
    equal_base: int
    min: int | None
    median: float | None
    p90: float | None
    max: int | None


class ScopeReport(BaseModel):
    """The corpus report of scope-contract.md, plus the gate's decision."""

    traces: int
    traces_with_subagents: int
    subagents: int
    declared_scope: dict[str, int]
    hard_errors: list[dict]
    minting_order: dict[str, int]
    perfect_traces: int
    base: dict[str, int]
    fresh_below_events: dict[str, int]
    gap_events: dict[str, int]
    holes_traces: int
    subagent_first_block: FirstBlockStats
    reset_signature_subagents: int
    parent_share: ShareStats
    sibling_share: ShareStats
    prefix_declared_traces: int
    verdict: dict[str, int]
    position_violations: int
    hashing: dict[str, int]
    inner_time: dict[str, int]
    excluded_traces: list[str]
    # beyond the contract's list: the gate, the findings, and what a table in the UI shows
    policy: str
    passed: bool
    failure_reasons: list[str]
    conventions: dict[str, int]
    null_keys_dropped: int
    findings: dict[str, int]
    block_sizes: dict[str, int]
    calls: int
    ids: int
    per_trace: list[dict]
    # the layout decoded: per decodable trace its decode scope (trace, corpus, context), and
    # the corpus's in one word (`mixed` when its traces differ)
    decode_scopes: dict[str, int] = {}
    layout: str = "trace"
    inferred_scope_traces: int = 0  # declaration absent: decided by the data alone
    corpus_wide: dict | None = None  # the corpus-wide proof of `global` traces

    def relative_to(self, corpus: Path | str) -> "ScopeReport":
        """The report with its trace files named within the corpus at `corpus` (a folder, or
        a file and its folder): what is stored, so its bytes do not depend on where a machine
        keeps the corpus."""
        corpus = Path(corpus)
        prefix = f"{corpus if corpus.is_dir() else corpus.parent}/"

        def strip(text):
            return text.replace(prefix, "") if isinstance(text, str) else text

        return self.model_copy(
            update={
                "per_trace": [{**r, "file": strip(r.get("file"))} for r in self.per_trace],
                "hard_errors": [
                    {**e, "file": strip(e.get("file")), "message": strip(e.get("message"))}
                    for e in self.hard_errors
                ],
            }
        )

    def summary(self) -> str:
        v = self.verdict
        ok = v["shared"]
        total = ok + v["reset"] + v["ambiguous"]
        mo = self.minting_order
        head = "PASS" if self.passed else "FAIL"
        inferred = f", {self.inferred_scope_traces} inferred" if self.inferred_scope_traces else ""
        return (
            f"{head}: {ok}/{total} shared ({v['reset']} reset, {v['ambiguous']} ambiguous), "
            f"layout {self.layout}{inferred}, "
            f"minting document {mo['document']} / parent_first {mo['parent_first']} / none {mo['none']}, "
            f"{self.perfect_traces} perfect, {len(self.hard_errors)} hard errors"
        )


def _share_stats(values: list[float], affected: int) -> ShareStats:
    if not values:
        return ShareStats(traces_affected=affected, mean=None, median=None)
    arr = np.asarray(values)
    return ShareStats(
        traces_affected=affected, mean=float(arr.mean()), median=float(np.median(arr))
    )


def trace_row(s: TraceScope) -> dict:
    """One row of the per-trace table (what a person scans for traces needing attention)."""
    return {
        "trace": s.trace,
        "file": s.file if s.line is None else f"{s.file}:{s.line}",
        "verdict": s.verdict,
        "minting_order": s.minting_order,
        "perfect": s.perfect,
        "convention": s.convention,
        "base": s.base,
        "calls": s.calls,
        "ids": s.ids,
        "subagents": len(s.subagents),
        "holes": s.holes,
        "fresh_below_document": s.fresh_below["document"],
        "fresh_below_parent_first": s.fresh_below["parent_first"],
        "gaps_document": s.gaps["document"],
        "gaps_parent_first": s.gaps["parent_first"],
        "position_violations": s.position_violations,
        "truncated_calls": s.hashing["truncated"],
        "reset_subagents": sum(x.reset_signature for x in s.subagents),
        "declared_scope": s.declared,
        "layouts": "|".join(s.layouts),
        "decode_scope": s.decode_scope,
        "inferred": s.inferred,
        "evidence": s.evidence,
    }


@dataclass(slots=True)
class AnalysedRecord:
    """One record read and analysed (in a worker): its scope analysis or its hard error."""

    file: str
    line: int | None
    declared_scope: str | None
    null_keys_dropped: int
    trace: str | None = None
    where: str | None = None
    scope: TraceScope | None = None
    error: TraceError | None = None
    done: int = 0
    total: int = 0
    more_errors: list[TraceError] = field(default_factory=list)  # a many-request record's rest


def analyse_record(raw: RawRecord) -> AnalysedRecord:
    """Parse one raw record and run the per-trace analysis on it."""
    return analyse_parsed(parse_record(raw), raw)


def analyse_parsed(rec: Record, raw: RawRecord) -> AnalysedRecord:
    """The per-trace analysis of a parsed record."""
    out = AnalysedRecord(
        rec.file,
        rec.line,
        rec.declared_scope,
        rec.null_keys_dropped,
        done=raw.done,
        total=raw.total,
    )
    if rec.error is not None:
        out.error = rec.error
        out.more_errors = rec.more_errors
        return out
    out.trace, out.where = rec.trace.id, rec.trace.location.describe()
    try:
        out.scope = analyse_trace(rec.trace)
    except TraceError as exc:
        out.error = exc
    return out


def build_report(
    records: Iterable[AnalysedRecord], policy: Policy = "fail"
) -> tuple[ScopeReport, list[TraceScope]]:
    """Aggregate analysed records; returns the corpus report and the analyses of valid traces."""
    if policy not in ("fail", "exclude"):
        raise ValueError(f"unknown policy {policy!r} (fail or exclude)")
    records_n = 0
    declared: Counter = Counter()
    errors: list[TraceError] = []
    scopes: list[TraceScope] = []
    seen: dict[str, str] = {}
    nulls = 0
    for rec in records:
        records_n += 1
        if rec.declared_scope is not None:
            declared[rec.declared_scope] += 1
        elif rec.trace is not None:
            declared["absent"] += 1
        nulls += rec.null_keys_dropped
        if rec.trace is None:
            errors.append(rec.error)
            errors.extend(rec.more_errors)
            continue
        if rec.trace in seen:
            errors.append(
                TraceError(
                    "duplicate_trace_id",
                    f"trace id {rec.trace!r} already used at {seen[rec.trace]}",
                    Location(rec.file, rec.line, rec.trace),
                )
            )
            continue
        seen[rec.trace] = rec.where
        if rec.error is not None:
            errors.append(rec.error)
        else:
            scopes.append(rec.scope)
    return aggregate(scopes, errors, records_n, declared, nulls, policy), scopes


def _corpus_layout(scopes: list[TraceScope], dropped: set[str]) -> str:
    """The corpus's layout in one word: the decode scope of its decoded traces, `mixed` when
    they differ. A trace of one context decodes alike per trace and per context, so it only
    counts when no trace has subagents."""
    kept = [s for s in scopes if s.decode_scope is not None and s.trace not in dropped]
    telling = [s for s in kept if s.subagents or s.decode_scope == "corpus"] or kept
    found = {s.decode_scope for s in telling}
    return found.pop() if len(found) == 1 else ("mixed" if found else "none")


def aggregate(
    scopes: list[TraceScope],
    errors: list[TraceError],
    records: int,
    declared: Counter,
    nulls: int,
    policy: Policy,
) -> ScopeReport:
    wide, wide_errors = corpus_wide_proof(scopes)
    errors = errors + wide_errors
    subs = [x for s in scopes for x in s.subagents]
    firsts = [
        (x.first_block, s.base) for s in scopes for x in s.subagents if x.first_block is not None
    ]
    fb = np.asarray([f for f, _ in firsts], dtype=np.float64)
    first_block = FirstBlockStats(
        equal_base=sum(1 for f, b in firsts if f == b),
        min=int(fb.min()) if fb.size else None,
        median=float(np.median(fb)) if fb.size else None,
        p90=float(np.percentile(fb, 90)) if fb.size else None,
        max=int(fb.max()) if fb.size else None,
    )
    pshares = [x.parent_share for x in subs if x.parent_share is not None]
    sshares = [x.sibling_share for x in subs if x.sibling_share is not None]
    verdict = Counter({"shared": 0, "reset": 0, "ambiguous": 0})
    verdict.update(s.verdict for s in scopes)
    excluded = (
        sorted(s.trace for s in scopes if s.verdict != "shared") if policy == "exclude" else []
    )
    reasons = [f"{len(errors)} hard error(s), first: {errors[0]}"] if errors else []
    if policy == "fail" and (verdict["reset"] or verdict["ambiguous"]):
        bad = [s for s in scopes if s.verdict != "shared"]
        why = f": {bad[0].evidence}" if bad[0].evidence else ""
        reasons.append(
            f"{verdict['reset']} reset and {verdict['ambiguous']} ambiguous trace(s) under policy 'fail', "
            f"first: trace {bad[0].trace!r} ({bad[0].verdict}{why})"
        )
    hashing = dict.fromkeys(HASHING, 0)
    inner = {"absolute": 0, "relative": 0, "mixed": 0}
    conventions: Counter = Counter()
    for s in scopes:
        for k, v in s.hashing.items():
            hashing[k] += v
        for x in s.subagents:
            if x.inner_time:
                inner[x.inner_time] += 1
        conventions[s.convention] += 1
    dropped = set(excluded)
    decode_scopes = Counter(
        s.decode_scope for s in scopes if s.decode_scope is not None and s.trace not in dropped
    )
    mo = {"document": 0, "parent_first": 0, "none": 0}
    mo.update(Counter(s.minting_order for s in scopes))
    return ScopeReport(
        traces=records,
        traces_with_subagents=sum(1 for s in scopes if s.subagents),
        subagents=len(subs),
        declared_scope=dict(sorted(declared.items())),
        hard_errors=[e.as_dict() for e in errors],
        minting_order=mo,
        perfect_traces=sum(s.perfect for s in scopes),
        base={
            str(k): v
            for k, v in sorted(Counter(s.base for s in scopes if s.base is not None).items())
        },
        fresh_below_events={w: sum(s.fresh_below[w] for s in scopes) for w in WALKS},
        gap_events={w: sum(s.gaps[w] for s in scopes) for w in WALKS},
        holes_traces=sum(1 for s in scopes if s.holes),
        subagent_first_block=first_block,
        reset_signature_subagents=sum(x.reset_signature for x in subs),
        parent_share=_share_stats(
            pshares, sum(1 for s in scopes if any((x.parent_share or 0) > 0 for x in s.subagents))
        ),
        sibling_share=_share_stats(
            sshares, sum(1 for s in scopes if any((x.sibling_share or 0) > 0 for x in s.subagents))
        ),
        prefix_declared_traces=sum(s.prefix_declared for s in scopes),
        verdict=dict(verdict),
        position_violations=sum(s.position_violations for s in scopes),
        hashing=hashing,
        inner_time=inner,
        excluded_traces=excluded,
        policy=policy,
        passed=not reasons,
        failure_reasons=reasons,
        conventions=dict(sorted(conventions.items())),
        null_keys_dropped=nulls,
        findings={
            "fresh_below_events_minting_walk": sum(
                s.fresh_below[s.minting_order] for s in scopes if s.minting_order != "none"
            ),
            "gap_events_minting_walk": sum(
                s.gaps[s.minting_order] for s in scopes if s.minting_order != "none"
            ),
            "truncated_calls": hashing["truncated"],
            "subagents_before_parent_first_call": sum(s.subagents_before_parent for s in scopes),
            "partial_block_prefix_events": sum(s.partial_prefix_events for s in scopes),
            "traces_with_position_violations": sum(1 for s in scopes if s.position_violations),
        },
        block_sizes={str(k): v for k, v in sorted(Counter(s.block_size for s in scopes).items())},
        calls=sum(s.calls for s in scopes),
        ids=sum(s.ids for s in scopes),
        per_trace=[trace_row(s) for s in scopes],
        decode_scopes=dict(sorted(decode_scopes.items())),
        layout=_corpus_layout(scopes, dropped),
        inferred_scope_traces=sum(s.inferred for s in scopes),
        corpus_wide=wide,
    )


@dataclass(frozen=True)
class ContractRule:
    """One rule of the scope contract, evaluated on a corpus report (one asset check each)."""

    name: str
    description: str
    hard: bool  # a hard error stops the corpus; a finding is reported and kept
    error_rules: tuple[str, ...] = ()  # TraceError rules this check counts
    # and every registered trace format's own rules (`traces.formats`), registered later too
    format_rules: bool = False

    def evaluate(self, report: "ScopeReport") -> tuple[bool, int, list[dict]]:
        """(passed, how many violations, up to 20 examples)."""
        if self.error_rules:
            rules = self.error_rules
            if self.format_rules:
                rules = (*rules, *formats.schema_rules())
            bad = [e for e in report.hard_errors if e["rule"] in rules]
            return not bad, len(bad), bad[:20]
        rows = report.per_trace
        if self.name == "no_reset_traces":
            bad = [r for r in rows if r["verdict"] == "reset"]
        elif self.name == "no_ambiguous_traces":
            bad = [r for r in rows if r["verdict"] == "ambiguous"]
        elif self.name == "position_consistent":
            bad = [r for r in rows if r["position_violations"]]
        elif self.name == "no_truncated_hash_lists":
            bad = [r for r in rows if r["truncated_calls"]]
        else:  # pragma: no cover - guarded by the table below
            raise KeyError(self.name)
        examples = [
            {k: r[k] for k in ("trace", "file", "verdict", "minting_order")} for r in bad[:20]
        ]
        return not bad, len(bad), examples


SCHEMA_RULES = (
    "invalid_json",
    "truncated_file",
    "not_an_object",
    "schema",
    "missing_field",
    "negative_number",
    "not_positive",
    "not_finite",
    "number_too_large",
    "unknown_request_type",
    "trace_too_large",
    "too_many_ids",
    "prompt_too_long",
    "output_too_long",
    "block_size_too_large",
    "format_mismatch",
    *formats.schema_rules(),  # each format's own (mooncake_no_hash_ids, bailian_*)
)
CONTRACT_RULES = (
    ContractRule(
        "valid_schema",
        "Every record is valid JSON and follows the trace schema (trace-format.md), with "
        "every declared size (prompt, output, block, ids per call) within its limit.",
        True,
        SCHEMA_RULES,
        format_rules=True,
    ),
    ContractRule(
        "unique_ids",
        "Trace ids are unique in the corpus and agent ids unique within a trace.",
        True,
        ("duplicate_trace_id", "duplicate_agent_id"),
    ),
    ContractRule(
        "scope_matches_data",
        "Every trace declares a known hash_id_scope (local, global, per_context or none) and "
        "its ids show that layout (formats.md).",
        True,
        ("unknown_scope", "scope_contradicted"),
    ),
    ContractRule(
        "hash_lists_not_over",
        "No call has more hash ids than ceil(in / block_size).",
        True,
        ("hash_ids_over",),
    ),
    ContractRule(
        "subagents_do_not_nest", "No subagent entry inside a subagent.", True, ("nested_subagent",)
    ),
    ContractRule(
        "inner_time_consistent",
        "Each subagent's inner times are all absolute or all relative.",
        True,
        ("mixed_inner_time",),
    ),
    ContractRule(
        "no_reset_traces",
        "No subagent numbers its blocks from the base on its own (reset signature).",
        True,
    ),
    ContractRule(
        "no_ambiguous_traces", "Every trace has a minting order (document or parent-first).", True
    ),
    ContractRule(
        "position_consistent",
        "Each id occurs at one block index only (prefix-chained blocks).",
        False,
    ),
    ContractRule("no_truncated_hash_lists", "No call has fewer ids than in // block_size.", False),
)
