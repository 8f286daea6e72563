"""Trace formats: one module per format, one registry (`names`, `get`, `register`).

A format says everything the chain needs to know about a corpus written in it, so nothing
downstream asks which format it is:
- `name`, and `looks_like(keys)`: detection from the top-level keys of the corpus's first
  JSON object (formats are asked in registration order; none matching reads the corpus as
  Weka, whose schema errors then say what is wrong);
- `default_block_size`: tokens per hash id when the trace does not state it (None: every
  trace states its own, as a Weka trace does); the registry's `block_size` or `--block-size`
  overrides it;
- `namespace`: `trace` (each trace numbers its own blocks; the trace declares its scope) or
  `corpus` (one namespace for the whole corpus: every trace declares scope `global`);
- `corpus_clock`: whether call times are on one corpus-wide clock (the replay's default
  arrival is then `recorded`, `replay.schedule`);
- `file_records`: how a file's bytes become records, one per line or JSON file (the default),
  or lines grouped into one trace per session (Bailian), each with located errors;
- `parse`: one raw record into a `Trace` (or its located `TraceError`), every declared size
  checked (`records.check_sizes`, with the format's `size_fields` in messages);
- `schema_rules`: the rule names of its own hard errors (the gate's `valid_schema` check
  counts them: `traces.scope.SCHEMA_RULES`);
- `manifest_fields` and `key_name`: what a decoded dataset records about the format.

Adding a format is one module here with a `TraceFormat` subclass, named in `_REGISTRY` below
(or `register(...)` at run time: a test's toy format), plus its tests. Plain Python, no
Dagster; this module imports nothing heavy (a format's module is imported when first asked).
"""

import importlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:  # pragma: no cover
    from weka_assets.traces.reader import CorpusFormat
    from weka_assets.traces.records import RawRecord, Record, SizeLimits

Namespace = Literal["trace", "corpus"]


@dataclass(frozen=True, slots=True)
class FileRead:
    """What `TraceFormat.file_records` gets to read one file of a corpus."""

    path: Path
    base: int  # corpus bytes before this file (for progress)
    total: int  # corpus bytes in all
    fmt: "CorpusFormat"
    limits: tuple[int, int, int]  # SizeLimits, carried on every record
    max_bytes: int  # WEKA_ASSETS_MAX_TRACE_BYTES: the most bytes one record may hold
    lazy: bool  # records of plain files carry where their bytes are, not the bytes


class TraceFormat:
    """One trace format (see the module doc). Subclasses set the class attributes and
    implement `looks_like` and `parse`; `file_records` defaults to one record per line of a
    .jsonl (per file of .json traces), read by `traces.reader`."""

    name: ClassVar[str]
    title: ClassVar[str]  # how messages name it ("Mooncake")
    record_noun: ClassVar[str] = "record"  # one line's record, in messages ("request")
    default_block_size: ClassVar[int | None] = None
    namespace: ClassVar[Namespace] = "trace"
    corpus_clock: ClassVar[bool] = False
    size_fields: ClassVar[tuple[str, str, str]] = ("in", "out", "block_size")
    schema_rules: ClassVar[tuple[str, ...]] = ()
    sniff_keys: ClassVar[tuple[str, ...]] = ()  # keys detection reads (and mismatches name)
    # the name in a decoded dataset's key material (None: left out, as for the format whose
    # keys predate it, Weka; a corpus readable in two formats, or a changed layout, needs it)
    key_name: ClassVar[str | None] = None
    # a record is a whole file read as columns (Mooncake): nothing to spread over worker
    # processes, whose results would be pickled back whole; its records are read in process
    whole_files: ClassVar[bool] = False

    @property
    def declared_scope(self) -> str | None:
        """The scope every trace declares (`global` for a corpus-wide namespace); None: each
        trace states its own."""
        return "global" if self.namespace == "corpus" else None

    def looks_like(self, keys: Collection[str]) -> bool:
        raise NotImplementedError

    def file_records(self, read: FileRead) -> "Iterator[RawRecord] | None":
        """The records of one file, or None to read it one record per line (per .json file)."""
        return None

    def parse(self, raw: "RawRecord", fmt: "CorpusFormat", limits: "SizeLimits") -> "Record":
        raise NotImplementedError

    def manifest_fields(self) -> dict:
        """What a decoded dataset's manifest says about its format (none for Weka, whose
        manifests predate formats and keep their bytes)."""
        return {"corpus_format": self.name}

    def __reduce__(self):  # travels to workers by name and class, never by state
        return (type(self), ())


def request_object(obj, title: str, file: str, line: int | None, origin: str = "") -> int:
    """A one-request-per-line format's line, checked to be a request object: not another JSON
    value, not a Weka trace (it has `requests`); its null-valued keys are dropped (a null
    reads as an absent field) and counted."""
    from weka_assets.errors import Location, TraceError

    if not isinstance(obj, dict):
        raise TraceError(
            "not_an_object",
            f"a {title} request must be a JSON object, got {type(obj).__name__}",
            Location(file, line),
        )
    if "requests" in obj:
        trace_id = obj.get("id") if isinstance(obj.get("id"), str) else None
        raise TraceError(
            "format_mismatch",
            f"a Weka trace (it has 'requests') in a corpus read as {title}{origin}; "
            "one corpus holds one format",
            Location(file, line, trace_id),
        )
    nulls = [k for k, v in obj.items() if v is None]
    for k in nulls:
        del obj[k]
    return len(nulls)


# name -> the format, or where a built-in one is ("module:Class", imported when first asked:
# the registry itself imports nothing heavy, so the command line's --help stays fast)
_REGISTRY: dict[str, "TraceFormat | str"] = {
    "weka": "weka_assets.traces.formats.weka:WekaFormat",
    # Bailian lines look like Mooncake ones too: detection asks Bailian first
    "bailian": "weka_assets.traces.formats.bailian:BailianFormat",
    "mooncake": "weka_assets.traces.formats.mooncake:MooncakeFormat",
}
DEFAULT = "weka"  # what a corpus no format recognises is read as


def register(fmt: TraceFormat) -> TraceFormat:
    """Add a format at run time (detection asks formats in registration order)."""
    known = _REGISTRY.get(fmt.name)
    if known is not None and not (isinstance(known, str) or type(known) is type(fmt)):
        raise ValueError(f"trace format {fmt.name!r} is already registered")
    _REGISTRY[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    if name == DEFAULT:
        raise ValueError("the default format stays registered")
    _REGISTRY.pop(name, None)


def find(name: str | None) -> TraceFormat | None:
    """The format called `name`, or None when none is registered under it."""
    entry = _REGISTRY.get(name) if name is not None else None
    if isinstance(entry, str):
        module, cls = entry.split(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), cls)()
    return entry


def get(name: str | None) -> TraceFormat:
    """The format called `name` (None: the default, Weka); ValueError when unknown."""
    fmt = find(DEFAULT if name is None else name)
    if fmt is None:
        raise ValueError(f"unknown corpus format {name!r} ({names_text()})")
    return fmt


def names() -> tuple[str, ...]:
    """The registered formats' names, in detection order (nothing is imported)."""
    return tuple(_REGISTRY)


def names_text() -> str:
    n = names()
    return ", ".join(n[:-1]) + f" or {n[-1]}" if len(n) > 1 else n[0]


def all_formats() -> list[TraceFormat]:
    return [get(n) for n in names()]


def detect(keys: Collection[str]) -> str:
    """The first registered format whose `looks_like` accepts these top-level keys, else the
    default."""
    for fmt in all_formats():
        if fmt.name != DEFAULT and fmt.looks_like(keys):
            return fmt.name
    return DEFAULT


def schema_rules() -> tuple[str, ...]:
    """Every registered format's own rule names."""
    return tuple(dict.fromkeys(r for f in all_formats() for r in f.schema_rules))


def record_workers(name: str | None) -> int | None:
    """Worker processes for a corpus of format `name`: 1 (in process) when its records are
    whole files read as columns, else None (the default, `parallel.workers()`)."""
    fmt = find(name)
    return 1 if fmt is not None and fmt.whole_files else None


def corpus_clock(name: str | None) -> bool:
    """Whether a corpus of format `name` has its call times on one corpus-wide clock (an
    unknown name: no)."""
    fmt = find(name)
    return bool(fmt is not None and fmt.corpus_clock)
