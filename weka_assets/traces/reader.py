"""Read a corpus from disk: a folder of `*.json` traces, one `.json` trace, or `.jsonl[.gz]`.

Reading streams one trace at a time (memory bounded by the largest trace) and never stops at
the first bad record: every record comes back either parsed or as a `TraceError`, so a scope
report can list all hard errors of a corpus at once.
"""

import gzip
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import orjson

from weka_assets.errors import Location, SourceError, TraceError
from weka_assets.traces import formats
from weka_assets.traces.formats import FileRead, TraceFormat
from weka_assets.traces.formats.mooncake import MOONCAKE_FIELDS  # noqa: F401 (re-exported)
from weka_assets.traces.records import (  # noqa: F401 (re-exported: the reader's names)
    MAX_IDS_PER_CALL_ENV,
    MAX_OUTPUT_TOKENS_ENV,
    MAX_PROMPT_TOKENS_ENV,
    MAX_TRACE_BYTES_ENV,
    WEKA_FIELDS,
    RawRecord,
    Record,
    SizeLimits,
    check_sizes,
    max_ids_per_call,
    max_output_tokens,
    max_prompt_tokens,
    max_trace_bytes,
)
from weka_assets.traces.schema import Trace

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


@dataclass(frozen=True)
class CorpusFormat:
    """How a corpus's records are read, decided once per corpus (never per line).

    `format` None: detected from the corpus's first JSON object (`detect_format`); else a
    registered format's name (`traces.formats`).
    `block_size`: tokens per block of a format whose traces do not state it (None: the
    format's default, Mooncake's 512, Bailian's 16); Weka traces state theirs.
    `origin`: how the format was decided, for error messages (" (detected from f.jsonl:1)")."""

    format: str | None = None
    block_size: int | None = None
    origin: str = ""
    # the format itself, resolved once: it travels to the workers with every record
    spec: TraceFormat | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.format is not None and self.spec is None:
            object.__setattr__(self, "spec", formats.get(self.format))
        bs = self.block_size
        if bs is not None and (isinstance(bs, bool) or not isinstance(bs, int) or bs <= 0):
            raise ValueError(f"block_size must be a positive integer, got {bs!r}")

    @property
    def trace_format(self) -> TraceFormat:
        return self.spec if self.spec is not None else formats.get(self.format)

    @property
    def corpus_block_size(self) -> int | None:
        """Tokens per block when the format's traces do not state it (given, else the
        format's default); None for a format whose traces state their own (Weka)."""
        default = self.trace_format.default_block_size
        return None if default is None else (self.block_size or default)


_KEYS = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _top_level_keys(data: bytes) -> list[str]:
    """A JSON object's top-level keys, its values skipped (never built)."""
    return list(_KEYS.decode(data))


def detect_format(path: Path | str, fmt: CorpusFormat | None = None) -> CorpusFormat:
    """`fmt` with its format decided: as given, else from the corpus's first record that is a
    JSON object (the first registered format that recognises its top-level keys, else Weka)."""
    fmt = fmt or CorpusFormat()
    if fmt.format is not None:
        return fmt
    found = formats.DEFAULT
    where = "no JSON object found"
    for i, raw in enumerate(iter_raw_records(path, fmt=CorpusFormat(formats.DEFAULT))):
        if i >= 100:
            break
        if raw.error is not None:
            continue
        try:  # the top-level keys only: a trace's values are skipped, not built
            keys = _top_level_keys(raw.load())
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, OSError):
            continue
        found = formats.detect(keys)
        where = Path(raw.file).name if raw.line is None else f"{Path(raw.file).name}:{raw.line}"
        break
    return CorpusFormat(found, fmt.block_size, f" (detected from {where})")


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


def parse_record(raw: RawRecord) -> Record:
    """Parse one raw record with its corpus's format (Weka when it names none)."""
    if raw.error is not None:
        return Record(raw.file, raw.line, error=raw.error)
    fmt = raw.fmt if raw.fmt is not None else CorpusFormat(formats.DEFAULT)
    return fmt.trace_format.parse(raw, fmt, raw.limits_or_read())


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
    first record when it names none. A format that groups lines into traces reads its files
    itself (`TraceFormat.file_records`)."""
    files = corpus_files(path)
    fmt = detect_format(path, fmt)
    limit = max_trace_bytes()
    sizes = tuple(SizeLimits.read())
    total = sum(f.stat().st_size for f in files)
    done = 0
    spec = fmt.trace_format
    for f in files:
        name = str(f)
        size = f.stat().st_size
        base = done
        grouped = spec.file_records(FileRead(f, base, total, fmt, sizes, limit, lazy))
        if grouped is not None:  # the format reads the file itself (sessions of lines)
            yield from grouped
            done = base + size
            continue
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
    more_errors: list[TraceError] = field(default_factory=list)  # a many-request record's rest
    sessions: int = 0  # the sessions of a file of requests that has them (Bailian)


def validate_record(raw: RawRecord) -> Validated:
    """Parse one raw record (a worker task): only the schema, no scope analysis."""
    rec = parse_record(raw)
    if rec.error is not None:
        return Validated(rec.error, done=raw.done, total=raw.total, more_errors=rec.more_errors)
    trace = rec.trace
    if not isinstance(trace, Trace):  # a file of requests, as columns
        sessions = 0 if trace.session_roots is None else int(trace.session_roots.size)
        return Validated(
            None, trace.n_requests, int(trace.ids.size), raw.done, raw.total, sessions=sessions
        )
    calls = trace.calls
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
