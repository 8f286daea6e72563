"""Read a corpus from disk: a folder of `*.json` traces, one `.json` trace, or `.jsonl[.gz]`.

Reading streams one trace at a time (memory bounded by the largest trace) and never stops at
the first bad record: every record comes back either parsed or as a `TraceError`, so a scope
report can list all hard errors of a corpus at once.
"""

import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import msgspec
import numpy as np
import orjson
from msgspec import UNSET

from weka_assets import env
from weka_assets.errors import Location, SourceError, TraceError
from weka_assets.traces.fastparse import fast_decode
from weka_assets.traces.mooncake import (
    MOONCAKE_BLOCK_SIZE,
    MOONCAKE_SCOPE,
    looks_like_mooncake,
    parse_mooncake,
)
from weka_assets.traces.schema import Trace, declared_scope, parse_trace

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
# Limits that protect the machine; settings, read when a corpus is read.
MAX_TRACE_BYTES_ENV = "WEKA_ASSETS_MAX_TRACE_BYTES"  # one trace's JSON (default 512 MiB)
MAX_IDS_PER_CALL_ENV = "WEKA_ASSETS_MAX_IDS_PER_CALL"  # hash ids of one call (default 4M)
MAX_PROMPT_TOKENS_ENV = "WEKA_ASSETS_MAX_PROMPT_TOKENS"  # prompt tokens of one call (4 Mi)
MAX_OUTPUT_TOKENS_ENV = "WEKA_ASSETS_MAX_OUTPUT_TOKENS"  # output tokens of one call (1 Mi)


def max_trace_bytes() -> int:
    return env.get(MAX_TRACE_BYTES_ENV)


def max_ids_per_call() -> int:
    return env.get(MAX_IDS_PER_CALL_ENV)


def max_prompt_tokens() -> int:
    return env.get(MAX_PROMPT_TOKENS_ENV)


def max_output_tokens() -> int:
    return env.get(MAX_OUTPUT_TOKENS_ENV)


class SizeLimits(NamedTuple):
    """The sizes one call may declare (settings, read once per corpus read). A trace holds
    numbers that nothing backs: `in: 100000000000` is 13 bytes of JSON and 373 GiB of tokens.
    Every array the decoder, the replays, the exports and the live replay size from a call
    (its tokens, its token blocks, its generated blocks, a block's tokens) is bounded by one
    of these, because `check_sizes` rejects the trace at the gate before anything reads them.
    Rejecting is all they do: they are in no decode key, so datasets keep their keys."""

    ids_per_call: int
    prompt_tokens: int
    output_tokens: int

    @classmethod
    def read(cls) -> "SizeLimits":
        return cls(max_ids_per_call(), max_prompt_tokens(), max_output_tokens())


# what a format calls a call's prompt and output lengths and its block size (error messages)
WEKA_FIELDS = ("in", "out", "block_size")
MOONCAKE_FIELDS = (
    "input_length",
    "output_length",
    "the corpus's block size (registry or --block-size)",
)


FORMATS = ("weka", "mooncake")


@dataclass(frozen=True)
class CorpusFormat:
    """How a corpus's records are read, decided once per corpus (never per line).

    `format` None: detected from the corpus's first JSON object (`detect_format`).
    `block_size`: tokens per block of a Mooncake corpus (None: 512); Weka traces state theirs.
    `origin`: how the format was decided, for error messages (" (detected from f.jsonl:1)")."""

    format: str | None = None
    block_size: int | None = None
    origin: str = ""

    def __post_init__(self):
        if self.format not in (None, *FORMATS):
            raise ValueError(f"unknown corpus format {self.format!r} (weka or mooncake)")
        bs = self.block_size
        if bs is not None and (isinstance(bs, bool) or not isinstance(bs, int) or bs <= 0):
            raise ValueError(f"block_size must be a positive integer, got {bs!r}")

    @property
    def mooncake_block_size(self) -> int:
        return self.block_size or MOONCAKE_BLOCK_SIZE


class _Sniff(msgspec.Struct):
    """The top-level keys that tell a Mooncake request from a Weka trace."""

    requests: msgspec.Raw | msgspec.UnsetType = UNSET
    hash_ids: msgspec.Raw | msgspec.UnsetType = UNSET
    input_length: msgspec.Raw | msgspec.UnsetType = UNSET
    timestamp: msgspec.Raw | msgspec.UnsetType = UNSET
    text_input: msgspec.Raw | msgspec.UnsetType = UNSET
    messages: msgspec.Raw | msgspec.UnsetType = UNSET
    payload: msgspec.Raw | msgspec.UnsetType = UNSET


_SNIFF = msgspec.json.Decoder(_Sniff)


def detect_format(path: Path | str, fmt: CorpusFormat | None = None) -> CorpusFormat:
    """`fmt` with its format decided: as given, else from the corpus's first record that is a
    JSON object (Mooncake when it looks like a Mooncake request, else Weka)."""
    fmt = fmt or CorpusFormat()
    if fmt.format is not None:
        return fmt
    found = "weka"
    where = "no JSON object found"
    for i, raw in enumerate(iter_raw_records(path, fmt=CorpusFormat("weka"))):
        if i >= 100:
            break
        if raw.error is not None:
            continue
        try:  # the top-level keys only: a Weka trace's values are skipped, not built
            sniffed = _SNIFF.decode(raw.load())
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, OSError):
            continue
        keys = {k: True for k in _Sniff.__struct_fields__ if getattr(sniffed, k) is not UNSET}
        found = "mooncake" if looks_like_mooncake(keys) else "weka"
        where = Path(raw.file).name if raw.line is None else f"{Path(raw.file).name}:{raw.line}"
        break
    return CorpusFormat(found, fmt.block_size, f" (detected from {where})")


@dataclass(slots=True)
class Record:
    """One trace record as read: parsed, or the hard error that stopped it."""

    file: str
    line: int | None
    trace: Trace | None = None
    error: TraceError | None = None
    declared_scope: str | None = None
    null_keys_dropped: int = 0


def corpus_files(path: Path | str) -> list[Path]:
    """The files that make up a corpus, in a stable order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".json" and p.is_file())
        if not files:
            raise SourceError(f"{path}: folder holds no *.json trace files")
        return files
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.name.endswith(JSONL_SUFFIXES) or path.suffix == ".json":
        return [path]
    raise SourceError(
        f"{path}: expected a folder of *.json traces, a .json trace or a .jsonl[.gz] file"
    )


@dataclass(frozen=True, slots=True)
class FileDigest:
    name: str
    sha256: str
    bytes: int


def file_digests(path: Path | str) -> list[FileDigest]:
    out = []
    for f in corpus_files(path):
        h = hashlib.sha256()
        size = 0
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        out.append(FileDigest(f.name, h.hexdigest(), size))
    return out


def corpus_digest(digests: list[FileDigest]) -> str:
    """Content digest of a corpus: sha256 over (name, sha256, size) of every file."""
    body = orjson.dumps([[d.name, d.sha256, d.bytes] for d in digests])
    return hashlib.sha256(body).hexdigest()


@dataclass(slots=True)
class RawRecord:
    """One record's bytes as read (or the error that stopped reading), before parsing.

    `done` and `total` are bytes of the corpus read so far and in all (for progress)."""

    file: str
    line: int | None
    data: bytes | None = None
    error: TraceError | None = None
    done: int = 0
    total: int = 0
    offset: int = 0  # where the bytes are in `file`, when `data` is not loaded yet
    length: int = 0
    fmt: CorpusFormat | None = None  # the corpus's format (None: Weka)
    # `SizeLimits` read when the corpus was, as a plain tuple (it travels to a worker with
    # every record); None: read when the record is parsed
    limits: tuple[int, int, int] | None = None

    def load(self) -> bytes:
        """The record's bytes (read from `file` on first use when the record is lazy)."""
        if self.data is None:
            with open(self.file, "rb") as fh:
                self.data = os.pread(fh.fileno(), self.length, self.offset)
            if len(self.data) != self.length:
                raise OSError(f"read {len(self.data)} of {self.length} bytes (file changed?)")
        return self.data


def parse_record(raw: RawRecord) -> Record:
    """Parse one raw record: the fast path when it applies, else the strict one."""
    file, line = raw.file, raw.line
    if raw.error is not None:
        return Record(file, line, error=raw.error)
    try:
        data = raw.load()
    except OSError as exc:
        return Record(
            file,
            line,
            error=TraceError("truncated_file", f"cannot read: {exc}", Location(file, line)),
        )
    fmt = raw.fmt
    limits = SizeLimits.read() if raw.limits is None else SizeLimits(*raw.limits)
    if fmt is not None and fmt.format == "mooncake":
        return _parse_mooncake_record(raw, data, fmt, limits)
    fast = fast_decode(data)
    obj, shared = fast if fast is not None else (None, None)
    if obj is None:
        try:
            obj = orjson.loads(data)
        except (orjson.JSONDecodeError, RecursionError) as exc:
            return Record(
                file, line, error=TraceError("invalid_json", str(exc), Location(file, line))
            )
        if looks_like_mooncake(obj):  # only off the fast path, which needs `requests`
            origin = fmt.origin if fmt is not None else ""
            return Record(
                file,
                line,
                error=TraceError(
                    "format_mismatch",
                    f"a Mooncake request (no 'requests'; has {', '.join(k for k in ('timestamp', 'input_length', 'hash_ids') if k in obj)}) "
                    f"in a corpus read as Weka{origin}; one corpus holds one format",
                    Location(file, line),
                ),
            )
    scope = declared_scope(obj)
    try:
        trace, dropped = parse_trace(obj, file, line, shared)
        check_sizes(trace, limits, WEKA_FIELDS)
    except TraceError as exc:
        return Record(file, line, error=exc, declared_scope=scope)
    return Record(file, line, trace=trace, declared_scope=scope, null_keys_dropped=dropped)


def _parse_mooncake_record(
    raw: RawRecord, data: bytes, fmt: CorpusFormat, limits: SizeLimits
) -> Record:
    file, line = raw.file, raw.line
    try:
        obj = orjson.loads(data)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        return Record(file, line, error=TraceError("invalid_json", str(exc), Location(file, line)))
    try:
        trace, dropped = parse_mooncake(obj, file, line, fmt.mooncake_block_size, fmt.origin)
        check_sizes(trace, limits, MOONCAKE_FIELDS)
    except TraceError as exc:
        return Record(file, line, error=exc, declared_scope=MOONCAKE_SCOPE)
    return Record(file, line, trace=trace, declared_scope=MOONCAKE_SCOPE, null_keys_dropped=dropped)


def check_sizes(
    trace: Trace, limits: SizeLimits, fields: tuple[str, str, str] = WEKA_FIELDS
) -> None:
    """Every size a parsed trace declares within `limits`, or the `TraceError` of the first
    that is not, naming its call: the block size (`block_size_too_large`), then per call its
    hash ids (`too_many_ids`), its prompt as declared and as its ids imply it
    (`prompt_too_long`) and its output (`output_too_long`). `fields`: the format's names of
    a call's prompt and output lengths and of its block size. Python integers: nothing here
    can overflow."""
    bs = trace.block_size
    n_in, n_out, n_bs = fields
    if bs > limits.prompt_tokens:
        raise TraceError(
            "block_size_too_large",
            f"{n_bs}={bs}: a block longer than the longest prompt allowed, "
            f"{MAX_PROMPT_TOKENS_ENV}={limits.prompt_tokens}",
            trace.location,
        )
    for c in trace.calls:
        n = c.ids.size
        if n > limits.ids_per_call:
            rule = "too_many_ids"
            msg = (
                f"{n} hash ids in one call: more than {MAX_IDS_PER_CALL_ENV}={limits.ids_per_call}"
            )
        elif c.tokens_in > limits.prompt_tokens:
            rule = "prompt_too_long"
            msg = (
                f"{n_in}={c.tokens_in} prompt tokens: more than "
                f"{MAX_PROMPT_TOKENS_ENV}={limits.prompt_tokens}"
            )
        elif n and (n - 1) * bs >= limits.prompt_tokens:  # its last block holds >= 1 token
            rule = "prompt_too_long"
            msg = (
                f"hash_ids: {n} blocks of {bs} tokens are a prompt of at least "
                f"{(n - 1) * bs + 1} tokens: more than {MAX_PROMPT_TOKENS_ENV}={limits.prompt_tokens}"
            )
        elif c.tokens_out > limits.output_tokens:
            rule = "output_too_long"
            msg = (
                f"{n_out}={c.tokens_out} output tokens: more than "
                f"{MAX_OUTPUT_TOKENS_ENV}={limits.output_tokens}"
            )
        else:
            continue
        inner = None if c.inner < 0 else c.inner
        raise TraceError(rule, msg, Location(trace.file, trace.line, trace.id, c.request, inner))


def _too_large(name: str, line: int | None, size: int | None, limit: int, done: int, total: int):
    what = f"{size} bytes" if size is not None else "a line longer than that"
    return RawRecord(
        name,
        line,
        error=TraceError(
            "trace_too_large",
            f"one trace may hold {MAX_TRACE_BYTES_ENV}={limit} bytes of JSON; this is {what}",
            Location(name, line),
        ),
        done=done,
        total=total,
    )


def _lines(fh, limit: int):
    """(line number, bytes or None when longer than `limit`) of a binary file; an overlong
    line is skipped in chunks, never held whole."""
    lineno = 0
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        lineno += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield lineno, None
            continue
        yield lineno, line


SCAN_CHUNK = 8 << 20


def scan_lines(f: Path) -> Iterator[tuple[int, int, int]]:
    """(line number, offset, length) of every line of a plain file, found by scanning 8 MiB
    chunks for newlines: no line is ever held whole."""
    lineno = start = pos = 0
    with open(f, "rb", buffering=0) as fh:
        while chunk := fh.read(SCAN_CHUNK):
            for end in (np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + pos).tolist():
                lineno += 1
                yield lineno, start, end + 1 - start
                start = end + 1
            pos += len(chunk)
    if start < pos:
        yield lineno + 1, start, pos - start


def iter_raw_records(
    path: Path | str, lazy: bool = False, fmt: CorpusFormat | None = None
) -> Iterator[RawRecord]:
    """Every record of the corpus, one at a time (memory bounded by the largest record, and by
    `WEKA_ASSETS_MAX_TRACE_BYTES`: a longer record becomes a `trace_too_large` error).

    `lazy`: records of plain files carry where their bytes are, not the bytes; whoever parses
    them reads them (worker processes, so the reading process never copies the corpus).
    `fmt`: the corpus format, carried on every record for `parse_record`; detected from the
    first record when it names none."""
    files = corpus_files(path)
    fmt = detect_format(path, fmt)
    limit = max_trace_bytes()
    sizes = tuple(SizeLimits.read())
    total = sum(f.stat().st_size for f in files)
    done = 0
    for f in files:
        name = str(f)
        size = f.stat().st_size
        base = done
        try:
            if f.suffix == ".json" or not f.name.endswith(".gz"):
                spans = [(None, 0, size)] if f.suffix == ".json" else scan_lines(f)
                for lineno, offset, length in spans:
                    done = base + offset + length
                    if length > limit:
                        yield _too_large(name, lineno, length, limit, done, total)
                        continue
                    rec = RawRecord(
                        name,
                        lineno,
                        done=done,
                        total=total,
                        offset=offset,
                        length=length,
                        fmt=fmt,
                        limits=sizes,
                    )
                    if lineno is not None and length <= 64 and not rec.load().strip():
                        continue  # a blank line of a .jsonl (a blank .json file is an error)
                    if not lazy:
                        rec.load()
                    yield rec
            else:
                with open(f, "rb") as compressed, gzip.open(compressed, "rb") as fh:
                    for lineno, line in _lines(fh, limit):
                        done = base + compressed.tell()
                        if line is None:
                            yield _too_large(name, lineno, None, limit, done, total)
                        elif line.strip():
                            yield RawRecord(
                                name, lineno, line, done=done, total=total, fmt=fmt, limits=sizes
                            )
        except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as exc:
            yield RawRecord(
                name,
                None,
                error=TraceError(
                    "truncated_file", f"cannot read to the end: {exc}", Location(name)
                ),
                done=done,
                total=total,
            )
        done = base + size


@dataclass(slots=True)
class Validated:
    """One record read and schema-checked: its size, or its hard error."""

    error: TraceError | None
    calls: int = 0
    ids: int = 0
    done: int = 0
    total: int = 0


def validate_record(raw: RawRecord) -> Validated:
    """Parse one raw record (a worker task): only the schema, no scope analysis."""
    rec = parse_record(raw)
    if rec.error is not None:
        return Validated(rec.error, done=raw.done, total=raw.total)
    calls = rec.trace.calls
    return Validated(None, len(calls), sum(c.ids.size for c in calls), raw.done, raw.total)


def iter_records(path: Path | str, fmt: CorpusFormat | None = None) -> Iterator[Record]:
    """Every trace record of the corpus at `path`, parsed or with its hard error."""
    for raw in iter_raw_records(path, fmt=fmt):
        yield parse_record(raw)


def iter_traces(path: Path | str, fmt: CorpusFormat | None = None) -> Iterator[Trace]:
    """The parsed traces of a corpus; raises the first hard error (for callers past the gate)."""
    for rec in iter_records(path, fmt):
        if rec.error is not None:
            raise rec.error
        yield rec.trace
