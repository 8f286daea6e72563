"""A corpus parsed once: its traces in a compact binary file beside the scope report.

The scope pass reads and parses every trace; each decode after it (one per tokenizer, one more
per manifest bump and backfill) would read and parse the same JSON again, and parsing is the
largest part of a decode's CPU. So the scope pass can keep what it parsed (`keep_parse`), and
a decode reads that instead (`read_parsed`). Within a conversation a call's hash_ids almost
always extend the previous call's, so a frame keeps only the ids each call adds: on the
391-trace benchmark corpus, 22 MB holding 2.6 M ids, against 337 MB of JSON holding 72 M.
A file of requests (Mooncake, Bailian: one `RequestTable`) is kept as its columns, written
and read back as raw arrays (`encode_table`), so its decode reads them instead of running
Arrow's JSON reader over the file again.

The file is a cache of the parse, never a source of truth:
- a trace rebuilt from it equals the one parsing gives, field by field (tested on every real
  trace and synthetic profile), so the decoded bytes are the same either way;
- it is written only when every record parsed (a corpus with a bad record is decoded from
  the JSON, where the error is reported as before), aside and renamed into place;
- its trailer names the corpus digest, the corpus format and a fingerprint of the parser's code
  and limits, and holds the sha256 of its frames; a reader that finds any of them different
  (or the file damaged) says why and the decode parses the JSON instead.

Layout (`FORMAT`): frames, each a header (its length, and the corpus bytes read when its record
was and in all, for progress: three little-endian 64-bit integers) and a msgpack `_Frame`, or
for a table of requests `TABLE` (0xc1, a byte msgpack never writes first), the 8-byte length
of a msgpack `_TableHead`, the head, and its columns' bytes, each padded to 8; then the
msgpack `_Trailer`, its 8-byte length, and `MAGIC`. Every field is written in a fixed
byte order, so the same corpus gives the same bytes on every machine (file names are kept
relative to the corpus, never as this machine's paths).
"""

import hashlib
import logging
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from weka_assets.atomic import atomic_write
from weka_assets.traces import fastparse, formats, reader, records, requests, schema
from weka_assets.traces.reader import CorpusFormat, RawRecord, Record, parse_record
from weka_assets.traces.requests import RequestTable
from weka_assets.traces.schema import Call, Subagent, Trace
from weka_assets.traces.scope import AnalysedRecord, analyse_parsed

log = logging.getLogger(__name__)

FORMAT = "weka-assets parsed corpus 2"
MAGIC = b"WKPARSE1"
_LEN = struct.Struct("<Q")
_HEAD = struct.Struct("<QQQ")  # a frame's length, and the corpus bytes done and in all then

# one row per call, in the trace's document order
CALL_DTYPE = np.dtype(
    [
        ("conv", "<i8"),
        ("request", "<i8"),
        ("inner", "<i8"),
        ("t", "<f8"),
        ("tokens_in", "<i8"),
        ("tokens_out", "<i8"),
        ("streaming", "u1"),
        ("doc_index", "<i8"),
        ("shared", "<i8"),
        ("t_abs", "<f8"),
        ("kept", "<i8"),  # leading ids taken from the conversation's previous call
        ("added", "<i8"),  # ids after them, stored in the frame
    ]
)


class _Subagent(msgspec.Struct, array_like=True):
    conv: int
    request: int
    agent_id: str
    subagent_type: str
    status: str
    t: float
    tool_tokens: int
    system_tokens: int


_SUBAGENT = _Subagent.__struct_fields__


class _Frame(msgspec.Struct, array_like=True):
    id: str
    file: str  # relative to the corpus folder (a single-file corpus: its name)
    line: int | None
    block_size: int
    scope: str | None
    models: list[str]
    tool_tokens: int
    system_tokens: int
    subagents: list[_Subagent]
    calls: bytes  # CALL_DTYPE rows
    ids: bytes  # the added ids of every call, int64 little-endian


class _Trailer(msgspec.Struct):
    format: str
    fingerprint: str
    corpus_digest: str
    traces: int
    total_bytes: int
    frames_sha256: str


def corpus_root(path: Path | str) -> Path:
    """What a trace's file is kept relative to: the corpus folder, or a file's own folder."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def fingerprint(fmt: CorpusFormat) -> str:
    """Everything a parse depends on besides the corpus bytes: the parser's code (the reader
    and every format module), its limits, the corpus format (and the block size its traces
    are read at when they do not state one: None for a format whose traces state their own,
    Weka's, whatever block size the registry gives, so the scope pass, which reads the corpus
    with the registry's format, and the decode, which reads it with the gate's, agree)."""
    h = hashlib.sha256(FORMAT.encode())
    modules = [Path(m.__file__) for m in (reader, records, requests, fastparse, schema)]
    modules += sorted(Path(formats.__file__).parent.glob("*.py"))
    for module in modules:
        h.update(module.read_bytes())
    block_size = fmt.corpus_block_size if fmt.format is not None else fmt.block_size
    limits = (records.max_trace_bytes(), *records.SizeLimits.read(), fmt.format, block_size)
    h.update(repr(limits).encode())
    return h.hexdigest()


def encode_trace(trace: Trace, root: Path) -> bytes:
    """One parsed trace as a frame: every call's scalars, and only the ids it adds to its
    conversation's previous call."""
    rows = np.zeros(len(trace.calls), CALL_DTYPE)
    added, last = [], {}
    for k, c in enumerate(trace.calls):
        prev = last.get(c.conv)
        kept = c.shared
        if prev is None or kept > prev.size or not np.array_equal(prev[:kept], c.ids[:kept]):
            kept = 0
        added.append(c.ids[kept:])
        last[c.conv] = c.ids
        rows[k] = (
            c.conv, c.request, c.inner, c.t, c.tokens_in, c.tokens_out, c.streaming,
            c.doc_index, c.shared, c.t_abs, kept, c.ids.size - kept,
        )  # fmt: skip
    ids = np.concatenate(added) if added else np.empty(0, np.int64)
    frame = _Frame(
        id=trace.id,
        file=Path(trace.file).relative_to(root).as_posix(),
        line=trace.line,
        block_size=trace.block_size,
        scope=trace.scope,
        models=list(trace.models),
        tool_tokens=trace.tool_tokens,
        system_tokens=trace.system_tokens,
        subagents=[_Subagent(**{k: getattr(s, k) for k in _SUBAGENT}) for s in trace.subagents],
        calls=rows.tobytes(),
        ids=ids.astype("<i8", copy=False).tobytes(),
    )
    return msgspec.msgpack.encode(frame)


_FRAME = msgspec.msgpack.Decoder(_Frame)


def decode_frame(data: bytes, root: Path) -> Trace:
    """The trace a frame holds, rebuilt as parsing builds it."""
    f = _FRAME.decode(data)
    ids = np.frombuffer(f.ids, "<i8")
    subagents = [Subagent(**{k: getattr(s, k) for k in _SUBAGENT}, calls=[]) for s in f.subagents]
    parent: list[Call] = []
    calls: list[Call] = []
    last: dict[int, np.ndarray] = {}
    pos = 0
    rows = np.frombuffer(f.calls, CALL_DTYPE).tolist()
    for conv, request, inner, t, t_in, t_out, streaming, doc, shared, t_abs, kept, n in rows:
        new = ids[pos : pos + n]
        pos += n
        call_ids = np.concatenate((last[conv][:kept], new)) if kept else new.astype(np.int64)
        last[conv] = call_ids
        call = Call(
            conv, request, inner, t, t_in, t_out, call_ids, bool(streaming), doc, shared, t_abs
        )
        calls.append(call)
        (subagents[conv - 1].calls if conv else parent).append(call)
    return Trace(
        id=f.id,
        file=str(root / f.file),
        line=f.line,
        block_size=f.block_size,
        scope=f.scope,
        models=f.models,
        tool_tokens=f.tool_tokens,
        system_tokens=f.system_tokens,
        parent_calls=parent,
        subagents=subagents,
        calls=calls,
    )


TABLE = b"\xc1"  # the first byte of a table's frame (msgpack never begins a value with it)
_TABLE_COLUMNS = (
    "line", "t", "tokens_in", "tokens_out", "offsets", "ids", "session", "position",
    "session_roots",
)  # fmt: skip


class _TableHead(msgspec.Struct, array_like=True):
    id: str
    file: str  # relative to the corpus folder, as a trace's
    block_size: int
    scope: str
    null_keys_dropped: int
    columns: list[tuple[str, str, int]]  # (name, dtype, length) of each column present, in order


def _pad(n: int) -> int:
    return -n % 8


def encode_table(table: RequestTable, nulls: int, root: Path) -> list:
    """A table of requests as a frame: `TABLE`, its head's length, the head, then every column
    as raw little-endian bytes (each padded to 8), as a list of buffers written one after the
    other (the columns are not copied; a production file's ids are hundreds of MB)."""
    arrays = [
        (n, np.ascontiguousarray(a, a.dtype.newbyteorder("<")))  # no copy on little-endian
        for n in _TABLE_COLUMNS
        if (a := getattr(table, n)) is not None
    ]
    head = msgspec.msgpack.encode(
        _TableHead(
            id=table.id,
            file=Path(table.file).relative_to(root).as_posix(),
            block_size=table.block_size,
            scope=table.scope,
            null_keys_dropped=nulls,
            columns=[(n, a.dtype.str, int(a.size)) for n, a in arrays],
        )
    )
    out = [TABLE + _LEN.pack(len(head)) + head + bytes(_pad(1 + _LEN.size + len(head)))]
    for _, a in arrays:
        out.append(memoryview(a).cast("B"))
        if pad := _pad(a.nbytes):
            out.append(bytes(pad))
    return out


def decode_table(data, root: Path) -> Record:
    """The record a table's frame holds, rebuilt as parsing builds it (its columns are views
    of `data`, which must be writable to give writable arrays, as parsing's are)."""
    (n,) = _LEN.unpack_from(data, 1)
    start = 1 + _LEN.size
    head = msgspec.msgpack.decode(memoryview(data)[start : start + n], type=_TableHead)
    pos = start + n + _pad(start + n)
    columns = {}
    for name, dtype, length in head.columns:
        a = np.frombuffer(data, dtype=np.dtype(dtype), count=length, offset=pos)
        columns[name] = a
        pos += a.nbytes + _pad(a.nbytes)
    table = RequestTable(
        id=head.id, file=str(root / head.file), block_size=head.block_size, scope=head.scope,
        **columns,
    )  # fmt: skip
    return Record(
        table.file, None, trace=table, declared_scope=table.scope,
        null_keys_dropped=head.null_keys_dropped,
    )  # fmt: skip


def frame_size(frame) -> int:
    return len(frame) if isinstance(frame, bytes) else sum(memoryview(b).nbytes for b in frame)


@dataclass(slots=True)
class ParsedRecord:
    """One trace's frame, read from a parsed corpus: what a decoding worker gets instead of a
    `RawRecord` (a few percent of its bytes), and turns into the same `Record`."""

    data: bytes | bytearray
    root: str
    done: int = 0
    total: int = 0

    def record(self) -> Record:
        if self.data[:1] == TABLE:
            return decode_table(self.data, Path(self.root))
        trace = decode_frame(self.data, Path(self.root))
        return Record(trace.file, trace.line, trace=trace)


def analyse_and_encode(raw: RawRecord, root: str) -> tuple[AnalysedRecord, bytes | list | None]:
    """Worker task of a scope pass that keeps its parse: the record's analysis, and its frame
    (None when it did not parse). A table's frame refers to its columns (a file of requests is
    read in process, never by a worker: nothing is pickled)."""
    rec = parse_record(raw)
    frame = None
    if isinstance(rec.trace, Trace):  # encoded before the analysis, exactly as parsed
        frame = encode_trace(rec.trace, Path(root))
    elif isinstance(rec.trace, RequestTable):
        frame = encode_table(rec.trace, rec.null_keys_dropped, Path(root))
    return analyse_parsed(rec, raw), frame


class _Incomplete(Exception):
    """A record did not parse: the parse is not kept."""


@dataclass
class ParsedWriter:
    """What `keep_parse` collects: `tee` passes a scope pass's analyses through and writes
    their frames; `written` tells, after the block, whether the file was renamed into place."""

    fh: object
    traces: int = 0
    total: int = 0
    complete: bool = True
    written: bool = False

    def __post_init__(self):
        self.hash = hashlib.sha256()

    def tee(self, results: Iterator[tuple[AnalysedRecord, bytes | list | None]]):
        for analysed, frame in results:
            self.complete = self.complete and frame is not None
            if self.complete:
                head = _HEAD.pack(frame_size(frame), analysed.done, analysed.total)
                for part in (head, frame) if isinstance(frame, bytes) else (head, *frame):
                    self.fh.write(part)
                    self.hash.update(part)
                self.traces += 1
            self.total = analysed.total
            yield analysed


@contextmanager
def keep_parse(path: Path | str, corpus_digest: "str | Callable[[], str]", fmt: CorpusFormat):
    """Write the frames a scope pass `tee`s through the yielded `ParsedWriter` to `path`
    (aside, renamed into place on a clean exit when every record parsed; else nothing).
    `corpus_digest` may be a function, asked at the end (a digest computed beside the pass)."""
    try:
        with atomic_write(path) as fh:
            writer = ParsedWriter(fh)
            yield writer
            if not writer.complete:
                raise _Incomplete
            trailer = msgspec.msgpack.encode(
                _Trailer(
                    format=FORMAT,
                    fingerprint=fingerprint(fmt),
                    corpus_digest=corpus_digest
                    if isinstance(corpus_digest, str)
                    else corpus_digest(),
                    traces=writer.traces,
                    total_bytes=writer.total,
                    frames_sha256=writer.hash.hexdigest(),
                )
            )
            fh.write(trailer + _LEN.pack(len(trailer)) + MAGIC)
        writer.written = True
    except _Incomplete:
        log.info("a record did not parse: the parse of %s is not kept", path)


def read_parsed(
    path: Path | str, corpus_digest: str, fmt: CorpusFormat, corpus: Path | str
) -> Iterator[ParsedRecord] | None:
    """The frames of a parsed corpus as decoding records (read one at a time), or None, with
    the reason logged, when the file is not this corpus's current parse: another corpus
    digest, format or parser, or damaged bytes. `corpus`: where this machine keeps the
    corpus (trace file names are relative to it). Everything is checked before the first
    record is given, so a caller falls back before it has decoded anything."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        log.warning("not using the parsed corpus %s: %s; parsing the JSON", path, exc)
        return None
    try:
        end, why = _check(fh, corpus_digest, fmt)
    except (OSError, msgspec.DecodeError, ValueError) as exc:
        end, why = 0, f"unreadable ({exc})"
    if why:
        fh.close()
        log.warning("not using the parsed corpus %s: %s; parsing the JSON", path, why)
        return None
    return _records(fh, end, str(corpus_root(corpus)))


def _check(fh, digest: str, fmt: CorpusFormat) -> tuple[int, str]:
    """(where the frames end, "") when the file is this corpus's current parse, intact; else
    (0, why not)."""
    size = os.fstat(fh.fileno()).st_size
    tail = _LEN.size + len(MAGIC)
    if size < tail:
        return 0, "no trailer (not a parsed corpus, or cut short)"
    fh.seek(size - tail)
    last = fh.read(tail)
    if last[_LEN.size :] != MAGIC:
        return 0, "no trailer (not a parsed corpus, or cut short)"
    (n,) = _LEN.unpack_from(last)
    end = size - tail - n
    if end < 0:
        return 0, "no trailer (cut short)"
    fh.seek(end)
    trailer = msgspec.msgpack.decode(fh.read(n), type=_Trailer)
    expected = {"format": FORMAT, "corpus_digest": digest, "fingerprint": fingerprint(fmt)}
    for name, want in expected.items():
        if getattr(trailer, name) != want:
            return 0, f"written for another {name.replace('_', ' ')}"
    fh.seek(0)
    h, left, frames, pos = hashlib.sha256(), end, 0, 0
    while left:
        chunk = fh.read(min(left, 1 << 23))
        if not chunk:
            return 0, "cut short"
        h.update(chunk)
        left -= len(chunk)
    if h.hexdigest() != trailer.frames_sha256:
        return 0, "its frames do not match their sha256 (damaged)"
    fh.seek(0)
    while pos < end:  # the frame lengths add up to the frames' region, in the trailer's number
        head = fh.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return 0, "a frame runs past the end"
        pos += _HEAD.size + _HEAD.unpack(head)[0]
        fh.seek(pos)
        frames += 1
    if pos != end or frames != trailer.traces:
        return 0, f"{frames} frames where the trailer says {trailer.traces}"
    return end, ""


def _records(fh, end: int, root: str) -> Iterator[ParsedRecord]:
    with fh:
        fh.seek(0)
        pos = 0
        while pos < end:
            size, done, total = _HEAD.unpack(fh.read(_HEAD.size))
            data = bytearray(size)  # writable: a table's columns are views of it
            fh.readinto(data)
            yield ParsedRecord(data, root, done, total)
            pos += _HEAD.size + size
