"""The chain as plain functions: scope report, decode, replay. The CLI and the Dagster assets
both call these, so the two can never disagree."""

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import orjson
import pyarrow as pa

from weka_assets.atomic import atomic_write
from weka_assets.decoding.dataset import (
    PROVENANCE,
    DatasetWriter,
    DecodedDataset,
    is_complete,
    key_lock,
    open_dataset,
    quarantine,
    read_manifest,
    read_provenance,
    verify_dataset,
)
from weka_assets.decoding.decoder import concat_pieces, decode_record, scope_and_decode_record
from weka_assets.decoding.drift import DRIFT_CALLS, retokenization_drift
from weka_assets.decoding.filler import Filler, build_filler
from weka_assets.decoding.settings import DecodeSettings, decode_key, decode_key_material
from weka_assets.decoding.tokenizers import TokenizerSpec, resolve_tokenizer
from weka_assets.env import host_name
from weka_assets.errors import CorpusRejected, TraceError
from weka_assets.parallel import in_worker, ordered_map
from weka_assets.replay.unbounded import CallFigures, ReplayResult, replay_unbounded
from weka_assets.traces import formats
from weka_assets.traces.parsed import ParsedWriter, analyse_and_encode, corpus_root, read_parsed
from weka_assets.traces.reader import (
    CorpusFormat,
    RawRecord,
    Record,
    corpus_digest,
    corpus_files,
    detect_format,
    file_digests,
    iter_raw_records,
    parse_record,
)
from weka_assets.traces.scope import (
    AnalysedRecord,
    Policy,
    ScopeReport,
    analyse_parsed,
    analyse_record,
    build_report,
)
from weka_assets.versions import MANIFEST_VERSION

FILLER_CACHE = ".filler-cache"
log = logging.getLogger(__name__)

# progress(stage, done, total, unit): called as a long step advances; total is None when
# unknown. Stages: "scope", "decode", "replay"; unit "bytes" (of the corpus read) or "traces".
ProgressFn = Callable[[str, int, int | None, str], None]


def _ticking(records, stage: str, progress: ProgressFn | None, path=None):
    """Pass analysed records through, reporting the corpus bytes done to `progress` (a first
    report at 0 when `path` gives the total, so the stage's time counts the workers' start)."""
    if progress is not None and path is not None:
        progress(stage, 0, sum(f.stat().st_size for f in corpus_files(path)), "bytes")
    for rec in records:
        yield rec
        first = rec[0] if isinstance(rec, tuple) else rec
        if progress is not None and hasattr(first, "done"):
            progress(stage, first.done, first.total, "bytes")


class HeldTable:
    """The record of a one-file corpus of requests (Mooncake, Bailian: the file is one record,
    read as columns in process) that a scope pass read, held for the decode right after it in
    the same process (the command line's `decode`): the file is then read once, not twice, and
    reading is most of such a decode (Arrow's reader, 2.8-3.5 s of a 330 MiB file against a
    decode of 7 s). Held only for a corpus of one file (a corpus of many would hold every
    file's columns at once) and only while its size and time are the ones read; `take` hands
    it over once."""

    def __init__(self):
        # (the file, its (size, mtime_ns) when read, its record)
        self._held: tuple[str, tuple[int, int], HeldRecord] | None = None

    @staticmethod
    def _stamp(file: str) -> tuple[int, int]:
        st = os.stat(file)
        return st.st_size, st.st_mtime_ns

    def holds_for(self, path: Path | str, fmt: CorpusFormat) -> bool:
        """Whether this corpus's record would be held: one file, read in process."""
        return formats.record_workers(fmt.format) == 1 and len(corpus_files(path)) == 1

    def keep(self, raw: RawRecord, rec: Record) -> None:
        if rec.error is None:
            self._held = (raw.file, self._stamp(raw.file), HeldRecord(rec, raw.done, raw.total))

    def take(self, path: Path | str) -> "HeldRecord | None":
        """The held record when it is the corpus at `path`'s (one file, unchanged), else None."""
        held, self._held = self._held, None
        files = corpus_files(path)
        if held is None or len(files) != 1 or str(files[0]) != held[0]:
            return None
        return held[2] if self._stamp(held[0]) == held[1] else None


@dataclass
class HeldRecord:
    """A record parsed by the scope pass (`HeldTable`), as a decode reads one."""

    parsed: Record
    done: int = 0
    total: int = 0

    def record(self) -> Record:
        return self.parsed


def scope_report(
    path: Path | str,
    policy: Policy = "fail",
    progress: ProgressFn | None = None,
    fmt: CorpusFormat | None = None,
    keep: ParsedWriter | None = None,
    hold: HeldTable | None = None,
) -> ScopeReport:
    """The corpus report; `fmt` names the corpus format (None: detected, see `CorpusFormat`).
    `keep`: a `keep_parse` writer that keeps what this pass parsed, for the decodes after it.
    `hold`: holds a one-file corpus of requests's parsed record for the decode right after
    (`HeldTable`)."""
    fmt = detect_format(path, fmt)
    records = iter_raw_records(path, lazy=True, fmt=fmt)
    n = formats.record_workers(fmt.format)
    if hold is not None and hold.holds_for(path, fmt):

        def analyse_and_hold(raw: RawRecord) -> AnalysedRecord:  # in process (n == 1)
            rec = parse_record(raw)
            hold.keep(raw, rec)
            return analyse_parsed(rec, raw)

        analysed = map(analyse_and_hold, records)
    elif keep is None:
        analysed = ordered_map(analyse_record, records, n)
    else:
        task = partial(analyse_and_encode, root=str(corpus_root(path)))
        analysed = keep.tee(ordered_map(task, records, n))
    report, _ = build_report(_ticking(analysed, "scope", progress, path), policy)
    return report


def write_json(obj, path: Path | str) -> Path:
    """Write JSON atomically (aside, then rename): a reader never sees half a file. The file
    aside has a name of its own per call, so concurrent writers of one path never write into
    each other's; the last rename wins, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj
    body = orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    with atomic_write(path) as fh:
        fh.write(body)
    return path


def provenance(written_from: Path | str, **more) -> dict:
    """Where, when and by whom something was written: kept beside the stored bytes (which
    depend on content only), never in them."""
    return {
        "created_unix": time.time(),
        "host": host_name(),
        "pid": os.getpid(),
        "written_from": str(written_from),
        **more,
    }


def portable_tokenizer_source(spec: TokenizerSpec) -> str:
    """The tokenizer's source as every machine names it: a local folder by its name only (its
    files' hash is in the decode key), never by this machine's path."""
    if spec.source.startswith(("builtin:", "hf:")):
        return spec.source
    return f"local:{spec.name}"


@dataclass
class DecodeOutcome:
    path: Path
    key: str
    reused: bool
    material: dict
    seconds: float
    manifest: dict = field(default_factory=dict)
    published: bool = False  # this call's dataset is the one stored at the key
    provenance: dict = field(default_factory=dict)  # where and when the dataset was written
    from_parse: bool = False  # decoded from the scope pass's parse (`keep_parse`), not the JSON


def decode_corpus(
    path: Path | str,
    root: Path | str,
    settings: DecodeSettings = DecodeSettings(),
    *,
    report: ScopeReport | None = None,
    policy: Policy = "fail",
    manifest_version: int = MANIFEST_VERSION,
    measure_drift: bool = True,
    fetch_existing: Callable[[str], bool] | None = None,
    progress: ProgressFn | None = None,
    digest: str | None = None,
    provenance_dir: Path | str | None = None,
    fmt: CorpusFormat | None = None,
    held: HeldTable | None = None,
    parsed: Path | str | None = None,
) -> DecodeOutcome:
    """Decode the corpus at `path` into `root/<decode key>/`, or reuse it when it exists.

    The scope gate is hard: a corpus that fails its report raises `CorpusRejected` and nothing
    is published. Without a `report`, one pass reads, analyses and decodes every trace, and the
    report decides at the end whether the dataset aside is published (with its key) or
    dropped. `fetch_existing(key)` is asked when no complete local dataset has that key; it
    returns True after making one available under `root/<key>/` (a remote store pulls it).
    `digest`: the corpus digest when already known (raw_traces verified it); else it is
    computed, in a thread beside the decoding pass when there is no report yet.
    A new dataset's provenance (time, host, pid, local paths: nothing of it in the dataset)
    is written to `provenance_dir/<key>.json` (default `root/.provenance/`).
    `fmt`: the corpus format (None: detected); a dataset's manifest says what its format
    wants said (`TraceFormat.manifest_fields`: `corpus_format: mooncake`, nothing for Weka).
    `held`: what the scope pass that made `report` held of the corpus (`HeldTable`), read
    instead of the file when it is still this corpus's; `parsed`: what it kept
    (`keep_parse`), read instead of the JSON when it is this corpus's current parse.
    """
    common = dict(
        manifest_version=manifest_version,
        fetch_existing=fetch_existing,
        digest=digest,
        provenance_dir=provenance_dir,
        fmt=fmt,
    )
    if report is not None:
        variant = Variant(settings, measure_drift)
        return decode_variants(
            path, root, [variant], report, progress=progress, held=held, parsed=parsed, **common
        )[0]
    run = _Decoding(path, root, **common)
    build = run.build(Variant(settings, measure_drift))
    with build.writing(root):
        task = partial(scope_and_decode_record, settings=settings, n=build.filler.size)
        analysed = []
        mapped = ordered_map(task, run.records(), formats.record_workers(run.fmt.format))
        for rec, piece in _ticking(mapped, "decode", progress, run.path):
            analysed.append(rec)
            keep = rec.scope is not None and (policy == "fail" or rec.scope.verdict == "shared")
            if piece is not None and keep:  # a duplicate id fails the gate below
                build.append(piece)
        report, _ = build_report(analysed, policy)
        run.gate(report)
        material, key = run.key_for(build, report)
        if (manifest := run.existing(key)) is not None:
            return run.reused(key, material, manifest)
        return run.publish(build, key, material, report)


@dataclass(frozen=True)
class Variant:
    """One dataset to decode a corpus into: its settings, and whether to measure its
    retokenization drift (a comparison dataset, the legacy scope's, skips it)."""

    settings: DecodeSettings
    measure_drift: bool = True


def decode_variants(
    path: Path | str,
    root: Path | str,
    variants: list[Variant],
    report: ScopeReport,
    *,
    manifest_version: int = MANIFEST_VERSION,
    fetch_existing: Callable[[str], bool] | None = None,
    progress: ProgressFn | None = None,
    digest: str | None = None,
    provenance_dir: Path | str | None = None,
    fmt: CorpusFormat | None = None,
    parsed: Path | str | None = None,
    held: HeldTable | None = None,
) -> list[DecodeOutcome]:
    """`decode_corpus` of a gated corpus under several settings at once (the contract's scope
    and the legacy one): each dataset not stored yet is decoded in one shared pass, every
    trace read and parsed once and decoded once per dataset; a stored one is reused. The
    outcomes are in the order of `variants`; two variants with one decode key share one.
    `parsed`: the corpus as its scope pass parsed it (`keep_parse`), read instead of the JSON
    when it is this corpus's current parse (else the JSON is parsed, as without it)."""
    run = _Decoding(
        path,
        root,
        manifest_version=manifest_version,
        fetch_existing=fetch_existing,
        digest=digest,
        provenance_dir=provenance_dir,
        fmt=fmt,
    )
    run.gate(report)
    builds: dict[str, _Build] = {}  # decode key -> its dataset, once per key
    keyed = []
    for v in variants:
        build = run.build(v)
        material, key = run.key_for(build, report)
        keyed.append(key)
        builds.setdefault(key, build).material = material
    outcomes: dict[str, DecodeOutcome] = {}
    with ExitStack() as stack:
        for key in sorted(builds):  # one lock order for every process: no deadlock
            if (manifest := run.existing(key, repair=False)) is None:
                # one writer per key: a second one waits here, then finds it published
                stack.enter_context(key_lock(run.root, key))
                manifest = run.existing(key)
            if manifest is not None:
                outcomes[key] = run.reused(key, builds[key].material, manifest)
        todo = {k: b for k, b in builds.items() if k not in outcomes}
        if todo:
            for b in todo.values():
                stack.enter_context(b.writing(run.root))
            targets = tuple((b.settings, b.filler.size) for b in todo.values())
            task = partial(
                decode_record,
                targets=targets,
                excluded=frozenset(report.excluded_traces),
            )
            taken = held.take(run.path) if held is not None else None
            records = [taken] if taken is not None else run.records(parsed)
            mapped = ordered_map(task, records, formats.record_workers(run.fmt.format))
            pieces = _ticking(mapped, "decode", progress, run.path)
            for decoded in pieces:
                if isinstance(decoded, TraceError):
                    raise decoded
                if decoded is not None:
                    for b, piece in zip(todo.values(), decoded, strict=True):
                        b.append(piece)
            for key, b in todo.items():
                outcomes[key] = run.publish(b, key, b.material, report)
    return [outcomes[key] for key in keyed]


@dataclass
class _Build:
    """One dataset being decoded: its settings, tokenizer, filler and writer, what it holds so
    far, and its first trace's first calls (for the drift measurement)."""

    settings: DecodeSettings
    measure_drift: bool
    spec: TokenizerSpec
    filler: Filler
    material: dict = field(default_factory=dict)
    writer: DatasetWriter | None = None
    totals: dict = field(default_factory=lambda: {"prompt_tokens": 0, "ids": 0})
    first: list = field(default_factory=list)

    @contextmanager
    def writing(self, root: Path):
        """A writer aside under `root`, dropped on leaving unless it was published."""
        with DatasetWriter(root, self.filler.tokens, self.settings.sub_blocks) as writer:
            self.writer = writer
            yield writer

    def append(self, piece) -> None:
        if not self.first:  # what the drift measures: the first calls of the first trace
            self.first.append(piece.head(DRIFT_CALLS))
        self.writer.append(piece)
        self.totals["prompt_tokens"] += int(piece.calls["tokens_in"].sum())
        self.totals["ids"] += int(piece.calls["n_ids"].sum())


class _Decoding:
    """What the decodes of one corpus share: where it and its datasets are, its digest (in a
    thread beside the first pass when not given), the key's existence check, the publication."""

    def __init__(
        self,
        path,
        root,
        *,
        manifest_version: int,
        fetch_existing: Callable[[str], bool] | None,
        digest: str | None,
        provenance_dir: Path | str | None,
        fmt: CorpusFormat | None,
    ):
        self.started = time.perf_counter()
        self.path = path
        self.fmt = detect_format(path, fmt)
        self.root = Path(root)
        self.provenance_dir = (
            Path(provenance_dir) if provenance_dir is not None else self.root / PROVENANCE
        )
        self.manifest_version = manifest_version
        self.fetch_existing = fetch_existing
        self.from_parse = False  # records read from the scope pass's parse, not the JSON
        hashing = ThreadPoolExecutor(1)
        self._digest = hashing.submit(lambda: digest or corpus_digest(file_digests(path)))
        hashing.shutdown(wait=False)

    def records(self, parsed: Path | str | None = None):
        """The corpus's records: its scope pass's parse when given and current, else the JSON.
        `self.from_parse` says which."""
        if parsed is not None:
            frames = read_parsed(parsed, self._digest.result(), self.fmt, self.path)
            if frames is not None:
                self.from_parse = True
                return frames
        return iter_raw_records(self.path, lazy=True, fmt=self.fmt)

    def build(self, variant: Variant) -> _Build:
        spec = resolve_tokenizer(variant.settings.tokenizer)
        filler = build_filler(
            spec, variant.settings.filler_text, cache_dir=self.root / FILLER_CACHE
        )
        return _Build(variant.settings, variant.measure_drift, spec, filler)

    def key_for(self, build: _Build, rep: ScopeReport) -> tuple[dict, str]:
        material = decode_key_material(
            build.settings,
            corpus_digest=self._digest.result(),
            tokenizer=build.spec,
            filler_sha256=build.filler.sha256,
            block_sizes=sorted(int(b) for b in rep.block_sizes),
            excluded_traces=rep.excluded_traces,
            manifest_version=self.manifest_version,
            decode_scopes=rep.decode_scopes,
            corpus_format=self.fmt.trace_format.key_name,
        )
        return material, decode_key(material)

    @staticmethod
    def gate(rep: ScopeReport) -> None:
        if not rep.passed:
            raise CorpusRejected("; ".join(rep.failure_reasons), rep.hard_errors)

    def existing(self, key: str, repair: bool = True) -> dict | None:
        """The manifest of a complete, intact dataset at `key`. With `repair` (only under the
        key's lock), a corrupt one is moved aside and a remote copy tried once more."""
        target = self.root / key
        fetch = self.fetch_existing
        for _ in range(2):  # the local copy, then (when it was corrupt) a fresh remote one
            if not is_complete(target) and not (
                fetch is not None and fetch(key) and is_complete(target)
            ):
                return None
            problem = verify_dataset(target)
            if problem is None:
                return orjson.loads((target / "manifest.json").read_bytes())
            if not repair:
                return None
            aside = quarantine(target)
            log.warning("stored dataset %s is corrupt (%s): moved to %s", key, problem, aside)
        return None

    def reused(self, key: str, material: dict, manifest: dict) -> DecodeOutcome:
        path = self.root / key
        return DecodeOutcome(
            path, key, True, material, _since(self.started), manifest, False, read_provenance(path)
        )

    def publish(self, build: _Build, key: str, material: dict, report: ScopeReport):
        """Publish what `build` wrote under `key` (its manifest last) with its provenance."""
        writer, spec, filler = build.writer, build.spec, build.filler
        # content only: the time, host and local paths go to the provenance record
        manifest = {
            "decode_key": key,
            "key_material": material,
            "manifest_version": self.manifest_version,
            "tokenizer_source": portable_tokenizer_source(spec),
            "decode_scope": report.layout,  # the layout decoded (per trace: decode_scopes)
            "decode_scopes": report.decode_scopes,
            "inferred_scope_traces": report.inferred_scope_traces,
            "traces": len(writer.traces),
            "calls": writer.n_calls,
            "blocks": writer.n_blocks,
            "tail_rows": writer.n_rows,
            "filler_tokens": int(filler.size),
            **build.totals,
        }
        manifest.update(self.fmt.trace_format.manifest_fields())  # Weka: none, same bytes
        if build.measure_drift and build.first:
            sample = concat_pieces(build.first, filler.tokens, {})  # its first calls, in memory
            # in a worker: the tokenizer it loads (about 120 MB) leaves with it
            manifest["retokenization_drift"] = in_worker(retokenization_drift, sample, spec)
        final = writer.publish(key, manifest)
        # pyarrow's pool keeps what the parquet writers freed (tens of MB): give it back, as a
        # long-lived process (a Dagster run executes every step in one) would keep it
        pa.default_memory_pool().release_unused()
        if writer.won:
            record = provenance(
                final, corpus=str(Path(self.path).absolute()), tokenizer_source=spec.source
            )
            write_json(record, self.provenance_dir / f"{key}.json")
        else:  # a concurrent writer's dataset was there first: it is the stored one
            manifest, record = read_manifest(final), read_provenance(final)
        return DecodeOutcome(
            final, key, False, material, _since(self.started), manifest, writer.won, record,
            self.from_parse,
        )  # fmt: skip


def _since(started: float) -> float:
    return time.perf_counter() - started


def replay(
    dataset: Path | str | DecodedDataset, progress: ProgressFn | None = None
) -> tuple[ReplayResult, CallFigures]:
    ds = dataset if isinstance(dataset, DecodedDataset) else open_dataset(dataset)
    return replay_unbounded(ds, progress=progress)
