"""Read a corpus from disk: a folder of `*.json` traces, one `.json` trace, or `.jsonl[.gz]`.

Reading streams one trace at a time (memory bounded by the largest trace) and never stops at
the first bad record: every record comes back either parsed or as a `TraceError`, so a scope
report can list all hard errors of a corpus at once.
"""

import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from weka_assets.errors import Location, SourceError, TraceError
from weka_assets.traces.schema import Trace, declared_scope, parse_trace

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


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


def _record(raw_bytes: bytes, file: str, line: int | None) -> Record:
    try:
        raw = orjson.loads(raw_bytes)
    except orjson.JSONDecodeError as exc:
        return Record(file, line, error=TraceError("invalid_json", str(exc), Location(file, line)))
    scope = declared_scope(raw)
    try:
        trace, dropped = parse_trace(raw, file, line)
    except TraceError as exc:
        return Record(file, line, error=exc, declared_scope=scope)
    return Record(file, line, trace=trace, declared_scope=scope, null_keys_dropped=dropped)


def iter_records(path: Path | str) -> Iterator[Record]:
    """Every trace record of the corpus at `path`, parsed or with its hard error."""
    for f in corpus_files(path):
        name = str(f)
        if f.suffix == ".json":
            yield _record(f.read_bytes(), name, None)
            continue
        opener = gzip.open if f.name.endswith(".gz") else open
        try:
            with opener(f, "rb") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if line.strip():
                        yield _record(line, name, lineno)
        except (EOFError, gzip.BadGzipFile, OSError) as exc:
            yield Record(
                name,
                None,
                error=TraceError(
                    "truncated_file", f"cannot read to the end: {exc}", Location(name)
                ),
            )


def iter_traces(path: Path | str) -> Iterator[Trace]:
    """The parsed traces of a corpus; raises the first hard error (for callers past the gate)."""
    for rec in iter_records(path):
        if rec.error is not None:
            raise rec.error
        yield rec.trace
