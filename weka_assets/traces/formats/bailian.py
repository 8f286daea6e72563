"""Bailian traces (../shared/docs/formats.md, "Bailian traces"; Alibaba's
`qwen-bailian-usagetraces-anon`): one request per JSONL line,
`{"chat_id": 159, "parent_chat_id": 55, "timestamp": 61.114, "input_length": 521,
"output_length": 132, "type": "text", "turn": 2, "hash_ids": [...]}`.

Requests of one conversation are spread over the file, interleaved with other sessions';
`parent_chat_id` links each to the request before it (-1 for a session's first). Each
session becomes one `Trace`, so the per-trace figures are per-session figures:
- a session is identified by the root of its parent chain (the request whose
  `parent_chat_id` is -1): trace id `<file name>:session-<root chat_id>`, its line the root's;
- its requests are its parent calls, in `turn` order (file order within a turn, where a
  request was branched twice), `t` = `timestamp` in seconds on the file's clock (one clock
  for the whole corpus, like Mooncake's, whose timestamps are ms);
- one hash-id namespace for the whole file (scope `global`), 16 tokens per block unless the
  registry or `--block-size` says otherwise; `hash_ids` cover the whole input, history
  included (cumulative).

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
schema error of its own (`missing_field`, `schema`, `negative_number`, `not_positive`).

Memory: sessions interleave, so grouping needs every line's links, never its hash ids. A
first pass reads each line's `chat_id`, `parent_chat_id` and `turn` with msgspec (the rest of
the line is skipped, not built) into int64 arrays with its line number, offset and length
(48 bytes a request, a few times that while the links are resolved); the links are resolved
with numpy (sorts and pointer jumping: O(n log n), no Python loop per request). Then each
session is one record holding the (line, offset, length) of its lines, which a worker reads
(`RawRecord.lines`) and parses: one session's requests at a time, each request's ids parsed
only past what it shares with the previous one (`_fast_calls`). Measured on a Bailian-shaped
file of 174 MB (180,000 requests, 44,622 sessions): the first pass and grouping take 1.8 s and
about 40 MB. A `.jsonl.gz` file is
decompressed once into an unnamed temporary file (its uncompressed size on disk, gone when the
read ends), and its sessions' bytes are read from there.
"""

import gzip
import heapq
import os
import tempfile
import zlib
from array import array
from collections.abc import Collection, Iterator
from contextlib import nullcontext
from pathlib import PurePath
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson
from pydantic import Field, ValidationError

from weka_assets.errors import Location, TraceError
from weka_assets.traces.fastparse import _Conversation, _Unparsable
from weka_assets.traces.formats import FileRead, TraceFormat, request_object
from weka_assets.traces.records import (
    MAX_TRACE_BYTES_ENV,
    RawRecord,
    Record,
    SizeLimits,
    check_sizes,
    unreadable,
)
from weka_assets.traces.schema import (
    INT64_MAX,
    Call,
    HashIds,
    NonNegFloat,
    NonNegInt,
    PositiveInt,
    Trace,
    _shared,
    _Strict,
    _validation_error,
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


class BailianRequestModel(_Strict):
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
    return f"{PurePath(file).name}:session-{root_chat_id}"


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
    key_name = "bailian"  # a Bailian file also reads as Mooncake: keep their keys apart

    def looks_like(self, keys: Collection[str]) -> bool:
        return (
            "requests" not in keys
            and "chat_id" in keys
            and "parent_chat_id" in keys
            and "turn" in keys
        )

    def file_records(self, read: FileRead) -> Iterator[RawRecord]:
        return _file_records(read)

    def parse(self, raw: RawRecord, fmt, limits: SizeLimits) -> Record:
        if raw.spans is None:
            return _parse_loose(raw, fmt)
        return _parse_session(raw, fmt, limits)


# --------------------------------------------------------------------------- first pass


class _Index:
    """Every line of one file as the first pass found it (int64 arrays, file order)."""

    def __init__(self):
        self.linked = [array("q") for _ in range(6)]  # line, offset, length, chat, parent, turn
        self.loose = array("q")  # line, offset, length: a line whose links did not read
        self.errors: list[tuple[int, TraceError]] = []  # (line, error): too long, truncated

    def add(self, lineno: int, offset: int, data: bytes) -> None:
        try:
            link = _LINK.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            self.loose.extend((lineno, offset, len(data)))
            return
        for a, v in zip(
            self.linked,
            (lineno, offset, len(data), link.chat_id, link.parent_chat_id, link.turn),
            strict=True,
        ):
            a.append(v)

    def arrays(self) -> list[np.ndarray]:
        return [
            np.frombuffer(a, np.int64) if len(a) else np.empty(0, np.int64) for a in self.linked
        ]


def _scan(fh, index: _Index, name: str, limit: int, sink=None) -> None:
    """Read every line of `fh` into `index`; with `sink` (a decompressed .gz), each line is
    also written there and offsets are `sink`'s."""
    lineno = pos = 0
    while True:
        data = fh.readline(limit + 1)
        if not data:
            return
        lineno += 1
        if len(data) > limit and not data.endswith(b"\n"):  # skipped in chunks, never held
            skipped = len(data)
            while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                skipped += len(rest)
            skipped += len(rest)
            err = TraceError(
                "trace_too_large",
                f"one line may hold {MAX_TRACE_BYTES_ENV}={limit} bytes of JSON; "
                "this is a line longer than that",
                Location(name, lineno),
            )
            index.errors.append((lineno, err))
            if sink is None:
                pos += skipped
            continue
        if sink is not None:
            sink.write(data)
        if data.strip():
            index.add(lineno, pos, data)
        pos += len(data)


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


# --------------------------------------------------------------------------- records


def _file_records(read: FileRead) -> Iterator[RawRecord]:
    f, name = read.path, str(read.path)
    index = _Index()
    truncated = None
    gz = f.name.endswith(".gz")
    with tempfile.TemporaryFile() if gz else nullcontext() as sink:
        try:
            if gz:
                with open(f, "rb") as compressed, gzip.open(compressed, "rb") as fh:
                    _scan(fh, index, name, read.max_bytes, sink)
                sink.flush()
            else:
                with open(f, "rb") as fh:
                    _scan(fh, index, name, read.max_bytes)
        except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as exc:
            truncated = TraceError(
                "truncated_file", f"cannot read to the end: {exc}", Location(name)
            )
        yield from _records(read, index, name, sink if gz else None, truncated)


def _records(read: FileRead, index: _Index, name: str, sink, truncated) -> Iterator[RawRecord]:
    line, offset, length, chat, parent, turn = index.arrays()
    (order, starts), errors = _group(line, chat, parent, turn, name)
    errors += index.errors
    loose = np.frombuffer(index.loose, np.int64).reshape(-1, 3) if len(index.loose) else None
    # every record in the order of its first line: sessions by their first request's line
    # (already in that order), merged with the few others
    others: list[tuple[int, int, object]] = [(ln, 0, err) for ln, err in errors]
    if loose is not None:
        others += [(int(r[0]), 1, r) for r in loose]
    others.sort(key=lambda x: (x[0], x[1]))
    bounds = np.append(starts, order.size)
    firsts = line[order[starts]]

    def sessions():
        for k in range(starts.size):
            yield int(firsts[k]), 2, k

    done = read.base
    common = dict(total=read.total, fmt=read.fmt, limits=read.limits)
    for first, kind, item in heapq.merge(others, sessions(), key=lambda x: (x[0], x[1])):
        if kind == 0:
            yield RawRecord(name, first, error=item, done=done, **common)
            continue
        if kind == 1:
            spans = None
            rows = np.asarray(item).reshape(1, 3)
        else:
            sel = order[bounds[item] : bounds[item + 1]]
            rows = np.stack((line[sel], offset[sel], length[sel]), axis=1)
            spans = rows
        done += int(rows[:, 2].sum())
        rec = RawRecord(name, first, done=done, **common)
        if kind == 1:
            rec.offset, rec.length = int(rows[0, 1]), int(rows[0, 2])
        rec.spans = spans
        if sink is not None or not read.lazy:
            _load(rec, rows, sink)
        yield rec
    if truncated is not None:
        yield RawRecord(name, None, error=truncated, done=done, **common)


def _load(rec: RawRecord, rows: np.ndarray, sink) -> None:
    """Read a record's lines into `data` (from `sink`, a decompressed .gz, or its file);
    a grouped record's offsets then index `data`."""
    if sink is not None:
        fd, fh = sink.fileno(), None
    else:
        fh = open(rec.file, "rb")
        fd = fh.fileno()
    try:
        pieces = [os.pread(fd, int(n), int(off)) for _, off, n in rows.tolist()]
    finally:
        if fh is not None:
            fh.close()
    rec.data = b"".join(pieces)
    if rec.spans is not None:
        starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
        rec.spans = np.stack((rows[:, 0], starts, rows[:, 2]), axis=1)
    else:
        rec.offset, rec.length = 0, len(rec.data)


# --------------------------------------------------------------------------- parsing


def _request(data: bytes, file: str, line: int, where: Location, fmt) -> tuple[Any, int]:
    """One line validated: (its model, how many null-valued keys were dropped)."""
    try:
        obj = orjson.loads(data)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        raise TraceError("invalid_json", str(exc), Location(file, line)) from None
    nulls = request_object(obj, "Bailian", file, line, fmt.origin if fmt is not None else "")
    try:
        return BailianRequestModel.model_validate(obj), nulls
    except ValidationError as exc:
        err = _validation_error(exc, where, obj)
        raise TraceError(err.rule, err.message, where) from None


def _parse_loose(raw: RawRecord, fmt) -> Record:
    """A line whose links the first pass could not read: its schema error."""
    file, line = raw.file, raw.line
    try:
        data = raw.load()
    except OSError as exc:
        return unreadable(raw, exc)
    try:
        _request(data, file, line, Location(file, line), fmt)
    except TraceError as exc:
        return Record(file, line, error=exc, declared_scope=BAILIAN_SCOPE)
    err = TraceError(
        "schema",
        "chat_id, parent_chat_id and turn must be 64-bit integers (chat_id >= 0, "
        "parent_chat_id >= -1, turn >= 1)",
        Location(file, line),
    )
    return Record(file, line, error=err, declared_scope=BAILIAN_SCOPE)


class _FastRequest(msgspec.Struct):
    """One line as the fast path reads it: typed scalars, the ids as raw JSON text."""

    chat_id: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    timestamp: Annotated[float, msgspec.Meta(ge=0)]
    input_length: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    output_length: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    hash_ids: msgspec.Raw


_FAST = msgspec.json.Decoder(_FastRequest)


def _fast_calls(lines: list[tuple[int, bytes]], file: str) -> tuple[list[Call], str] | None:
    """A session's calls read as the Weka fast path reads a conversation (`fastparse`): each
    request's ids parsed only past what it shares with the previous request's, the scalars
    typed by msgspec. None when anything is off (a null, a type, a bound): the strict path
    then names the line and the rule. The links were read by the first pass."""
    conv = _Conversation()
    calls = []
    try:
        for k, (_, data) in enumerate(lines):
            r = _FAST.decode(data)
            ids = conv.parse(bytes(r.hash_ids))
            if not np.isfinite(r.timestamp):
                return None
            c = Call(0, k, -1, r.timestamp, r.input_length, r.output_length, ids, False, k)
            c.shared = conv.shared
            calls.append(c)
            if k == 0:
                root = r.chat_id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, _Unparsable):
        return None
    return calls, session_id(file, root) if calls else None


def _parse_session(raw: RawRecord, fmt, limits: SizeLimits) -> Record:
    file, line = raw.file, raw.line
    try:
        lines = raw.lines()
    except OSError as exc:
        return unreadable(raw, exc)
    fast = _fast_calls(lines, file)
    calls, trace_id = fast if fast is not None else ([], None)
    dropped = 0
    try:
        for k, (ln, data) in enumerate(lines if fast is None else ()):
            where = Location(file, ln, trace_id, k)
            model, nulls = _request(data, file, ln, where, fmt)
            dropped += nulls
            if k == 0:
                trace_id = session_id(file, model.chat_id)
            c = Call(
                0,
                k,
                -1,
                model.timestamp,
                model.input_length,
                model.output_length,
                model.hash_ids,
                False,
            )
            c.doc_index = k
            calls.append(c)
        if fast is None:
            _shared(calls, {})
        trace = Trace(
            id=trace_id,
            file=file,
            line=line,
            block_size=fmt.block_size or BAILIAN_BLOCK_SIZE,
            scope=BAILIAN_SCOPE,
            models=[],
            tool_tokens=0,
            system_tokens=0,
            parent_calls=list(calls),
            subagents=[],
            calls=calls,
        )
        try:
            check_sizes(trace, limits, BAILIAN_FIELDS)
        except TraceError as exc:  # named at the request's own line
            loc = exc.location
            if loc.request is not None:
                loc = Location(file, lines[loc.request][0], trace_id, loc.request)
            raise TraceError(exc.rule, exc.message, loc) from None
    except TraceError as exc:
        return Record(file, line, error=exc, declared_scope=BAILIAN_SCOPE)
    return Record(file, line, trace=trace, declared_scope=BAILIAN_SCOPE, null_keys_dropped=dropped)
