"""Deterministic synthetic corpora in the Weka agentic-coding trace format.

Tests and benchmarks need corpora with the shapes of real Claude Code sessions (contexts that
grow call by call, compaction, parallel sibling subagents, forks, background subagents) in
either published convention (semianalysis or kv-cache-tester), reproducible byte for byte from
a seed and small enough to ship as a recipe instead of data.

How a trace is made: a conversation is a sequence of abstract blocks, each block standing for
one 64-token block *and its whole prefix* (so a block always sits at the same index, and two
prompts share a block only if they share everything before it). A new prompt either extends
an earlier one (keeps its full blocks, adds fresh ones) or branches off a shared prefix (a
compaction, a fork, a subagent's system/tools prefix). Once a trace's conversations exist,
numeric ids are minted by walking the calls in the profile's minting order, so every trace is
perfect (no fresh-below, no gap events) by construction.

Determinism: only `random.Random.random()` (whose sequence Python guarantees across versions)
and exact integer/float arithmetic feed the output; numpy only moves integers. The random
stream of trace i depends on (seed, size, i) alone, so both profiles render the same
conversations and a corpus is a prefix of any longer one with the same seed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import orjson

from weka_assets.atomic import atomic_write

Profile = Literal["semianalysis", "kv-cache-tester"]
Size = Literal["small", "full"]
PROFILES: tuple[str, ...] = get_args(Profile)
SIZES: tuple[str, ...] = get_args(Size)

BLOCK_SIZE = 64
_STREAM_VERSION = "weka-assets-synthetic/1"  # change it and every corpus changes
_ID_PREFIX = {"semianalysis": "sa", "kv-cache-tester": "kvt"}

Knots = tuple[tuple[float, float], ...]  # piecewise-linear inverse CDF: (probability, value)

_OPUS = "claude-opus-4-5-20251101"
_SONNET = "claude-sonnet-4-5-20250929"
_HAIKU = "claude-haiku-4-5-20251001"
_PARENT_MODELS = ((_OPUS, 0.6), (_SONNET, 0.4))
_OUTPUT_TPS = {_OPUS: (35.0, 60.0), _SONNET: (50.0, 85.0), _HAIKU: (100.0, 180.0)}
_SUBAGENT_TYPES = (("Explore", 0.6), ("general-purpose", 0.25), ("Plan", 0.15))
_GROUP_SIZES = ((1, 0.4), (2, 0.3), (3, 0.2), (4, 0.1))
_STREAMING_SHARE = ((0.0, 0.55), (0.15, 0.25), (1.0, 0.2))

_P_SUBAGENTS = 0.28  # traces with subagents
_N_SUBAGENTS: Knots = ((0, 1), (0.5, 4.5), (0.9, 11), (1, 16))
_P_FORK = 0.07
_P_BACKGROUND = 0.08
_P_SAME_TYPE = 0.8  # siblings of one spawn usually share a type, hence a prefix
_P_END_TURN = 0.08  # a parent call ends the user's turn

_TOOL_WAIT: Knots = ((0, 0.1), (0.5, 2.0), (0.9, 15.0), (1, 90.0))
_HUMAN_WAIT: Knots = ((0, 5.0), (0.5, 40.0), (0.9, 240.0), (1, 900.0))
_OUT: Knots = ((0, 12), (0.5, 200), (0.9, 800), (1, 4000))


@dataclass(frozen=True)
class _Scale:
    parent_calls: Knots
    sub_calls: Knots
    parent_tool: tuple[int, int]
    parent_system: tuple[int, int]
    sub_tool: tuple[int, int]
    sub_system: tuple[int, int]
    user: Knots
    result: Knots
    task: Knots
    sub_result: Knots
    limit: tuple[int, int]
    summary: tuple[int, int]


_SCALES = {
    "small": _Scale(
        parent_calls=((0, 4), (1, 15.49)),
        sub_calls=((0, 4), (1, 10.49)),
        parent_tool=(600, 1500),
        parent_system=(200, 600),
        sub_tool=(400, 900),
        sub_system=(100, 300),
        user=((0, 40), (0.8, 400), (1, 900)),
        result=((0, 80), (0.5, 300), (0.9, 900), (1, 1600)),
        task=((0, 60), (1, 500)),
        sub_result=((0, 100), (1, 600)),
        limit=(5000, 10000),
        summary=(300, 900),
    ),
    "full": _Scale(
        parent_calls=((0, 3), (0.2, 30), (0.5, 85), (0.8, 190), (0.95, 380), (1, 700)),
        sub_calls=((0, 3), (0.5, 12), (0.9, 35), (1, 80)),
        parent_tool=(8000, 16000),
        parent_system=(2000, 5000),
        sub_tool=(6500, 8500),
        sub_system=(900, 2400),
        user=((0, 30), (0.7, 800), (0.95, 4000), (1, 12000)),
        result=(
            (0, 80),
            (0.3, 250),
            (0.6, 700),
            (0.85, 2000),
            (0.95, 6000),
            (0.99, 25000),
            (1, 60000),
        ),
        task=((0, 100), (0.9, 1500), (1, 5000)),
        sub_result=((0, 200), (0.8, 2500), (1, 8000)),
        limit=(120000, 200000),
        summary=(2500, 12000),
    ),
}


# --- exact randomness helpers: every draw is one rnd.random() plus arithmetic ---------------


def _draw(rnd: random.Random, knots: Knots) -> float:
    u = rnd.random()
    p0, v0 = knots[0]
    for p1, v1 in knots[1:]:
        if u <= p1:
            return v0 + (v1 - v0) * (u - p0) / (p1 - p0)
        p0, v0 = p1, v1
    return v0


def _idraw(rnd: random.Random, knots: Knots) -> int:
    return int(_draw(rnd, knots) + 0.5)


def _uniform(rnd: random.Random, lo: float, hi: float) -> float:
    return lo + (hi - lo) * rnd.random()


def _randint(rnd: random.Random, lo: int, hi: int) -> int:
    return lo + int(rnd.random() * (hi - lo + 1))


def _pick(rnd: random.Random, weighted):
    u = rnd.random()
    for value, weight in weighted:
        if u < weight:
            return value
        u -= weight
    return weighted[-1][0]


def _trace_rng(seed: int, size: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"{_STREAM_VERSION}|{size}|{seed}|{index}".encode()).digest()
    return random.Random(int.from_bytes(digest, "big"))


# --- abstract blocks ------------------------------------------------------------------------


@dataclass(slots=True)
class _Ctx:
    """A prompt's content: its token count and its full blocks (len == tokens // BLOCK_SIZE)."""

    tokens: int
    nodes: np.ndarray


_EMPTY_CTX = _Ctx(0, np.empty(0, dtype=np.int64))


class _Blocks:
    """Allocator of abstract blocks for one trace (numbered in creation order)."""

    def __init__(self) -> None:
        self.count = 0

    def derive(self, base: _Ctx, shared: int, add: int, partial: bool = True):
        """The prompt that shares `shared` tokens with `base`, then has `add` new ones.

        Returns the new context and the call's block array (a fresh partial last block
        appended when `partial` and the prompt does not end on a block boundary: when the
        content later fills that block it is a different block).
        """
        keep = shared // BLOCK_SIZE
        tokens = shared + add
        full = tokens // BLOCK_SIZE
        extra = 1 if partial and tokens % BLOCK_SIZE else 0
        arr = np.empty(full + extra, dtype=np.int64)
        arr[:keep] = base.nodes[:keep]
        fresh = full + extra - keep
        arr[keep:] = np.arange(self.count, self.count + fresh, dtype=np.int64)
        self.count += fresh
        return _Ctx(tokens, arr[:full]), arr


# --- plan: one trace's conversations, profile-independent -----------------------------------


@dataclass(slots=True)
class _Call:
    t: float
    kind: str
    model: str
    n_in: int
    n_out: int
    blocks: np.ndarray
    has_partial: bool
    input_types: list[str]
    output_types: list[str]
    stop: str
    api_time: float
    think_time: float
    ttft: float | None
    tool_uses: int
    hash_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Sub:
    t: float
    agent_id: str
    subagent_type: str
    background: bool
    model: str
    tool_tokens: int
    system_tokens: int
    calls: list[_Call]  # t relative to the spawn
    duration_ms: int
    total_tokens: int
    tool_use_count: int


@dataclass(slots=True)
class _Plan:
    model: str
    tool_tokens: int
    system_tokens: int
    items: list  # _Call | _Sub, document order
    subs: list[_Sub]


@dataclass(slots=True)
class _Agent:
    """What one conversation keeps between calls."""

    model: str
    prefix: _Ctx  # system + tools: what compaction keeps
    limit: int
    streaming: float
    tps: float


def _make_call(
    rnd,
    agent: _Agent,
    t: float,
    think: float,
    ctx: _Ctx,
    arr: np.ndarray,
    input_types: list[str],
    stop: str,
) -> _Call:
    n_out = max(1, _idraw(rnd, _OUT))
    latency = 0.6 + 1.8 * rnd.random() + ctx.tokens / 60000.0
    api = round(latency + n_out / agent.tps, 2)
    kind = "s" if rnd.random() < agent.streaming else "n"
    if stop == "tool_use":
        output_types = _pick(
            rnd,
            (
                (["tool_use"], 0.2),
                (["text", "tool_use"], 0.55),
                (["thinking", "text", "tool_use"], 0.25),
            ),
        )
        tool_uses = _pick(rnd, ((1, 0.6), (2, 0.25), (3, 0.1), (4, 0.05)))
    else:
        output_types = _pick(rnd, ((["text"], 0.7), (["thinking", "text"], 0.3)))
        tool_uses = 0
    return _Call(
        t=t,
        kind=kind,
        model=agent.model,
        n_in=ctx.tokens,
        n_out=n_out,
        blocks=arr,
        has_partial=len(arr) > len(ctx.nodes),
        input_types=input_types,
        output_types=list(output_types),
        stop=stop,
        api_time=api,
        think_time=think,
        ttft=round(latency, 2) if kind == "s" else None,
        tool_uses=tool_uses,
    )


def _advance(rnd, blocks: _Blocks, agent: _Agent, ctx: _Ctx, add: int, summary: tuple[int, int]):
    """Next prompt: the previous one plus `add` tokens, or a compaction when over the limit."""
    if ctx.tokens + add > agent.limit:
        ctx, arr = blocks.derive(agent.prefix, agent.prefix.tokens, _randint(rnd, *summary))
        return ctx, arr, True
    ctx, arr = blocks.derive(ctx, ctx.tokens, add)
    return ctx, arr, False


def _run_subagent(rnd, sc: _Scale, blocks: _Blocks, agent: _Agent, first: tuple) -> list[_Call]:
    """A subagent's calls, `t` relative to its spawn; the last one ends its turn."""
    n = max(1, _idraw(rnd, sc.sub_calls))
    ctx, arr = first
    calls: list[_Call] = []
    t = 0.0
    for k in range(n):
        stop = "end_turn" if k == n - 1 else "tool_use"
        if k == 0:
            think, input_types = 0.0, ["text"]
        else:
            prev = calls[-1]
            add = prev.n_out + _idraw(rnd, sc.result)
            ctx, arr, compacted = _advance(rnd, blocks, agent, ctx, add, sc.summary)
            input_types = ["text"] if compacted else ["tool_result"]
            think = round(_draw(rnd, _TOOL_WAIT), 3)
            t = round(prev.t + prev.api_time + think, 3)
        calls.append(_make_call(rnd, agent, t, think, ctx, arr, input_types, stop))
    return calls


def _group_sizes(rnd, total: int) -> list[int]:
    sizes = []
    while total > 0:
        s = min(total, _pick(rnd, _GROUP_SIZES))
        sizes.append(s)
        total -= s
    return sizes


def _plan_trace(rnd: random.Random, sc: _Scale) -> tuple[_Plan, _Blocks]:
    blocks = _Blocks()
    model = _pick(rnd, _PARENT_MODELS)
    tool_tokens = _randint(rnd, *sc.parent_tool)
    system_tokens = _randint(rnd, *sc.parent_system)
    prefix, _ = blocks.derive(_EMPTY_CTX, 0, tool_tokens + system_tokens, partial=False)
    streaming = _pick(rnd, _STREAMING_SHARE)
    limit = _randint(rnd, *sc.limit)
    parent = _Agent(model, prefix, limit, streaming, _uniform(rnd, *_OUTPUT_TPS[model]))

    n_calls = max(2, _idraw(rnd, sc.parent_calls))
    stops = ["end_turn" if rnd.random() < _P_END_TURN else "tool_use" for _ in range(n_calls)]
    stops[-1] = "end_turn"

    # Spawn groups sit on tool_use calls that have a successor (the parent always continues).
    spawn_at: dict[int, int] = {}
    if rnd.random() < _P_SUBAGENTS:
        groups = _group_sizes(rnd, max(1, _idraw(rnd, _N_SUBAGENTS)))
        slots = [k for k in range(n_calls - 1) if stops[k] == "tool_use"]
        if not slots:
            stops[0] = "tool_use"
            slots = [0]
        while len(groups) > len(slots):
            extra = groups.pop()
            groups[-1] += extra
        chosen = sorted(rnd.sample(slots, len(groups)))
        for k, g in zip(chosen, groups, strict=True):
            spawn_at[k] = g

    type_prefixes: dict[str, tuple[_Ctx, int, int]] = {}
    items: list = []
    subs: list[_Sub] = []
    ctx, arr = blocks.derive(prefix, prefix.tokens, _idraw(rnd, sc.user))
    t, think, input_types = 0.0, 0.0, ["text"]
    wait_until = 0.0
    prev: _Call | None = None
    pending_add = 0  # what the subagents spawned after `prev` add to the next prompt
    for k in range(n_calls):
        if prev is not None:
            if prev.stop == "end_turn":
                add = prev.n_out + _idraw(rnd, sc.user)
                wait = _draw(rnd, _HUMAN_WAIT)
            else:
                add = prev.n_out + _idraw(rnd, sc.result) + pending_add
                wait = _draw(rnd, _TOOL_WAIT)
            ctx, arr, compacted = _advance(rnd, blocks, parent, ctx, add, sc.summary)
            input_types = ["text"] if compacted or prev.stop == "end_turn" else ["tool_result"]
            prev_end = prev.t + prev.api_time
            start = max(prev_end + wait, wait_until + _uniform(rnd, 0.5, 5.0))
            t = round(start, 3)
            think = round(t - prev_end, 3)
        call = _make_call(rnd, parent, t, think, ctx, arr, input_types, stops[k])
        items.append(call)
        prev = call
        pending_add = 0

        if k in spawn_at:
            spawn = call.t + call.api_time + _uniform(rnd, 0.2, 3.0)
            stype = _pick(rnd, _SUBAGENT_TYPES)
            for _ in range(spawn_at[k]):
                if rnd.random() >= _P_SAME_TYPE:
                    stype = _pick(rnd, _SUBAGENT_TYPES)
                background = rnd.random() < _P_BACKGROUND
                # A fork shares the parent's prompt. It must not end on a block boundary:
                # otherwise (semianalysis, document order) a fork from a parent that has only
                # ever extended one prompt would hold exactly ids base..max, a reset signature.
                fork = rnd.random() < _P_FORK and ctx.tokens % BLOCK_SIZE != 0
                if fork:
                    sub_type, sub_model = "general-purpose", model
                    sub_tool, sub_system = tool_tokens, system_tokens
                    sub_prefix = prefix
                    first = blocks.derive(ctx, ctx.tokens, call.n_out + _idraw(rnd, sc.task))
                else:
                    sub_type = stype
                    sub_model = _HAIKU if stype == "Explore" else model
                    if stype not in type_prefixes:
                        st, ss = _randint(rnd, *sc.sub_tool), _randint(rnd, *sc.sub_system)
                        tp, _ = blocks.derive(_EMPTY_CTX, 0, st + ss, partial=False)
                        type_prefixes[stype] = (tp, st, ss)
                    sub_prefix, sub_tool, sub_system = type_prefixes[stype]
                    first = blocks.derive(sub_prefix, sub_prefix.tokens, _idraw(rnd, sc.task))
                agent = _Agent(
                    sub_model, sub_prefix, limit, streaming, _uniform(rnd, *_OUTPUT_TPS[sub_model])
                )
                calls = _run_subagent(rnd, sc, blocks, agent, first)
                last = calls[-1]
                # kv-cache-tester writes inner times relative to the spawn and a reader tells
                # relative from absolute by comparing with the entry's t: keep spawn > every one.
                spawn = round(max(spawn, last.t + 1.0 + rnd.random()), 3)
                end = spawn + last.t + last.api_time
                sub = _Sub(
                    t=spawn,
                    agent_id=f"agent_{len(subs) + 1:03d}",
                    subagent_type=sub_type,
                    background=background,
                    model=sub_model,
                    tool_tokens=sub_tool,
                    system_tokens=sub_system,
                    calls=calls,
                    duration_ms=int((end - spawn) * 1000.0 + 0.5),
                    total_tokens=last.n_in + last.n_out,
                    tool_use_count=sum(c.tool_uses for c in calls),
                )
                items.append(sub)
                subs.append(sub)
                if background:
                    pending_add += _randint(rnd, 40, 160)
                else:
                    pending_add += _idraw(rnd, sc.sub_result)
                    wait_until = max(wait_until, end)
                wait_until = max(wait_until, spawn)
                spawn += _uniform(rnd, 0.5, 7.0)
    return _Plan(model, tool_tokens, system_tokens, items, subs), blocks


# --- render: mint ids in the profile's order and write the profile's keys -------------------


def _mint(walk: Iterable[_Call], n_blocks: int, base: int, floor_hashing: bool) -> None:
    """Give each block base + (distinct blocks met so far) on its first appearance."""
    mapping = np.full(n_blocks, -1, dtype=np.int64)
    next_id = base
    for call in walk:
        arr = call.blocks[:-1] if floor_hashing and call.has_partial else call.blocks
        ids = mapping[arr]
        new = ids < 0
        fresh = int(np.count_nonzero(new))
        if fresh:
            minted = np.arange(next_id, next_id + fresh, dtype=np.int64)
            ids[new] = minted
            mapping[arr[new]] = minted
            next_id += fresh
        call.hash_ids = ids.tolist()


def _call_dict(call: _Call, t: float) -> dict:
    d = {
        "t": t,
        "type": call.kind,
        "model": call.model,
        "in": call.n_in,
        "out": call.n_out,
        "hash_ids": call.hash_ids,
        "input_types": call.input_types,
        "output_types": call.output_types,
        "stop": call.stop,
        "api_time": call.api_time,
        "think_time": call.think_time,
    }
    if call.kind == "s":
        d["ttft"] = call.ttft
    return d


def _render(plan: _Plan, blocks: _Blocks, profile: str, trace_id: str) -> dict:
    kvt = profile == "kv-cache-tester"
    parent_calls = [it for it in plan.items if isinstance(it, _Call)]
    if kvt:
        walk = parent_calls + [c for s in plan.subs for c in s.calls]
    else:
        walk = [c for it in plan.items for c in (it.calls if isinstance(it, _Sub) else (it,))]
    _mint(walk, blocks.count, base=1 if kvt else 0, floor_hashing=kvt)

    models = [plan.model]
    requests = []
    for it in plan.items:
        if isinstance(it, _Call):
            requests.append(_call_dict(it, it.t))
            continue
        if it.model not in models:
            models.append(it.model)
        entry = {
            "t": it.t,
            "type": "subagent",
            "agent_id": it.agent_id,
            "subagent_type": it.subagent_type,
            "duration_ms": None if it.background else it.duration_ms,
            "total_tokens": None if it.background else it.total_tokens,
            "tool_use_count": None if it.background else it.tool_use_count,
            "status": "async_launched" if it.background else "completed",
            "models": [it.model],
        }
        if kvt:
            entry["tool_tokens"] = it.tool_tokens
            entry["system_tokens"] = it.system_tokens
        entry["requests"] = [_call_dict(c, c.t if kvt else round(it.t + c.t, 3)) for c in it.calls]
        requests.append(entry)

    trace = {
        "id": trace_id,
        "models": models,
        "block_size": BLOCK_SIZE,
        "hash_id_scope": "local",
    }
    if kvt:
        trace["tool_tokens"] = plan.tool_tokens
        trace["system_tokens"] = plan.system_tokens
    trace["requests"] = requests
    if kvt:
        p_in = sum(c.n_in for c in parent_calls)
        p_out = sum(c.n_out for c in parent_calls)
        s_in = sum(c.n_in for s in plan.subs for c in s.calls)
        s_out = sum(c.n_out for s in plan.subs for c in s.calls)
        trace["totals"] = {
            "parent_tokens": {"input": p_in, "output": p_out},
            "subagent_tokens": {"input": s_in, "output": s_out},
            "combined_tokens": {"input": p_in + s_in, "output": p_out + s_out},
            "subagent_count": len(plan.subs),
        }
    return trace


# --- public API -----------------------------------------------------------------------------


def _check_args(profile: str, traces: int, seed: int, size: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, not {profile!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    for name, value in (("traces", traces), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, not {value!r}")


def iter_corpus(profile: Profile, traces: int, seed: int, size: Size = "small") -> Iterator[dict]:
    """Yield the corpus one trace at a time (memory bounded by one trace).

    Trace i depends only on (profile, seed, size, i): a corpus is a prefix of a longer one.
    """
    _check_args(profile, traces, seed, size)
    sc = _SCALES[size]
    prefix = _ID_PREFIX[profile]
    for i in range(traces):
        plan, blocks = _plan_trace(_trace_rng(seed, size, i), sc)
        yield _render(plan, blocks, profile, f"{prefix}-{seed}-{i:05d}")


def generate_corpus(profile: Profile, traces: int, seed: int, size: Size = "small") -> list[dict]:
    """The whole corpus as a list (small corpora and tests)."""
    return list(iter_corpus(profile, traces, seed, size))


def _folder_beside(out: Path) -> Path:
    """A fresh hidden folder next to `out` (a folder of traces is published by renaming it;
    a single file goes through `atomic_write`)."""
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    return tmp


def _is_file_stem(trace_id) -> bool:
    """True when `<trace_id>.json` is one plain file name inside the folder: a non-empty
    string without '/', '\\' or NUL, not starting with '.', at most 255 bytes with the suffix."""
    if not isinstance(trace_id, str) or not trace_id or trace_id.startswith("."):
        return False
    if any(c in trace_id for c in "/\\\0"):
        return False
    try:
        return len(os.fsencode(trace_id + ".json")) <= 255
    except UnicodeEncodeError:  # a lone surrogate the file system cannot name
        return False


def write_corpus(trace_iter: Iterable[dict], out: Path | str) -> Path:
    """Stream traces to `out`: `.jsonl`, `.jsonl.gz` or a directory of `<id>.json`.

    Written under a temporary name beside `out` and renamed at the end, so a reader never
    sees half a corpus. The gzip header carries no name and mtime 0, so its bytes depend only
    on the content (and the zlib build).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = out.name
    if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        with atomic_write(out) as raw:
            if name.endswith(".gz"):
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6
                ) as gz:
                    for trace in trace_iter:
                        gz.write(orjson.dumps(trace) + b"\n")
            else:
                for trace in trace_iter:
                    raw.write(orjson.dumps(trace) + b"\n")
        return out

    if out.exists() and not out.is_dir():
        raise ValueError(
            f"{out} exists and is not a directory (use .jsonl or .jsonl.gz for a file)"
        )
    tmp = _folder_beside(out)
    try:
        seen: set[str] = set()
        for trace in trace_iter:
            trace_id = trace["id"]
            if not _is_file_stem(trace_id):
                raise ValueError(f"trace id {trace_id!r} cannot be a file name")
            if trace_id in seen:
                raise ValueError(f"duplicate trace id {trace_id!r}")
            seen.add(trace_id)
            (tmp / f"{trace_id}.json").write_bytes(orjson.dumps(trace) + b"\n")
        old = None
        if out.exists():
            old = _folder_beside(out)
            os.replace(out, old / "old")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
