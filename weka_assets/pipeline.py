"""The chain as plain functions: scope report, decode, replay. The CLI and the Dagster assets
both call these, so the two can never disagree."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from weka_assets.decoding.dataset import DecodedDataset, is_complete, open_dataset
from weka_assets.decoding.decoder import decode_traces
from weka_assets.decoding.filler import build_filler
from weka_assets.decoding.settings import DecodeSettings, decode_key, decode_key_material
from weka_assets.decoding.tokenizers import load_tokenizer, resolve_tokenizer
from weka_assets.errors import CorpusRejected
from weka_assets.replay.unbounded import CallFigures, ReplayResult, replay_unbounded
from weka_assets.traces.reader import corpus_digest, file_digests, iter_records, iter_traces
from weka_assets.traces.scope import Policy, ScopeReport, build_report
from weka_assets.versions import MANIFEST_VERSION

FILLER_CACHE = ".filler-cache"

# progress(stage, done, total, unit): called as a long step advances; total is None when
# unknown. Stages: "scope", "decode", "replay"; unit "bytes" (of the corpus read) or "traces".
ProgressFn = Callable[[str, int, int | None, str], None]


def _ticking(records, stage: str, progress: ProgressFn | None):
    """Pass records through, reporting each one to `progress` (unit: traces)."""
    for n, rec in enumerate(records, start=1):
        yield rec
        if progress is not None:
            progress(stage, n, None, "traces")


def scope_report(
    path: Path | str, policy: Policy = "fail", progress: ProgressFn | None = None
) -> ScopeReport:
    report, _ = build_report(_ticking(iter_records(path), "scope", progress), policy)
    return report


def write_json(obj, path: Path | str) -> Path:
    """Write JSON atomically (aside, then rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    data = obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    tmp.replace(path)
    return path


@dataclass
class DecodeOutcome:
    path: Path
    key: str
    reused: bool
    material: dict
    seconds: float
    manifest: dict = field(default_factory=dict)


def retokenization_drift(
    ds: DecodedDataset, tokenizer, calls: int = 8, max_tokens: int = 2048
) -> dict:
    """How far encode(decode(tokens)) drifts from the tokens: what a text-based client would see."""
    checked = identical = tokens = 0
    deltas, mismatched = [], 0
    for i in range(min(calls, ds.n_calls)):
        ids = ds.expand_call(i)[:max_tokens].tolist()
        if not ids:
            continue
        back = tokenizer.encode(tokenizer.decode(ids), add_special_tokens=False)
        checked += 1
        tokens += len(ids)
        identical += back == ids
        deltas.append(len(back) - len(ids))
        mismatched += sum(a != b for a, b in zip(ids, back, strict=False)) + abs(
            len(back) - len(ids)
        )
    return {
        "calls_checked": checked,
        "tokens_checked": tokens,
        "calls_identical": identical,
        "token_count_delta_mean": float(np.mean(deltas)) if deltas else 0.0,
        "mismatch_fraction": mismatched / tokens if tokens else 0.0,
    }


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
) -> DecodeOutcome:
    """Decode the corpus at `path` into `root/<decode key>/`, or reuse it when it exists.

    The scope gate is hard: a corpus that fails its report raises `CorpusRejected`.
    `fetch_existing(key)` is asked when no complete local dataset has that key; it returns
    True after making one available under `root/<key>/` (a remote store pulls it).
    """
    started = time.perf_counter()
    root = Path(root)
    if report is None:
        report = scope_report(path, policy, progress)
    if not report.passed:
        raise CorpusRejected("; ".join(report.failure_reasons), report.hard_errors)
    spec = resolve_tokenizer(settings.tokenizer)
    filler = build_filler(spec, settings.filler_text, cache_dir=root / FILLER_CACHE)
    digest = corpus_digest(file_digests(path))
    block_sizes = sorted(int(b) for b in report.block_sizes)
    material = decode_key_material(
        settings,
        corpus_digest=digest,
        tokenizer=spec,
        filler_sha256=filler.sha256,
        block_sizes=block_sizes,
        excluded_traces=report.excluded_traces,
        manifest_version=manifest_version,
    )
    key = decode_key(material)
    target = root / key
    if is_complete(target) or (
        fetch_existing is not None and fetch_existing(key) and is_complete(target)
    ):
        manifest = orjson.loads((target / "manifest.json").read_bytes())
        return DecodeOutcome(target, key, True, material, time.perf_counter() - started, manifest)
    excluded = set(report.excluded_traces)
    traces = (t for t in _ticking(iter_traces(path), "decode", progress) if t.id not in excluded)
    manifest = {
        "decode_key": key,
        "key_material": material,
        "manifest_version": manifest_version,
        "tokenizer_source": spec.source,
        "created_unix": time.time(),
    }
    ds = decode_traces(traces, settings, filler, manifest)
    manifest.update(
        traces=len(ds.traces),
        calls=ds.n_calls,
        blocks=int(ds.block_id.size),
        ids=int(ds.call_rows.size),
        prompt_tokens=int(ds.calls["tokens_in"].sum()),
        filler_tokens=int(filler.size),
    )
    if measure_drift:
        manifest["retokenization_drift"] = retokenization_drift(ds, load_tokenizer(spec))
    ds.manifest = manifest
    final = ds.write(root, key)
    return DecodeOutcome(final, key, False, material, time.perf_counter() - started, manifest)


def replay(
    dataset: Path | str | DecodedDataset, progress: ProgressFn | None = None
) -> tuple[ReplayResult, CallFigures]:
    ds = dataset if isinstance(dataset, DecodedDataset) else open_dataset(dataset)
    return replay_unbounded(ds, progress=progress)
