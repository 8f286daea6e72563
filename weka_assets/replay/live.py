"""Live replay: send a decoded dataset to a real OpenAI-compatible server and compare the prefix
cache it reports with the one predicted from the tokens actually sent.

Wire: `POST {url}/v1/completions` with the prompt as token ids (never text: re-tokenisation
would move block seams), `max_tokens = max(1, min(tokens_out, cap))`, streamed with
`stream_options.include_usage` so the first content chunk gives the time to first token and
the final usage chunk gives `usage.prompt_tokens_details.cached_tokens` (vLLM reports it with
`--enable-prompt-tokens-details`).

Schedule: every call has its start on the shared timeline (`schedule.call_start_times`, scaled
by `time_scale`, shifted so the first kept call starts at 0) and, on top of it, dependencies
that a compressed timeline would otherwise break (`call_dependencies`):
- a call waits for the previous call of its own conversation to finish (in a file of
  requests, its session's previous request in turn order: Bailian; a Mooncake request is a
  session of its own and waits for none);
- a parent call waits for the last call of every blocking subagent entry before it to finish.
  The calls table has no status column: an entry's status is read from the trace's own file
  when it is still readable (`async_launched` = background), otherwise judged from the
  recorded times (blocking when the parent's next call was recorded at or after the start of
  the subagent's last call). The result counts which source decided each entry;
- a subagent's first call waits for the parent call that launched it (the parent's last call
  before the entry) to finish.
Only dependencies on calls earlier in the trace's replay order are kept, so the graph has no
cycle whatever the recorded times. At most `concurrency` requests are in flight.

Prediction (vLLM's rule, checked on vLLM 0.32 CPU, block size 32): the server keys each full
block of `B` prompt tokens by its tokens chained with the previous block's key, caches every
full block of a prompt it has prefilled, and on a new request reuses the leading run of cached
blocks, but never the whole prompt: at least one token is always computed, so a prompt of `n`
tokens can hit at most `(n - 1) // B` blocks (a repeated 64-token prompt reports 32 cached
tokens, a repeated 65-token prompt 64). Two predictions replay the expanded prompts in the order
they were actually sent, keyed the same way (blake2b chain over the int32 token ids):
- bounded (when the server's KV-cache size is known: `kv_blocks`, else `num_gpu_blocks` from
  its `/metrics`): vLLM's own block pool of that size (`block_pool.BlockPool`: its eviction
  order, blocks of running calls pinned, generated tokens' blocks counted), each call started
  when it is sent and finished, with the completion tokens the server reported, when its answer
  has arrived. This is `predicted_cached_tokens`;
- unbounded (`unbounded_cached_tokens`; `predicted_cached_tokens` too when the size is not
  known): a cache that never evicts; a call's blocks enter it when it is sent, and a call the
  server rejected with a 4xx (never prefilled) takes its new blocks out again. Where the bounded
  prediction is lower, the server's cache size explains the shortfall (`calls_evicted`).
Every call whose measured count differs from `predicted_cached_tokens` gets one explanation
(`EXPLANATIONS`), naming the call in flight that caused it where there is one (`related_call`).
The server's own counters (`vllm:prefix_cache_queries`, `vllm:prefix_cache_hits`, read before
and after the run) are recorded beside the predicted totals.

Failures: an unreachable URL, a wrong model name (404), and a server that goes away mid-run
(connection errors after the retries) end the run with `LiveReplayError`; the result so far is
written first (aside, then renamed) with `complete: false`, `stopped`, `error` and how many calls
were sent. A 5xx is retried, then recorded on the call; other 4xx and timeouts are recorded on
the call and the run goes on. Cancelling (Ctrl-C, task cancel) stops sending, marks in-flight
calls `cancelled` and writes the result so far.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
from pydantic import BaseModel

from weka_assets.atomic import atomic_write
from weka_assets.decoding.dataset import ROLES, DecodedDataset, open_dataset
from weka_assets.errors import WekaError
from weka_assets.replay.block_pool import BlockPool
from weka_assets.replay.live_options import DropPolicy, LiveOptions
from weka_assets.replay.schedule import Arrival, call_start_times
from weka_assets.replay.server_metrics import ServerCache, parse_metrics

Status = Literal["ok", "error", "cancelled", "not_sent", "dropped"]

EXPLANATIONS = {
    "in_flight_prefix": "fewer hits than predicted: a missed block was first sent by a call "
    "still in flight when this one was sent (the server had not cached it yet)",
    "evicted": "fewer hits than predicted, and every missed block came from a finished call: "
    "the server evicted it (its KV cache is bounded) or did not cache it",
    "warm_server_cache": "more hits than predicted on a first attempt: the server held these "
    "blocks before this run (its cache was not reset) ",
    "retried": "more hits than predicted after a retry: the failed attempt had prefilled blocks",
    "block_size_mismatch": "the cached count is not a multiple of the block size: the server's "
    "block size differs from the one predicted with",
    "reordered": "calls in flight together that share blocks reached the server in the other "
    "order than sent: one got hits predicted for the other, which got fewer",
    "concurrent_allocation": "with another call in flight (related_call) the server scheduled, "
    "allocated or freed blocks in another order than predicted (it interleaves decode steps and "
    "schedules a waiting call when blocks are freed), so a different block was evicted",
    "diverged_earlier": "no call was in flight with this one, but the server's cache had "
    "already left the prediction's pool at an earlier call (related_call) that concurrency "
    "explained: what was evicted since differs",
}

PREDICTION_RULE = (
    "B * min(leading run of cached blocks, (prompt_tokens - 1) // B), over B-token blocks "
    "(chained keys of the token ids) in the order the calls were sent: in vLLM's own block pool "
    "of the server's size (kv_blocks) where it is known, calls finishing as they were answered; "
    "else over an unbounded cache; vLLM never reports the whole prompt as cached"
)


class LiveReplayError(WekaError):
    """The live replay cannot go on (server unreachable or gone, wrong model)."""

    def __init__(self, message: str, result: LiveResult | None = None):
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------------ results


class LiveCall(BaseModel):
    """One call of the dataset: what was planned, sent, measured and predicted."""

    index: int  # row in the dataset's calls table
    trace: str
    conv: int
    request: int
    inner: int
    role: str
    tokens_in: int
    max_tokens: int
    status: Status = "not_sent"
    scheduled_s: float | None = None  # start on the (scaled) timeline
    sent_s: float | None = None  # when it was actually sent, from the run's start
    finished_s: float | None = None  # when its answer (or failure) arrived, from the run's start
    send_order: int | None = None
    attempts: int = 0
    http_status: int | None = None
    prompt_tokens: int | None = None  # from the server's usage
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens
    predicted_cached_tokens: int | None = None
    predicted_hit_blocks: int | None = None  # leading hits before the (n - 1) // B cap
    unbounded_cached_tokens: int | None = None  # the prediction with a cache that never evicts
    ttft_s: float | None = None
    latency_s: float | None = None
    explanation: str | None = None  # a key of EXPLANATIONS when cached != predicted
    related_call: int | None = None  # the call (index) the explanation names, if any
    error: str | None = None


class Percentiles(BaseModel):
    count: int
    p50: float | None
    p90: float | None
    p99: float | None


class LiveTotals(BaseModel):
    calls: int  # in the dataset
    planned: int  # after the context cap
    sent: int
    ok: int
    errors: int
    cancelled: int
    not_sent: int
    dropped_calls: int
    dropped_traces: int
    prompt_tokens: int  # over ok calls
    cached_tokens: int  # over ok calls that report it
    predicted_cached_tokens: int  # over the same calls
    calls_without_cached_tokens: int  # ok calls whose usage had no cached_tokens
    unbounded_predicted_cached_tokens: int = 0  # over the same calls, a cache never evicting
    calls_evicted: int = 0  # calls the bounded prediction gives fewer hits than the unbounded
    # the server's own counters over the run (tokens; None: it has none on /metrics)
    server_prefix_cache_queries: int | None = None
    server_prefix_cache_hits: int | None = None
    prompt_tokens_sent: int = 0  # over ok calls: what the server's queries count
    predicted_blocks_evicted: int | None = None  # keys the bounded prediction's pool dropped
    matched_calls: int
    mismatched_calls: int
    mismatches_by_explanation: dict[str, int]
    latency_s: Percentiles
    ttft_s: Percentiles


class LiveSettings(BaseModel):
    """The options a result records (`LiveOptions`, the arrival spelled out, and where the
    context window came from)."""

    concurrency: int
    time_scale: float
    arrival: dict
    max_context: int | None
    # "option": given; "server": the model's max_model_len from /v1/models; None: no cap
    max_context_source: str | None = None
    drop: DropPolicy
    max_tokens_cap: int
    block_size: int
    kv_blocks: int | None = None  # the bounded prediction's pool (null block included)
    # "option": given; "server": num_gpu_blocks from /metrics; None: unbounded prediction
    kv_blocks_source: str | None = None
    timeout_s: float
    retries: int
    reset_cache: bool


class LiveResult(BaseModel):
    url: str
    model: str
    dataset: str | None
    settings: LiveSettings
    started_at: str
    wall_s: float
    complete: bool  # every planned call was sent and answered (ok or error)
    stopped: Literal["finished", "error", "cancelled"]
    error: str | None
    cache_reset: bool | None  # POST /reset_prefix_cache succeeded (None: not asked)
    # "vllm_block_pool": predicted with vLLM's eviction at settings.kv_blocks; else "unbounded"
    prediction: str = "unbounded"
    # live_capacity.LiveCapacityCurve: the run at other pool sizes (with a bounded prediction)
    capacity_curve: dict | None = None
    # subagent entries: how many the parent waits for, and where their status came from
    subagents: dict[str, int]
    prediction_rule: str = PREDICTION_RULE
    explanations: dict[str, str] = EXPLANATIONS
    totals: LiveTotals
    calls: list[LiveCall]

    def calls_table(self):
        """The per-call rows as a pyarrow table (e.g. to write parquet)."""
        import pyarrow as pa

        return pa.Table.from_pylist([c.model_dump() for c in self.calls])

    def summary(self) -> str:
        t = self.totals
        state = "complete" if self.complete else f"INCOMPLETE ({self.stopped})"
        return (
            f"{state}: {t.sent}/{t.planned} sent, {t.ok} ok, {t.errors} errors, "
            f"{t.dropped_calls} calls dropped ({t.dropped_traces} traces); cached "
            f"{t.cached_tokens} vs predicted {t.predicted_cached_tokens} tokens, "
            f"{t.matched_calls} calls match, {t.mismatched_calls} differ"
        )


# ------------------------------------------------------------------------------------ plan


def max_tokens_for(ds: DecodedDataset, cap: int) -> np.ndarray:
    """Output tokens asked for each call: the recorded count, capped, at least 1."""
    out = np.asarray(ds.calls["tokens_out"], dtype=np.int64)
    return np.maximum(1, np.minimum(out, int(cap)))


def context_cap(
    ds: DecodedDataset, max_tokens: np.ndarray, max_context: int | None, drop: DropPolicy
) -> tuple[np.ndarray, list[int]]:
    """(keep mask over calls, indices of the traces dropped whole).

    A call needs `tokens_in + max_tokens` positions; above `max_context` it is dropped alone
    (`drop="calls"`) or with every call of its session (`drop="traces"`: its trace, or in a
    file of requests the request alone, `DecodedDataset.sessions`); the indices returned are
    the sessions'.
    """
    if drop not in ("calls", "traces"):
        raise ValueError(f"drop must be 'calls' or 'traces', got {drop!r}")
    n = ds.n_calls
    if max_context is None:
        return np.ones(n, dtype=bool), []
    too_long = np.asarray(ds.calls["tokens_in"], dtype=np.int64) + max_tokens > int(max_context)
    if drop == "calls":
        return ~too_long, []
    session = ds.sessions()[0]
    bad = sorted({int(t) for t in np.unique(session[too_long])})
    return ~np.isin(session, bad), bad


def subagent_status(
    ds: DecodedDataset, corpus: Path | str | None = None
) -> dict[tuple[int, int], bool]:
    """{(trace index, conv): background?} read from the traces' own files where they are still
    readable (`status == "async_launched"`); a trace whose file is gone or no longer matches
    the dataset (id, calls per conversation) is left out. A dataset names each trace's file
    within its corpus; the corpus is `corpus`, else the one its provenance record names."""
    from weka_assets.decoding.dataset import read_provenance
    from weka_assets.traces.reader import iter_records

    if corpus is None and ds.path is not None:
        corpus = read_provenance(ds.path).get("corpus")
    base = Path(corpus) if corpus else None
    if base is not None and not base.is_dir():
        base = base.parent  # a one-file corpus: its file is named within its folder
    out: dict[tuple[int, int], bool] = {}
    by_file: dict[str, dict[tuple[int | None, str], int]] = {}
    for k, t in enumerate(ds.traces):
        if t.get("file"):
            file = Path(str(t["file"]))
            if not file.is_absolute():  # datasets written before format 4 hold full paths
                if base is None:
                    continue
                file = base / file
            by_file.setdefault(str(file), {})[(t.get("line"), str(t["id"]))] = k
    conv = np.asarray(ds.calls["conv"])
    if not conv.any():  # no subagent: nothing to read (a Mooncake or Bailian corpus)
        return out
    slices = ds.trace_slices()
    for file, wanted in by_file.items():
        if not Path(file).is_file():
            continue
        try:
            for rec in iter_records(file):
                k = wanted.get((rec.line, rec.trace.id if rec.trace else None))
                if k is None:
                    continue
                counts = np.bincount(conv[slices[k]], minlength=len(rec.trace.subagents) + 1)
                subs = rec.trace.subagents
                if len(counts) != len(subs) + 1 or any(
                    counts[s.conv] != len(s.calls) for s in subs
                ):
                    continue
                for s in subs:
                    out[(k, s.conv)] = s.background
        except (OSError, WekaError):
            continue
    return out


def _session_chains(deps: list[set[int]], conv: np.ndarray, inner: np.ndarray, a: int) -> None:
    """Each call of a trace of sessions waits for its session's previous one (`inner` order)
    where that one comes earlier in replay order (no cycle whatever the recorded times); the
    trace's calls start at index `a`."""
    walk = np.lexsort((inner, conv))
    same = (conv[walk[1:]] == conv[walk[:-1]]) & (walk[:-1] < walk[1:])
    for i, p in zip((walk[1:][same] + a).tolist(), (walk[:-1][same] + a).tolist(), strict=True):
        deps[i].add(p)


def call_dependencies(
    ds: DecodedDataset, background: dict[tuple[int, int], bool] | None = None
) -> list[tuple[int, ...]]:
    """For every call, the calls that must finish before it is sent (see the module doc).

    `background` ({(trace index, conv): bool}, e.g. from `subagent_status`) says which
    subagent entries ran in the background; entries it does not cover are judged from the
    recorded times.
    """
    return _dependencies(ds, background)[0]


def _dependencies(
    ds: DecodedDataset, background: dict[tuple[int, int], bool] | None
) -> tuple[list[tuple[int, ...]], list[SubagentEntry]]:
    background = background or {}
    entries: list[SubagentEntry] = []
    c = ds.calls
    conv, request = c["conv"], c["request"]
    t_abs = np.asarray(c["t_abs"], dtype=np.float64)
    deps: list[set[int]] = [set() for _ in range(ds.n_calls)]
    files = ds.request_files()
    for t, sl in enumerate(ds.trace_slices()):
        if files[t]:  # a file of requests: a session's requests one after another (turn
            # order), each request its own session where the file has none (Mooncake)
            if "session_roots" in ds.traces[t]:
                _session_chains(deps, np.asarray(conv[sl]), np.asarray(c["inner"][sl]), sl.start)
            continue
        idx = range(sl.start, sl.stop)  # the trace's replay order
        last: dict[int, int] = {}
        first: dict[int, int] = {}
        trace = int(c["trace"][sl.start]) if sl.stop > sl.start else -1
        for i in idx:
            k = int(conv[i])
            if k in last:
                deps[i].add(last[k])
            first.setdefault(k, i)
            last[k] = i
        parents = sorted((i for i in idx if conv[i] == 0), key=lambda i: (int(request[i]), i))
        parent_requests = [int(request[i]) for i in parents]
        for k, end in last.items():
            if k == 0:
                continue
            entry = int(request[first[k]])
            after = np.searchsorted(parent_requests, entry, side="right")
            if after < len(parents):  # the parent's next call after the entry
                nxt = parents[after]
                if (trace, k) in background:
                    blocking, source = not background[(trace, k)], "trace_file"
                else:  # the parent's next call was recorded after the subagent's last start
                    blocking = t_abs[nxt] >= max(t_abs[j] for j in idx if conv[j] == k)
                    source = "recorded_times"
                if blocking:
                    deps[nxt].add(end)  # the parent waits for the subagent
                entries.append(SubagentEntry(trace, k, blocking, source))
            else:  # no parent call after it: nothing waits
                entries.append(SubagentEntry(trace, k, False, "no_later_parent_call"))
            if after > 0:  # the parent call that launched it
                deps[first[k]].add(parents[after - 1])
        for i in idx:  # only earlier calls of the replay order: never a cycle
            deps[i] = {d for d in deps[i] if d < i}
    return [tuple(sorted(d)) for d in deps], entries


@dataclass(frozen=True)
class SubagentEntry:
    trace: int
    conv: int
    blocking: bool  # the parent's next call waits for its last call
    source: str  # trace_file | recorded_times | no_later_parent_call


@dataclass
class Plan:
    order: np.ndarray  # kept call indices in timeline order
    start_s: np.ndarray  # per call (all calls), seconds from the first kept start
    max_tokens: np.ndarray  # per call
    keep: np.ndarray  # per call
    deps: list[tuple[int, ...]]  # per call
    dropped_traces: list[int]
    subagents: list[SubagentEntry]


def build_plan(
    ds: DecodedDataset,
    *,
    arrival: Arrival = Arrival(),
    time_scale: float = 1.0,
    max_context: int | None = None,
    drop: DropPolicy = "calls",
    max_tokens_cap: int = 16,
    background: dict[tuple[int, int], bool] | None = None,
) -> Plan:
    max_tokens = max_tokens_for(ds, max_tokens_cap)
    keep, dropped_traces = context_cap(ds, max_tokens, max_context, drop)
    start = call_start_times(ds, arrival, time_scale)
    if keep.any():
        start = start - start[keep].min()
    kept = np.flatnonzero(keep)
    order = kept[np.lexsort((kept, start[kept]))]
    deps, subagents = _dependencies(ds, background)
    return Plan(order, start, max_tokens, keep, deps, dropped_traces, subagents)


# ------------------------------------------------------------------------------------ prediction


class PrefixPredictor:
    """An unbounded prefix cache over chained B-token block keys, filled in send order."""

    def __init__(self, block_size: int = 32):
        if block_size <= 0:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.owner: dict[bytes, int] = {}  # block key -> the call that first sent it

    def keys(self, tokens: np.ndarray) -> list[bytes]:
        b = self.block_size
        data = np.ascontiguousarray(tokens, dtype="<i4")
        keys, prev = [], b""
        for k in range(data.size // b):
            prev = hashlib.blake2b(prev + data[k * b : (k + 1) * b].tobytes(), digest_size=16)
            prev = prev.digest()
            keys.append(prev)
        return keys

    def send(self, call: int, tokens: np.ndarray) -> tuple[int, int, list[bytes]]:
        """(predicted cached tokens, uncapped leading hit blocks, the call's keys); adds its
        blocks to the cache."""
        keys = self.keys(tokens)
        hits = 0
        while hits < len(keys) and keys[hits] in self.owner:
            hits += 1
        for key in keys[hits:]:
            self.owner.setdefault(key, call)
        usable = max(int(tokens.size) - 1, 0) // self.block_size
        return self.block_size * min(hits, usable), hits, keys

    def withdraw(self, call: int, keys: list[bytes]) -> None:
        """The server never prefilled `call` (it rejected it): forget the blocks it added."""
        for key in keys:
            if self.owner.get(key) == call:
                del self.owner[key]


class PoolPredictor:
    """vLLM's block pool (`block_pool.BlockPool`) fed with the calls of a live run: a call
    starts when it is sent (or, when the pool has no room for it, once earlier calls have freed
    enough blocks, as vLLM's scheduler makes it wait) and finishes when its answer arrives."""

    def __init__(self, num_gpu_blocks: int, block_size: int):
        self.pool = BlockPool(num_gpu_blocks, block_size)
        self.hits: dict[int, int] = {}  # call -> predicted hit blocks (capped)
        self._waiting: dict[int, tuple[list[bytes], int]] = {}  # in send order

    def send(self, call: int, keys: list[bytes], prompt_tokens: int) -> None:
        self._waiting[call] = (keys, int(prompt_tokens))
        self._admit()

    def finish(self, call: int, generated_tokens: int) -> None:
        if call in self._waiting:  # answered while the pool had no room: no allocation
            keys, n = self._waiting.pop(call)
            self.hits[call] = self.pool.leading_hits(keys, n)
        elif call in self.pool.running:
            self.pool.finish(call, generated_tokens)
        self._admit()

    def _admit(self) -> None:
        while self._waiting:
            call, (keys, n) = next(iter(self._waiting.items()))
            hits = self.pool.start(call, keys, n)
            if hits is None:
                if self.pool.running:
                    return  # waits for blocks to be freed
                hits = self.pool.leading_hits(keys, n)  # larger than the pool: not cached
            del self._waiting[call]
            self.hits[call] = hits


def in_flight_with(rec: LiveCall, recs: list[LiveCall]) -> LiveCall | None:
    """The call that was in flight together with `rec` and sent nearest to it, if any."""
    if rec.sent_s is None:
        return None
    end = rec.finished_s if rec.finished_s is not None else np.inf
    best = None
    for o in recs:
        if o.index == rec.index or o.sent_s is None:
            continue
        o_end = o.finished_s if o.finished_s is not None else np.inf
        if o.sent_s < end and rec.sent_s < o_end:
            if best is None or abs(o.sent_s - rec.sent_s) < abs(best.sent_s - rec.sent_s):
                best = o
    return best


def explain(
    rec: LiveCall,
    keys: list[bytes],
    predictor: PrefixPredictor,
    finished: dict,
    concurrent: LiveCall | None = None,
) -> tuple[str, int | None]:
    """Why a call's measured cached tokens differ from the prediction: (a key of EXPLANATIONS,
    the call it names). `concurrent`: with a bounded prediction, a call in flight together."""
    b = predictor.block_size
    measured, predicted = int(rec.cached_tokens), int(rec.predicted_cached_tokens)
    if measured % b:
        return "block_size_mismatch", None
    if measured > predicted:
        if rec.attempts > 1:
            return "retried", None
        if concurrent is not None and measured <= (rec.unbounded_cached_tokens or 0):
            return "concurrent_allocation", concurrent.index
        return "warm_server_cache", None
    for key in keys[measured // b : predicted // b]:
        src = predictor.owner.get(key)
        if src is not None and src != rec.index and finished.get(src, np.inf) > rec.sent_s:
            return "in_flight_prefix", src
    if concurrent is not None:
        return "concurrent_allocation", concurrent.index
    return "evicted", None


def reordered(
    recs: list[LiveCall], keys: dict[int, list[bytes]], predictor: PrefixPredictor, finished: dict
) -> set[int]:
    """Calls whose mismatch is a swap: a call with more hits than predicted (first attempt)
    whose extra blocks another call in flight at the same time also sent, and that other call
    when it got fewer hits than predicted for want of this call's blocks. Such calls reach the
    server in either order; a cache reset before the run rules out a warm cache."""
    b = predictor.block_size

    def in_flight_together(i: LiveCall, j: LiveCall) -> bool:
        if i.sent_s is None or j.sent_s is None:
            return False
        return j.sent_s < finished.get(i.index, np.inf) and i.sent_s < finished.get(j.index, np.inf)

    out: dict[int, int] = {}  # call -> the call it swapped with
    for r in recs:
        if r.cached_tokens is None or r.cached_tokens <= r.predicted_cached_tokens:
            continue
        if r.attempts > 1 or r.cached_tokens % b:
            continue
        extra = set(keys.get(r.index, [])[r.predicted_cached_tokens // b : r.cached_tokens // b])
        for other in recs:
            if other.index == r.index or not in_flight_together(r, other):
                continue
            if extra & set(keys.get(other.index, [])):
                out.setdefault(r.index, other.index)
                lost = other.cached_tokens is not None and (
                    other.cached_tokens < other.predicted_cached_tokens
                )
                missed = keys.get(other.index, [])[
                    (other.cached_tokens or 0) // b : (other.predicted_cached_tokens or 0) // b
                ]
                if lost and any(predictor.owner.get(k) == r.index for k in missed):
                    out.setdefault(other.index, r.index)
    return out


def _percentiles(values: list[float]) -> Percentiles:
    if not values:
        return Percentiles(count=0, p50=None, p90=None, p99=None)
    p = np.percentile(np.asarray(values, dtype=np.float64), [50, 90, 99])
    return Percentiles(count=len(values), p50=float(p[0]), p90=float(p[1]), p99=float(p[2]))


# ------------------------------------------------------------------------------------ the run


class _Fatal(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class _Retryable(Exception):
    def __init__(self, message: str, http_status: int):
        super().__init__(message)
        self.http_status = http_status


@dataclass
class Reply:
    """What one attempt got back."""

    http_status: int
    usage: dict | None = None
    ttft_s: float | None = None
    error: str | None = None


def base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _error_message(body: bytes) -> str:
    try:
        obj = json.loads(body)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        msg = err.get("message") if isinstance(err, dict) else None
        return str(msg or obj)[:300]
    except ValueError:
        return body[:300].decode("utf-8", "replace").strip() or "(empty body)"


def served_context_window(models: httpx.Response, model: str) -> int | None:
    """The model's context window as `/v1/models` states it (vLLM: `max_model_len`), or None."""
    try:
        entries = models.json().get("data", [])
    except (ValueError, AttributeError):
        return None
    for m in entries if isinstance(entries, list) else []:
        if isinstance(m, dict) and m.get("id") == model:
            n = m.get("max_model_len")
            return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
    return None


class LiveReplay:
    """One live replay run. `run()` is the coroutine; results accumulate in `records`."""

    def __init__(
        self,
        ds: DecodedDataset,
        options: LiveOptions,
        *,
        progress: Callable[[LiveCall], None] | None = None,
    ):
        self.ds, self.options = ds, options
        self.url, self.model = base_url(options.url), options.model
        arrival = options.arrival_for(ds)
        recorded = set(LiveSettings.model_fields) - {
            "arrival",
            "max_context_source",
            "kv_blocks",
            "kv_blocks_source",
        }
        self.settings = LiveSettings(
            **options.model_dump(include=recorded),
            arrival={
                "mode": arrival.mode,
                "interval_s": arrival.interval_s,
                "rate_per_s": arrival.rate_per_s,
                "seed": arrival.seed,
            },
            max_context_source="option" if options.max_context is not None else None,
            kv_blocks=options.kv_blocks or None,
            kv_blocks_source="option" if options.kv_blocks else None,
        )
        self.retry_backoff_s = options.retry_backoff_s
        self.progress = progress
        self._plan_args = dict(
            arrival=arrival,
            time_scale=options.time_scale,
            drop=options.drop,
            max_tokens_cap=options.max_tokens_cap,
            background=subagent_status(ds) if options.subagent_status_from_files else None,
        )
        self.predictor = PrefixPredictor(options.block_size)
        self.bounded: PoolPredictor | None = None  # set in the preflight, once the size is known
        self._counters: list[ServerCache] = []  # the server's /metrics before and after
        c = ds.calls
        self.records: list[LiveCall] = [
            LiveCall(
                index=i,
                trace=str(ds.traces[int(c["trace"][i])]["id"]),
                conv=int(c["conv"][i]),
                request=int(c["request"][i]),
                inner=int(c["inner"][i]),
                role=ROLES[int(c["role"][i])],
                tokens_in=int(c["tokens_in"][i]),
                max_tokens=0,
            )
            for i in range(ds.n_calls)
        ]
        self._replan(options.max_context)
        self._keys: dict[int, list[bytes]] = {}
        self._finished: dict[int, float] = {}  # call -> seconds from the start
        self.sent = 0
        self._stopping = False
        self.cache_reset: bool | None = None
        self.stopped: Literal["finished", "error", "cancelled"] = "finished"
        self.error: str | None = None
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._t0_wall = time.perf_counter()
        self._t0: float | None = None

    def _replan(self, max_context: int | None) -> None:
        """The plan for a context window (None: no cap); calls over it are dropped."""
        self.plan = build_plan(self.ds, max_context=max_context, **self._plan_args)
        for i, rec in enumerate(self.records):
            keep = bool(self.plan.keep[i])
            rec.max_tokens = int(self.plan.max_tokens[i])
            rec.status = "not_sent" if keep else "dropped"
            rec.scheduled_s = float(self.plan.start_s[i]) if keep else None

    def _check_something_to_send(self) -> None:
        """A run whose context window drops every call would send nothing and prove nothing:
        a fatal error saying why and what to change, instead of an empty success."""
        n = self.ds.n_calls
        if not n or self.plan.keep.any():
            return
        window, source = self.settings.max_context, self.settings.max_context_source
        need = np.asarray(self.ds.calls["tokens_in"], dtype=np.int64) + self.plan.max_tokens
        where = "the server's" if source == "server" else "--max-context"
        fit = int(np.count_nonzero(need <= window))
        if fit:  # --drop traces: every trace has a call over the window
            raise _Fatal(
                f"nothing to send: every trace has a call over the context window ({where} "
                f"{window:,} tokens) and --drop traces drops whole traces; --drop calls would "
                f"send the {fit:,} calls that fit"
            )
        raise _Fatal(
            f"nothing to send: all {n:,} calls are over the context window ({where} {window:,} "
            f"tokens; a call needs its prompt plus max_tokens, the shortest {int(need.min()):,}"
            "); serve a longer context (vLLM --max-model-len, scripts/vllm-cpu-server start "
            "--max-model-len N), lower --max-tokens-cap, or replay shorter calls"
        )

    # ---- result ----------------------------------------------------------------------------
    def result(self) -> LiveResult:
        recs = self.records
        ok = [r for r in recs if r.status == "ok"]
        with_cached = [r for r in ok if r.cached_tokens is not None]
        b = self.predictor.block_size
        if self.bounded is not None:
            for r in recs:
                if r.index in self.bounded.hits:
                    r.predicted_cached_tokens = b * self.bounded.hits[r.index]
        swapped = reordered(with_cached, self._keys, self.predictor, self._finished)
        diverged: LiveCall | None = None  # the first call concurrency put off the prediction
        for r in sorted(with_cached, key=lambda r: r.send_order):
            if r.cached_tokens != r.predicted_cached_tokens and r.explanation is None:
                if r.index in swapped:
                    r.explanation, r.related_call = "reordered", swapped[r.index]
                    continue
                concurrent = in_flight_with(r, recs) if self.bounded is not None else None
                r.explanation, r.related_call = explain(
                    r, self._keys.get(r.index, []), self.predictor, self._finished, concurrent
                )
                if r.explanation == "evicted" and diverged is not None:
                    # alone on the server, but its cache no longer holds what the prediction's
                    # pool holds since a concurrent call changed what was evicted
                    r.explanation, r.related_call = "diverged_earlier", diverged.index
            if (
                self.bounded is not None
                and diverged is None
                and r.explanation
                in (
                    "concurrent_allocation",
                    "reordered",
                )
            ):
                diverged = r
        mismatched = [r for r in with_cached if r.cached_tokens != r.predicted_cached_tokens]
        by_reason: dict[str, int] = {}
        for r in mismatched:
            by_reason[r.explanation] = by_reason.get(r.explanation, 0) + 1
        count = {s: sum(r.status == s for r in recs) for s in ("error", "cancelled", "not_sent")}
        planned = int(self.plan.keep.sum())
        totals = LiveTotals(
            calls=len(recs),
            planned=planned,
            sent=self.sent,
            ok=len(ok),
            errors=count["error"],
            cancelled=count["cancelled"],
            not_sent=count["not_sent"],
            dropped_calls=len(recs) - planned,
            dropped_traces=len(self.plan.dropped_traces),
            prompt_tokens=sum(r.prompt_tokens or 0 for r in ok),
            cached_tokens=sum(r.cached_tokens for r in with_cached),
            predicted_cached_tokens=sum(r.predicted_cached_tokens for r in with_cached),
            calls_without_cached_tokens=len(ok) - len(with_cached),
            unbounded_predicted_cached_tokens=sum(
                r.unbounded_cached_tokens or 0 for r in with_cached
            ),
            calls_evicted=sum(
                (r.predicted_cached_tokens or 0) < (r.unbounded_cached_tokens or 0)
                for r in with_cached
            ),
            server_prefix_cache_queries=self._counter_delta("prefix_cache_queries"),
            server_prefix_cache_hits=self._counter_delta("prefix_cache_hits"),
            prompt_tokens_sent=sum(r.tokens_in for r in ok),
            predicted_blocks_evicted=(
                self.bounded.pool.evicted if self.bounded is not None else None
            ),
            matched_calls=len(with_cached) - len(mismatched),
            mismatched_calls=len(mismatched),
            mismatches_by_explanation=by_reason,
            latency_s=_percentiles([r.latency_s for r in ok if r.latency_s is not None]),
            ttft_s=_percentiles([r.ttft_s for r in ok if r.ttft_s is not None]),
        )
        complete = self.stopped == "finished" and count["not_sent"] + count["cancelled"] == 0
        return LiveResult(
            url=self.url,
            model=self.model,
            dataset=str(self.ds.path) if self.ds.path is not None else None,
            settings=self.settings,
            started_at=self.started_at,
            wall_s=round(time.perf_counter() - self._t0_wall, 3),
            complete=complete,
            stopped=self.stopped,
            error=self.error,
            cache_reset=self.cache_reset,
            prediction="vllm_block_pool" if self.bounded is not None else "unbounded",
            subagents=self._subagent_summary(),
            totals=totals,
            calls=recs,
        )

    def _counter_delta(self, name: str) -> int | None:
        if len(self._counters) < 2:
            return None
        before, after = (getattr(c, name) for c in self._counters)
        return None if before is None or after is None else int(round(after - before))

    async def _server_cache(self, client: httpx.AsyncClient) -> ServerCache | None:
        """What the server's /metrics says of its cache, or None (no such page)."""
        try:
            r = await client.get(f"{self.url}/metrics", timeout=10.0)
            return parse_metrics(r.text) if r.status_code == 200 else None
        except (httpx.TransportError, ValueError):
            return None

    def _subagent_summary(self) -> dict[str, int]:
        entries = self.plan.subagents
        out = {
            "entries": len(entries),
            "blocking": sum(e.blocking for e in entries),
            "background": sum(not e.blocking for e in entries),
        }
        for e in entries:
            out[f"status_from_{e.source}"] = out.get(f"status_from_{e.source}", 0) + 1
        return out

    # ---- the run ---------------------------------------------------------------------------
    async def run(self, client: httpx.AsyncClient | None = None) -> None:
        """Replay everything; raises LiveReplayError on a fatal failure (records kept)."""
        own = client is None
        if own:
            limits = httpx.Limits(max_connections=self.settings.concurrency + 2)
            # asyncio.timeout bounds each attempt; the client's own read timeout is a backstop
            timeout = httpx.Timeout(self.settings.timeout_s + 5.0, connect=10.0)
            client = httpx.AsyncClient(timeout=timeout, limits=limits)
        try:
            await self._preflight(client)
            self._check_something_to_send()
            self._t0 = asyncio.get_running_loop().time()
            self._done = {int(i): asyncio.Event() for i in self.plan.order}
            self._sem = asyncio.Semaphore(self.settings.concurrency)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._dispatch(tg, client))
            except* _Fatal as group:
                raise _Fatal(group.exceptions[0].message) from None
            if self._counters:
                after = await self._server_cache(client)
                if after is not None:
                    self._counters.append(after)
        except asyncio.CancelledError:
            self._stopping = True
            self.stopped, self.error = "cancelled", "cancelled (interrupted)"
            raise
        except _Fatal as exc:
            self.stopped, self.error = "error", exc.message
            raise LiveReplayError(exc.message) from None
        finally:
            if own:
                await client.aclose()

    async def _preflight(self, client: httpx.AsyncClient) -> None:
        try:
            r = await client.get(f"{self.url}/v1/models", timeout=10.0)
        except httpx.TransportError as exc:
            raise _Fatal(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
        if r.status_code == 200:
            try:
                served = [m.get("id") for m in r.json().get("data", [])]
            except (ValueError, AttributeError):
                served = []
            if served and self.model not in served:
                raise _Fatal(
                    f"{self.url} does not serve model {self.model!r} (it serves: "
                    f"{', '.join(map(str, served))})"
                )
            window = served_context_window(r, self.model)
            if self.settings.max_context is None and window is not None:
                # over-long calls are dropped and counted, not sent to fail with HTTP 400
                self.settings.max_context, self.settings.max_context_source = window, "server"
                self._replan(window)
        if self.settings.reset_cache:
            try:
                r = await client.post(f"{self.url}/reset_prefix_cache", timeout=30.0)
                self.cache_reset = r.status_code == 200 and bool(r.json().get("success", True))
            except (httpx.TransportError, ValueError, AttributeError):
                self.cache_reset = False
        cache = await self._server_cache(client)
        if cache is not None:
            self._counters.append(cache)
            if self.options.kv_blocks is None and cache.num_gpu_blocks:
                self.settings.kv_blocks, self.settings.kv_blocks_source = (
                    cache.num_gpu_blocks,
                    "server",
                )
        if self.settings.kv_blocks:
            self.bounded = PoolPredictor(self.settings.kv_blocks, self.settings.block_size)

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self._t0

    async def _dispatch(self, tg: asyncio.TaskGroup, client: httpx.AsyncClient) -> None:
        for i in self.plan.order:
            i = int(i)
            delay = float(self.plan.start_s[i]) - self._now()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(self._call(i, client))

    async def _call(self, i: int, client: httpx.AsyncClient) -> None:
        rec = self.records[i]
        try:
            for d in self.plan.deps[i]:
                if d in self._done:
                    await self._done[d].wait()
            async with self._sem:
                if self._stopping:  # a fatal error elsewhere: send nothing more
                    return
                rec.sent_s = round(self._now(), 6)
                rec.send_order = self.sent
                self.sent += 1
                tokens = self.ds.expand_call(i)
                rec.predicted_cached_tokens, rec.predicted_hit_blocks, keys = self.predictor.send(
                    i, tokens
                )
                rec.unbounded_cached_tokens = rec.predicted_cached_tokens
                self._keys[i] = keys
                if self.bounded is not None:
                    self.bounded.send(i, keys, int(tokens.size))
                await self._send(i, rec, tokens, client)
                if self.bounded is not None:  # what the server freed once it answered
                    self.bounded.finish(i, rec.completion_tokens or 1)
        except asyncio.CancelledError:
            if rec.status == "not_sent" and rec.sent_s is not None:
                rec.status, rec.error = "cancelled", "cancelled while in flight"
            raise
        finally:
            self._finished[i] = self._now()
            if rec.sent_s is not None:
                rec.finished_s = round(self._finished[i], 6)
            self._done[i].set()
            if self.progress is not None and rec.status not in ("not_sent", "cancelled"):
                self.progress(rec)

    async def _send(self, i: int, rec: LiveCall, tokens: np.ndarray, client) -> None:
        body = {
            "model": self.model,
            "prompt": tokens.tolist(),
            "max_tokens": rec.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        retries = self.settings.retries
        for attempt in range(retries + 1):
            rec.attempts = attempt + 1
            started = self._now()
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    reply = await self._attempt(client, body, started)
            except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout):
                rec.status, rec.error = "error", f"timeout after {self.settings.timeout_s:g} s"
                rec.latency_s = round(self._now() - started, 6)
                return
            except (httpx.TransportError, _Retryable) as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if attempt < retries:
                    await asyncio.sleep(self.retry_backoff_s * 2**attempt)
                    continue
                rec.status, rec.error = "error", why
                if isinstance(exc, _Retryable):  # 5xx after the retries: this call only
                    rec.http_status = exc.http_status
                    rec.error = str(exc)
                    return
                done = sum(r.status == "ok" for r in self.records)
                self._stopping = True
                raise _Fatal(
                    f"the server at {self.url} went away: {why} (after {self.sent} of "
                    f"{int(self.plan.keep.sum())} calls sent, {done} answered)"
                ) from None
            rec.http_status = reply.http_status
            rec.latency_s = round(self._now() - started, 6)
            if reply.http_status == 404:
                rec.status, rec.error = "error", f"HTTP 404: {reply.error}"
                self.predictor.withdraw(i, self._keys[i])
                self._stopping = True
                raise _Fatal(
                    f"{self.url}/v1/completions answered 404 for model {self.model!r}: "
                    f"{reply.error}"
                )
            if reply.http_status >= 400 or reply.error:
                rec.status = "error"
                rec.error = f"HTTP {reply.http_status}: {reply.error}"
                if 400 <= reply.http_status < 500:
                    self.predictor.withdraw(i, self._keys[i])
                return
            usage = reply.usage or {}
            rec.ttft_s = None if reply.ttft_s is None else round(reply.ttft_s, 6)
            rec.prompt_tokens = usage.get("prompt_tokens")
            rec.completion_tokens = usage.get("completion_tokens")
            details = usage.get("prompt_tokens_details") or {}
            rec.cached_tokens = details.get("cached_tokens")
            rec.status = "ok"
            return

    async def _attempt(self, client: httpx.AsyncClient, body: dict, started: float) -> Reply:
        async with client.stream("POST", f"{self.url}/v1/completions", json=body) as r:
            if r.status_code >= 500:
                msg = _error_message(await r.aread())
                raise _Retryable(f"HTTP {r.status_code}: {msg}", r.status_code)
            if r.status_code >= 400:
                return Reply(r.status_code, error=_error_message(await r.aread()))
            reply = Reply(r.status_code)
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    obj = json.loads(payload)
                except ValueError:
                    continue
                if obj.get("error"):
                    reply.error = _error_message(payload.encode())
                    return reply
                if reply.ttft_s is None and obj.get("choices"):
                    reply.ttft_s = self._now() - started
                if obj.get("usage"):
                    reply.usage = obj["usage"]
            if reply.usage is None:
                reply.error = "no usage in the stream (the server ignored stream_options)"
            return reply


# ------------------------------------------------------------------------------------ entry point


def write_result(result: LiveResult, path: Path | str) -> Path:
    """Write the result JSON atomically (aside, then rename)."""
    path = Path(path)
    with atomic_write(path) as fh:
        fh.write(result.model_dump_json(indent=2).encode())
    return path


def answered_calls(report, ds, max_context) -> Callable[[LiveCall], None]:
    """A `run_live_replay` progress callback: `report("replay-live", answered, total, "calls")`,
    total being every call unless `max_context` may drop some (then unknown)."""
    total = ds.n_calls if max_context is None else None
    answered = 0

    def on_call(_rec: LiveCall) -> None:
        nonlocal answered
        answered += 1
        report("replay-live", answered, total, "calls")

    return on_call


def run_live_replay(
    ds: DecodedDataset | Path | str,
    options: LiveOptions,
    *,
    out_path: Path | str,
    progress: Callable[[LiveCall], None] | None = None,
) -> LiveResult:
    """Replay `ds` against the server `options.url`; write the result to `out_path` and return it.

    On a fatal failure the result so far is written, then `LiveReplayError` (carrying it) is
    raised; on Ctrl-C it is written and KeyboardInterrupt propagates.
    """
    if not isinstance(ds, DecodedDataset):
        ds = open_dataset(ds)
    replay = LiveReplay(ds, options, progress=progress)
    try:
        asyncio.run(replay.run())
    except LiveReplayError as exc:
        result = replay.result()
        write_result(result, out_path)
        raise LiveReplayError(f"{exc} (partial result: {out_path})", result) from None
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        replay.stopped, replay.error = "cancelled", "cancelled (interrupted)"
        write_result(replay.result(), out_path)
        exc.partial_result = out_path  # what the caller may report (an earlier Ctrl-C: none)
        raise
    result = replay.result()
    if result.prediction == "vllm_block_pool":
        from weka_assets.replay.live_capacity import live_capacity_curve

        # the keys the run computed for every call it sent: no prompt expanded twice
        curve = live_capacity_curve(ds, result, sent_keys=replay._keys)
        result.capacity_curve = curve.model_dump(mode="json")
    write_result(result, out_path)
    return result
