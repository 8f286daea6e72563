"""A file of one-request-per-line records read as columns: production-scale Mooncake traces.

A production trace holds millions of requests of a few dozen block ids each. Read one Python
object per request (a `Trace`, its `Call`, a per-trace report row) and the per-request cost is
the whole cost: when each line was a trace, a scope pass took about 330 us a request in
process and peaked at 599 MB for 96,000 requests (measured). So a format whose file is one
namespace on one clock (Mooncake) reads the file as one trace whose requests are columns:
`RequestTable`, a few numpy arrays (the ids of every request in one flat array with offsets),
built by `read_request_table` a chunk of lines at a time with Arrow's JSON reader (pyarrow:
C++, on its own threads, straight into arrays; 1.7x msgspec's speed on the 286 MB benchmark
trace, which builds a Python object per request and per id). The scope analysis
(`traces.scope.analyse_requests`) and the decoder (`decoding.decoder.decode_requests`) work on
the columns, never one request at a time.

Errors lose nothing: a chunk that Arrow's reader or a vectorised check rejects is read
again line by line with the format's own per-line parse, which names file, line, trace,
request and rule exactly as before. Every error of the file is reported, not only the first.
"""

from __future__ import annotations

import ctypes
import gzip
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from weka_assets.errors import Location, TraceError
from weka_assets.traces.records import (
    MAX_PROMPT_TOKENS_ENV,
    MAX_TRACE_BYTES_ENV,
    RawRecord,
    Record,
    SizeLimits,
)

CHUNK = 8 << 20  # bytes of lines decoded at once


@dataclass(slots=True)
class RequestTable:
    """Every request of one file as columns, in file order (blank lines skipped).

    `request` k is the k-th request of the file, on line `line[k]`; its ids are
    `ids[offsets[k]:offsets[k + 1]]`. `t` is on the file's clock in seconds."""

    id: str  # the trace id: the file's name
    file: str
    block_size: int
    scope: str  # the declared hash_id_scope every request shares (global)
    line: np.ndarray  # int64 [m]
    t: np.ndarray  # float64 [m], seconds
    tokens_in: np.ndarray  # int64 [m]
    tokens_out: np.ndarray  # int64 [m]
    offsets: np.ndarray  # int64 [m + 1]
    ids: np.ndarray  # int64 [offsets[-1]]
    errors: list[TraceError] = field(default_factory=list)  # every bad line's, in file order
    # sessions (Bailian: requests linked into conversations), None where each request is a
    # conversation of its own (Mooncake): request k is call `position[k]` (turn order, from 0)
    # of session `session[k]`; sessions are numbered in the order of their first line, and
    # `session_roots[s]` is session s's first request's chat_id, which names it
    session: np.ndarray | None = None  # int64 [m]
    position: np.ndarray | None = None  # int64 [m]
    session_roots: np.ndarray | None = None  # int64 [sessions]

    @property
    def line_of_trace(self) -> None:  # a trace of a whole file has no line of its own
        return None

    @property
    def location(self) -> Location:
        return Location(file=self.file, line=None, trace=self.id)

    @property
    def n_requests(self) -> int:
        return int(self.t.size)

    @property
    def n_ids(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def subagents(self) -> list:  # a file of requests has no subagents
        return []

    def request_location(self, k: int) -> Location:
        return Location(self.file, int(self.line[k]), self.id, int(k))

    def session_name(self, s: int) -> str:
        """Session `s`'s id: `<file name>:session-<root chat_id>` (unique in the corpus, the
        same on every machine)."""
        return session_name(self.id, int(self.session_roots[s]))


def session_name(trace: str, root: int) -> str:
    """The id of the session whose first request has chat_id `root`, in the file `trace`."""
    return f"{trace}:session-{root}"


def trace_id(file: str) -> str:
    """A file's trace id: its name (unique in a one-file corpus, the same on every machine)."""
    return PurePath(file).name


def whole_file_record(read) -> Iterator[RawRecord]:
    """A `TraceFormat.file_records` of formats whose file is one trace read as columns: one
    record per file (`read` is a `formats.FileRead`); the format's `parse` reads it."""
    size = read.path.stat().st_size
    yield RawRecord(
        str(read.path),
        None,
        done=read.base + size,
        total=read.total,
        length=size,
        fmt=read.fmt,
        limits=read.limits,
    )


def block_size_error(file: str, bs: int, limits: SizeLimits, field: str) -> TraceError | None:
    """The error of a corpus block size longer than the longest prompt allowed (every id would
    claim more tokens than a prompt may hold), or None. `field` names the block size."""
    if bs <= limits.prompt_tokens:
        return None
    return TraceError(
        "block_size_too_large",
        f"{field}={bs}: a block longer than the longest prompt allowed, "
        f"{MAX_PROMPT_TOKENS_ENV}={limits.prompt_tokens}",
        Location(file, None, trace_id(file)),
    )


def table_record(table: RequestTable, nulls: int) -> Record:
    """The record of a file read as columns: the table, or its first error and the rest."""
    if table.errors:
        return Record(
            table.file,
            None,
            error=table.errors[0],
            more_errors=table.errors[1:],
            declared_scope=table.scope,
            null_keys_dropped=nulls,
        )
    return Record(
        table.file, None, trace=table, declared_scope=table.scope, null_keys_dropped=nulls
    )


def _lines_of(path: Path, limit: int) -> Iterator[tuple[int, bytes | None, list[int]]]:
    """(first line number, bytes of whole lines, their lengths' ends) chunk by chunk; an overlong
    line comes alone as (its number, None, [])."""
    opener: Callable = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        carry = b""
        lineno = 1  # number of the first line in `carry`
        skipping = False
        while True:
            block = fh.read(CHUNK)
            if not block:
                break
            if skipping:  # inside an overlong line: drop up to its end
                nl = block.find(b"\n")
                if nl < 0:
                    continue
                block, skipping = block[nl + 1 :], False
                lineno += 1
            buf = carry + block
            ends = np.flatnonzero(np.frombuffer(buf, np.uint8) == 10)
            start = 0
            if ends.size:
                lengths = np.diff(np.concatenate([[-1], ends]))
                if int(lengths.max()) > limit:  # one line too long: split around it
                    for e in ends.tolist():
                        if e + 1 - start > limit:
                            yield lineno, None, []
                        else:
                            yield lineno, buf[start : e + 1], [e + 1 - start]
                        lineno += 1
                        start = e + 1
                else:
                    last = int(ends[-1]) + 1
                    yield lineno, buf[:last], (ends + 1).tolist()
                    lineno += int(ends.size)
                    start = last
            carry = buf[start:]
            if len(carry) > limit:
                yield lineno, None, []
                carry, skipping = b"", True
        if carry and not skipping:
            yield lineno, carry if carry.endswith(b"\n") else carry + b"\n", [len(carry) + 1]


def _split(buf: bytes, ends: list[int]) -> list[bytes]:
    out, start = [], 0
    for e in ends:
        out.append(buf[start:e])
        start = e
    return out


def read_request_table(
    path: str,
    block_size: int,
    scope: str,
    limits: SizeLimits,
    max_bytes: int,
    parse_line: Callable[[bytes, int], tuple[tuple, int]],
    t_divisor: float = 1000.0,
    extra: tuple[tuple[str, int], ...] = (),
    salvage: Callable[[bytes], tuple[int, ...] | None] | None = None,
) -> tuple[RequestTable, int, dict[str, np.ndarray]]:
    """The file's requests as columns, the number of null-valued keys dropped, and the
    `extra` integer fields' columns.

    `parse_line(bytes, line)` is the format's own per-line parse: it returns the request as
    (t in seconds, tokens_in, tokens_out, ids array, *extra fields) and its dropped nulls, or
    raises the `TraceError` of its first broken rule (sizes included); it reads every chunk
    that the fast decoder does not accept whole, which reads t as `timestamp / t_divisor`.
    `extra`: (field, least value) of further 64-bit integer fields (Bailian's links); a chunk
    with a value below its least goes to `parse_line`. `salvage(bytes)` reads the `extra`
    fields of a line `parse_line` rejected, where they read (None where not): they come back
    as `salvaged`, int64 [k, 1 + len(extra)] of (line, *fields), so that a bad line's links
    still count (its children are not reported as orphans)."""
    file = str(path)
    tid = trace_id(file)
    lines, ts, tin, tout, counts, id_parts = [], [], [], [], [], []
    extras: list[list[np.ndarray]] = [[] for _ in extra]
    salvaged: list[tuple[int, ...]] = []
    errors: list[TraceError] = []
    nulls = 0
    request = 0

    def slow(first: int, chunk: bytes, ends: list[int]) -> None:
        nonlocal nulls, request
        rows_t, rows_in, rows_out, rows_n, rows_line, rows_ids = [], [], [], [], [], []
        rows_extra: list[list[int]] = [[] for _ in extra]
        for k, data in enumerate(_split(chunk, ends)):
            if not data.strip():
                continue
            try:
                (t, n_in, n_out, ids, *more), dropped = parse_line(data, first + k)
            except TraceError as exc:  # located again: the trace is the file, not the line
                where = Location(file, first + k, tid, request, exc.location.inner)
                errors.append(TraceError(exc.rule, exc.message, where))
                request += 1
                kept = salvage(data) if salvage is not None else None
                if kept is not None:
                    salvaged.append((first + k, *kept))
                continue
            nulls += dropped
            rows_t.append(t)
            rows_in.append(n_in)
            rows_out.append(n_out)
            rows_n.append(ids.size)
            rows_line.append(first + k)
            rows_ids.append(ids)
            for column, v in zip(rows_extra, more, strict=True):
                column.append(v)
            request += 1
        for parts, column in zip(extras, rows_extra, strict=True):
            parts.append(np.asarray(column, np.int64))
        ts.append(np.asarray(rows_t, np.float64))
        tin.append(np.asarray(rows_in, np.int64))
        tout.append(np.asarray(rows_out, np.int64))
        counts.append(np.asarray(rows_n, np.int64))
        lines.append(np.asarray(rows_line, np.int64))
        id_parts.extend(rows_ids)

    try:
        for first, chunk, ends in _lines_of(Path(path), max_bytes):
            if chunk is None:
                errors.append(
                    TraceError(
                        "trace_too_large",
                        f"one request may hold {MAX_TRACE_BYTES_ENV}={max_bytes} bytes of "
                        "JSON; this is a line longer than that",
                        Location(file, first, tid, request),
                    )
                )
                request += 1
                continue
            fast = _fast_chunk(chunk, ends, first, block_size, limits, t_divisor, extra)
            _release_arrow_memory()
            if fast is None:
                slow(first, chunk, ends)
                continue
            every = (lines, ts, tin, tout, counts, id_parts, *extras)
            for parts, column in zip(every, fast, strict=True):
                parts.append(column)
            request += int(fast[1].size)
    except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as exc:
        errors.append(
            TraceError("truncated_file", f"cannot read to the end: {exc}", Location(file))
        )

    def cat(parts, dtype):
        out = np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)
        parts.clear()
        return out

    n_ids = cat(counts, np.int64)
    offsets = np.zeros(n_ids.size + 1, np.int64)
    np.cumsum(n_ids, out=offsets[1:])
    table = RequestTable(
        id=tid,
        file=file,
        block_size=block_size,
        scope=scope,
        line=cat(lines, np.int64),
        t=cat(ts, np.float64),
        tokens_in=cat(tin, np.int64),
        tokens_out=cat(tout, np.int64),
        offsets=offsets,
        ids=cat(id_parts, np.int64),
        errors=errors,
    )
    more = {name: cat(parts, np.int64) for (name, _), parts in zip(extra, extras, strict=True)}
    if extra:
        more["salvaged"] = np.array(salvaged, np.int64).reshape(-1, 1 + len(extra))
    _trim_heap()
    return table, nulls, more


def _fast_chunk(
    chunk: bytes,
    ends: list[int],
    first: int,
    bs: int,
    limits: SizeLimits,
    t_divisor: float,
    extra: tuple[tuple[str, int], ...] = (),
):
    """A chunk of lines decoded whole into columns by Arrow's JSON reader (C++, no Python
    object per request or id), or None when any line needs the per-line parse: a type, a
    null, a missing field, a repeated key, a number past int64, a negative or non-finite
    number, a size over a limit, a blank line (whatever the per-line parse must name)."""
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        table = pj.read_json(
            pa.BufferReader(chunk), read_options=_read(), parse_options=_parse(extra)
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    m = table.num_rows
    if m != len(ends) or any(c.null_count for c in table.columns):  # blank lines, nulls
        return None
    hash_ids = table.column("hash_ids").combine_chunks()
    values = hash_ids.flatten()
    if values.null_count:
        return None
    # copies, so that Arrow's memory is given back after each chunk (`_release_arrow_memory`)
    n = np.diff(hash_ids.offsets.to_numpy()).astype(np.int64)
    ids = np.array(values.to_numpy(), dtype=np.int64)
    t = np.array(table.column("timestamp").to_numpy(), dtype=np.float64)
    n_in = np.array(table.column("input_length").to_numpy(), dtype=np.int64)
    n_out = np.array(table.column("output_length").to_numpy(), dtype=np.int64)
    more = [np.array(table.column(name).to_numpy(), dtype=np.int64) for name, _ in extra]
    del table, hash_ids, values
    if m and (
        (t < 0).any()
        or not np.isfinite(t).all()
        or (n_in < 0).any()
        or (n_out < 0).any()
        or (ids.size and ids.min() < 0)
        or _over_limits(n, n_in, n_out, bs, limits).any()
        or any((v < least).any() for v, (_, least) in zip(more, extra, strict=True))
    ):
        return None
    return (np.arange(first, first + m, dtype=np.int64), t / t_divisor, n_in, n_out, n, ids, *more)


_OPTIONS: dict = {}


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim`): the chunks'
    arrays, freed once joined, stay in the heap otherwise (260 MB of RSS after reading the
    286 MB benchmark trace, measured). Nothing where the C library has no such call."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _release_arrow_memory() -> None:
    """Give back what Arrow's allocator keeps after a chunk: its arrays are copied out or freed,
    but the allocator holds their pages (270 MB of the 286 MB benchmark trace's read, which
    peaked at 699 MB RSS without this, measured)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _read():
    """Arrow's read options: one block per chunk, parsed on Arrow's own threads."""
    if "read" not in _OPTIONS:
        import pyarrow.json as pj

        _OPTIONS["read"] = pj.ReadOptions(use_threads=True, block_size=1 << 20)
    return _OPTIONS["read"]


def _parse(extra: tuple[tuple[str, int], ...] = ()):
    """The four fields (and `extra`'s integers), typed as the schema types them; other keys
    ignored (as the per-line parse ignores them)."""
    key = ("parse", tuple(name for name, _ in extra))
    if key not in _OPTIONS:
        import pyarrow as pa
        import pyarrow.json as pj

        schema = pa.schema(
            [
                ("timestamp", pa.float64()),
                ("input_length", pa.int64()),
                ("output_length", pa.int64()),
                ("hash_ids", pa.list_(pa.int64())),
                *((name, pa.int64()) for name, _ in extra),
            ]
        )
        _OPTIONS[key] = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return _OPTIONS[key]


def _over_limits(n, n_in, n_out, bs: int, limits: SizeLimits) -> np.ndarray:
    """Requests over a size limit (`records.check_sizes`' rules, vectorised)."""
    implied = (n > 0) & ((n - 1) * bs >= limits.prompt_tokens)
    return (
        (n > limits.ids_per_call)
        | (n_in > limits.prompt_tokens)
        | implied
        | (n_out > limits.output_tokens)
    )
