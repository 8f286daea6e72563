"""Bailian traces (../shared/docs/formats.md, "Bailian traces"; Alibaba's
`qwen-bailian-usagetraces-anon`): one request per JSONL line,
`{"chat_id": 159, "parent_chat_id": 55, "timestamp": 61.114, "input_length": 521,
"output_length": 132, "type": "text", "turn": 2, "hash_ids": [...]}`.

A file is one namespace (scope `global`) on one clock, so it is read as Mooncake is: one trace
of requests held as columns (`traces.requests.RequestTable`, a chunk of lines at a time with
Arrow's JSON reader), never one Python object per request. What Bailian adds is sessions:
requests of one conversation are spread over the file, interleaved with other sessions', and
`parent_chat_id` links each to the request before it (-1 for a session's first). The links are
resolved with numpy (sorts and pointer jumping: O(n log n), no Python loop per request), and
the table records each request's session and its position there:
- a session is identified by the root of its parent chain (the request whose
  `parent_chat_id` is -1): `<file name>:session-<root chat_id>`; sessions are numbered in the
  order of their first line;
- its requests are in `turn` order (file order within a turn, where a request was branched
  twice); `t` = `timestamp` in seconds on the file's clock;
- 16 tokens per block unless the registry or `--block-size` says otherwise; `hash_ids`
  cover the whole input, history included (cumulative).
Per-session figures come from that structure: the replay's per-trace rows of a Bailian file
are its sessions, each against its own earlier requests (`replay.unbounded`), and the live
replay sends a session's requests one after another.

The links are checked at the gate, each a hard error naming file, line and rule:
- `bailian_duplicate_chat_id`: a chat_id used by an earlier line (the later line is the
  error; the earlier one keeps the id);
- `bailian_missing_parent`: a `parent_chat_id` that no line of the file has as chat_id (one
  error for the session hanging from it, at that line);
- `bailian_parent_cycle`: parent links that loop and never reach a first request (one error
  per cycle, at its earliest line, naming the chat_ids on it);
- `bailian_turn_mismatch`: a `turn` that is not its parent's turn + 1 (1 for a session's
  first request): the session's order would be wrong (one error per session, at its first
  such line).
A line whose `chat_id`, `parent_chat_id` or `turn` is missing or not an integer in range is a
schema error of its own (`missing_field`, `schema`, `negative_number`, `not_positive`); a line
with another schema error still takes part in the links where they read, so its children are
not reported as orphans. Every error of the file is reported, in line order.
"""

from collections.abc import Collection, Iterator
from pathlib import PurePath
from typing import Annotated

import msgspec
import numpy as np
import orjson
from pydantic import Field, ValidationError

from weka_assets.errors import Location, TraceError
from weka_assets.traces.formats import FileRead, TraceFormat, request_object
from weka_assets.traces.records import (
    RawRecord,
    Record,
    SizeLimits,
    check_sizes,
    max_trace_bytes,
)
from weka_assets.traces.requests import (
    RequestTable,
    block_size_error,
    read_request_table,
    session_name,
    table_record,
    whole_file_record,
)
from weka_assets.traces.schema import (
    INT64_MAX,
    Call,
    HashIds,
    NonNegFloat,
    NonNegInt,
    PositiveInt,
    StrictModel,
    Trace,
    validation_error,
)

BAILIAN_BLOCK_SIZE = 16  # tokens per block (salted SipHash blocks of 16 tokens)
BAILIAN_SCOPE = "global"  # one hash-id namespace per file
BAILIAN_FIELDS = (
    "input_length",
    "output_length",
    "the corpus's block size (registry or --block-size)",
)
RULES = (
    "bailian_duplicate_chat_id",
    "bailian_missing_parent",
    "bailian_parent_cycle",
    "bailian_turn_mismatch",
)


class BailianRequestModel(StrictModel):
    chat_id: NonNegInt
    parent_chat_id: Annotated[int, Field(ge=-1, le=INT64_MAX)]  # -1: a session's first
    timestamp: NonNegFloat  # seconds
    input_length: NonNegInt
    output_length: NonNegInt
    turn: PositiveInt
    hash_ids: HashIds


class _Link(msgspec.Struct):
    """What grouping reads of a line; every other key is skipped, never built."""

    chat_id: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    parent_chat_id: Annotated[int, msgspec.Meta(ge=-1, le=INT64_MAX)]
    turn: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]


_LINK = msgspec.json.Decoder(_Link)


def session_id(file: str, root_chat_id: int) -> str:
    """`<file name>:session-<root chat_id>`: unique in the corpus, the same on every machine."""
    return session_name(PurePath(file).name, root_chat_id)


LINKS = (("chat_id", 0), ("parent_chat_id", -1), ("turn", 1))  # (field, least value)


class BailianFormat(TraceFormat):
    name = "bailian"
    title = "Bailian"
    record_noun = "request"
    default_block_size = BAILIAN_BLOCK_SIZE
    namespace = "corpus"
    corpus_clock = True
    size_fields = BAILIAN_FIELDS
    schema_rules = RULES
    sniff_keys = ("chat_id", "parent_chat_id", "turn", "hash_ids")
    # a Bailian file also reads as Mooncake: keep their keys apart; "/requests" since a file
    # became one trace of requests with sessions (the layout changed, not the tokens)
    key_name = "bailian/requests"
    whole_files = True

    def looks_like(self, keys: Collection[str]) -> bool:
        return (
            "requests" not in keys
            and "chat_id" in keys
            and "parent_chat_id" in keys
            and "turn" in keys
        )

    def file_records(self, read: FileRead) -> Iterator[RawRecord]:
        """One record per file: the whole file is one trace; `parse` reads it."""
        return whole_file_record(read)

    def parse(self, raw: RawRecord, fmt, limits: SizeLimits) -> Record:
        return _parse_file(raw.file, fmt, limits)


# --------------------------------------------------------------------------- grouping


def _group(line, chat, parent, turn, name: str):
    """Resolve the links of the linked lines (file order). Returns (sessions, errors):
    `sessions` is (order, starts): the lines' indices sorted by session (root line), turn and
    line, and where each session starts in that order; `errors` is [(line, TraceError)]."""
    n = line.size
    errors: list[tuple[int, TraceError]] = []
    if n == 0:
        return (np.empty(0, np.int64), np.empty(0, np.int64)), errors
    # duplicates: the first line with a chat_id keeps it
    by_chat = np.argsort(chat, kind="stable")
    sc = chat[by_chat]
    later = np.concatenate(([False], sc[1:] == sc[:-1]))
    first_pos = np.maximum.accumulate(np.where(later, 0, np.arange(n)))
    for k in np.flatnonzero(later).tolist():
        i, first = int(by_chat[k]), int(by_chat[first_pos[k]])
        errors.append(
            (
                int(line[i]),
                TraceError(
                    "bailian_duplicate_chat_id",
                    f"chat_id {int(chat[i])} is already the chat_id of line {int(line[first])}",
                    Location(name, int(line[i])),
                ),
            )
        )
    keep = np.ones(n, bool)
    keep[by_chat[later]] = False
    uniq = by_chat[~later]  # lines with a unique chat_id, sorted by chat_id
    uc = chat[uniq]
    # each line's parent line (-1: a first request; -2: a parent no line has)
    at = np.minimum(np.searchsorted(uc, parent), uc.size - 1)
    found = (parent >= 0) & (uc[at] == parent)
    pidx = np.where(found, uniq[at], np.where(parent == -1, -1, -2))
    pidx[~keep] = -3  # duplicates take no part
    is_root = keep & (pidx == -1)
    missing = keep & (pidx == -2)
    # pointer jumping: up[i] ends at the first request (or missing-parent line) above i, or
    # on a cycle
    idx = np.arange(n)
    up = np.where(pidx >= 0, pidx, idx)
    for _ in range(max(1, int(np.ceil(np.log2(n))) + 1)):
        up = up[up]
    top = up
    resolved = keep & (is_root[top] | missing[top])
    # missing parents: one error per line whose parent is missing (its session is not read)
    hanging = np.bincount(top[keep & missing[top]], minlength=n)
    for i in np.flatnonzero(missing).tolist():
        more = int(hanging[i]) - 1
        errors.append(
            (
                int(line[i]),
                TraceError(
                    "bailian_missing_parent",
                    f"parent_chat_id {int(parent[i])}: no line of the file has that chat_id "
                    f"(this request and {more} after it in its session are not read)",
                    Location(name, int(line[i])),
                ),
            )
        )
    cyc = keep & ~resolved
    if cyc.any():
        errors += _cycles(np.flatnonzero(cyc), pidx, line, chat, name)
    # turns: a first request's is 1, every other request's its parent's + 1
    want = np.where(pidx >= 0, turn[np.maximum(pidx, 0)] + 1, 1)
    bad_turn = resolved & is_root[top] & (turn != want)
    bad_session = np.zeros(n, bool)
    bad_session[top[bad_turn]] = True
    first_bad = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_bad, top[bad_turn], line[bad_turn])
    for r in np.flatnonzero(bad_session).tolist():
        i = int(np.flatnonzero(bad_turn & (top == r) & (line == first_bad[r]))[0])
        parent_line = int(line[pidx[i]]) if pidx[i] >= 0 else None
        why = (
            f"its parent (chat_id {int(parent[i])}, line {parent_line}) has turn "
            f"{int(turn[pidx[i]])}"
            if parent_line is not None
            else "it is a session's first request (parent_chat_id -1)"
        )
        errors.append(
            (
                int(line[i]),
                TraceError(
                    "bailian_turn_mismatch",
                    f"turn {int(turn[i])} where {int(want[i])} is due: {why}; a request's turn "
                    "is its parent's + 1 (1 for a session's first)",
                    Location(name, int(line[i]), session_id(name, int(chat[r]))),
                ),
            )
        )
    good = resolved & is_root[top] & ~bad_session[top]
    members = np.flatnonzero(good)
    order = members[np.lexsort((line[members], turn[members], line[top[members]]))]
    roots = top[order]
    starts = (
        np.flatnonzero(np.concatenate(([True], roots[1:] != roots[:-1]))) if order.size else order
    )
    return (order, starts), errors


def _cycles(nodes: np.ndarray, pidx, line, chat, name: str) -> list[tuple[int, TraceError]]:
    """One error per cycle of parent links (a rare, broken file: a Python walk per node)."""
    cycle_of: dict[int, int] = {}  # node -> its cycle's id (the cycle's first node found)
    cycles: dict[int, list[int]] = {}
    hanging: dict[int, int] = {}
    for start in nodes.tolist():
        path, seen = [], {}
        i = start
        while i not in cycle_of and i not in seen:
            seen[i] = len(path)
            path.append(i)
            i = int(pidx[i])
        if i in cycle_of:
            cid = cycle_of[i]
        else:  # a new cycle: from i's first visit to the end of the path
            cid = i
            cycles[cid] = path[seen[i] :]
        for j in path:
            cycle_of[j] = cid
        hanging[cid] = hanging.get(cid, 0) + len(path)
    out = []
    for cid, members in cycles.items():
        members = sorted(members, key=lambda j: int(line[j]))
        first = int(line[members[0]])
        ring = " -> ".join(str(int(chat[j])) for j in members + members[:1])
        lines = ", ".join(str(int(line[j])) for j in members)
        out.append(
            (
                first,
                TraceError(
                    "bailian_parent_cycle",
                    f"parent_chat_id links form a cycle (chat_id {ring}; lines {lines}) that "
                    f"reaches no first request (parent_chat_id -1); {hanging[cid]} request(s) "
                    "on it or hanging from it are not read",
                    Location(name, first),
                ),
            )
        )
    return out


# --------------------------------------------------------------------------- the file


def _request(data: bytes, file: str, line: int, fmt) -> tuple[BailianRequestModel, int]:
    """One line validated: (its model, how many null-valued keys were dropped)."""
    where = Location(file, line)
    try:
        obj = orjson.loads(data)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        raise TraceError("invalid_json", str(exc), where) from None
    nulls = request_object(obj, "Bailian", file, line, fmt.origin if fmt is not None else "")
    try:
        return BailianRequestModel.model_validate(obj), nulls
    except ValidationError as exc:
        raise validation_error(exc, where, obj) from None


def _salvage(data: bytes) -> tuple[int, int, int] | None:
    """A rejected line's links, where they read (so its children are no orphans)."""
    try:
        link = _LINK.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return link.chat_id, link.parent_chat_id, link.turn


def _parse_file(file: str, fmt, limits: SizeLimits) -> Record:
    bs = fmt.block_size or BAILIAN_BLOCK_SIZE
    err = block_size_error(file, bs, limits, BAILIAN_FIELDS[2])
    if err is not None:
        return Record(file, None, error=err, declared_scope=BAILIAN_SCOPE)

    def parse_line(data: bytes, line: int):
        model, dropped = _request(data, file, line, fmt)
        call = Call(0, 0, -1, model.timestamp, model.input_length, model.output_length,
                    model.hash_ids, False)  # fmt: skip
        one = Trace(id=PurePath(file).name, file=file, line=line, block_size=bs,
                    scope=BAILIAN_SCOPE, models=[], tool_tokens=0, system_tokens=0,
                    parent_calls=[call], subagents=[], calls=[call])  # fmt: skip
        check_sizes(one, limits, BAILIAN_FIELDS)
        row = (model.timestamp, model.input_length, model.output_length, model.hash_ids)
        return (*row, model.chat_id, model.parent_chat_id, model.turn), dropped

    table, nulls, links = read_request_table(
        file, bs, BAILIAN_SCOPE, limits, max_trace_bytes(), parse_line, 1.0, LINKS, _salvage
    )
    _sessions(table, links)
    return table_record(table, nulls)


def _sessions(table: RequestTable, links: dict[str, np.ndarray]) -> None:
    """Resolve the links of the file's requests into `table`'s sessions, or add their errors
    to `table.errors` (in line order with the rest)."""
    bad = links["salvaged"]
    line = np.concatenate([table.line, bad[:, 0]])
    chat, parent, turn = (
        np.concatenate([links[name], bad[:, k + 1]]) for k, (name, _) in enumerate(LINKS)
    )
    (order, starts), errors = _group(line, chat, parent, turn, table.file)
    if errors or table.errors:
        table.errors = sorted(
            table.errors + [e for _, e in errors], key=lambda e: e.location.line or 0
        )
        return
    m = table.n_requests
    sizes = np.diff(np.append(starts, order.size))
    table.session = np.empty(m, np.int64)
    table.session[order] = np.repeat(np.arange(starts.size, dtype=np.int64), sizes)
    table.position = np.empty(m, np.int64)
    table.position[order] = np.arange(m, dtype=np.int64) - np.repeat(starts, sizes)
    table.session_roots = chat[order[starts]]
