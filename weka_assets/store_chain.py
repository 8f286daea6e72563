"""The chain against a store: for each step, which keys it reads, writes and reuses
(`weka_assets.store_keys`), around the plain functions of `weka_assets.pipeline`.

The assets call these (one call each, then their outputs and metadata), and so do the command
line and the tools that read a store. `store` is a `weka_assets.store.Store`, or anything with
its methods (the Dagster resource `WekaStore` delegates to one). `progress` is a `ProgressFn`
(entered as a context manager when it is one, so its last stage's line goes out at the end).
No Dagster here.
"""

import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import orjson

from weka_assets import store_keys as keys
from weka_assets.decoding.dataset import DecodedDataset, open_dataset, read_manifest
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.errors import WekaError
from weka_assets.parallel import in_worker
from weka_assets.pipeline import (
    DecodeOutcome,
    ProgressFn,
    Variant,
    decode_variants,
    provenance,
    replay,
    scope_report,
    write_json,
)
from weka_assets.traces.parsed import keep_parse
from weka_assets.traces.reader import CorpusFormat, detect_format
from weka_assets.traces.scope import Policy, ScopeReport


class SizingError(WekaError):
    """The capacity sweep's settings cannot be used (an unknown KV model, a bad tier)."""


def _entered(stack: ExitStack, progress) -> None:
    if progress is not None and hasattr(progress, "__enter__"):
        stack.enter_context(progress)


# ---- scope ------------------------------------------------------------------------------------
@dataclass
class ScopeInStore:
    report: ScopeReport  # relative to the corpus folder: the same bytes on every machine
    report_key: str
    fmt: CorpusFormat
    parsed_key: str | None  # the parse kept for the decodes; None: not kept


def scope_in_store(
    store,
    snapshot_key: str,
    digest: str,
    policy: Policy = "fail",
    corpus_format: CorpusFormat | None = None,
    progress: ProgressFn | None = None,
) -> ScopeInStore:
    """The corpus report of a stored snapshot, kept at `scope/...`; what the pass parsed is
    kept at `parsed/...` for the decodes after it (one per tokenizer), which then never parse
    the JSON again. The registry's block size (a format whose traces state none) tags both
    keys: the report then depends on more than the bytes."""
    corpus = store.pull(snapshot_key)
    fmt = detect_format(corpus, corpus_format)
    tag = keys.format_tag(fmt.format, fmt.corpus_block_size)
    parsed_key = keys.parsed(digest, tag)
    with ExitStack() as stack:
        _entered(stack, progress)
        kept = stack.enter_context(keep_parse(store.local(parsed_key), digest, fmt))
        report = scope_report(corpus, policy, progress, fmt, kept)
    if kept.written:
        store.push(parsed_key)
    report = report.relative_to(corpus)  # stored: the same bytes whichever machine wrote it
    report_key = keys.scope_report(digest, tag, report.policy)
    store.write_bytes(
        report_key, orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
    )
    return ScopeInStore(report, report_key, fmt, parsed_key if kept.written else None)


def read_scope_report(store, report_key: str) -> ScopeReport:
    return ScopeReport.model_validate_json(store.read_bytes(report_key))


def kept_parse(store, parsed_key: str | None) -> Path | None:
    """The corpus as its scope pass parsed it, when it kept its parse (the decode checks that
    it is this corpus's current one, else parses the JSON)."""
    if parsed_key is None or not store.exists(parsed_key):
        return None
    return store.pull(parsed_key)


# ---- decode -----------------------------------------------------------------------------------
def decode_in_store(
    store,
    corpus_path,
    settings: DecodeSettings,
    report: ScopeReport,
    manifest_version: int,
    measure_drift: bool = True,
    **kw,
) -> DecodeOutcome:
    """`decode_variants_in_store` of one dataset."""
    variant = Variant(settings, measure_drift)
    return decode_variants_in_store(store, corpus_path, [variant], report, manifest_version, **kw)[
        0
    ]


def decode_variants_in_store(
    store,
    corpus_path,
    variants: list[Variant],
    report: ScopeReport,
    manifest_version: int,
    **kw,
) -> list[DecodeOutcome]:
    """decode_variants into the store's datasets/ (one pass for every dataset not stored yet):
    an existing key (also a remote one) is reused; a new dataset is published exclusively (its
    manifest last, with conditional writes on S3), so of two machines decoding one key at
    once, one publishes and the other adopts its dataset. Its provenance goes to
    `provenance/datasets/<key>.json`, beside it."""

    def fetch_existing(key: str) -> bool:
        if store.exists(keys.dataset_manifest(key)):
            store.pull(keys.dataset(key))
            return True
        return False

    outs = decode_variants(
        corpus_path, store.dir(keys.DATASETS), variants, report,
        manifest_version=manifest_version, fetch_existing=fetch_existing,
        provenance_dir=store.dir(keys.DATASET_PROVENANCE), **kw,
    )  # fmt: skip
    return [_stored(store, out) for out in outs]


def _stored(store, out: DecodeOutcome) -> DecodeOutcome:
    """A decode's outcome once its new dataset is published in the store (or adopted: another
    machine's copy was there first)."""
    if out.reused:
        return out
    record = keys.dataset_provenance(out.key)
    won = store.publish(keys.dataset(out.key))
    if won and out.published:
        store.push(record)
        return out
    if not out.published:  # another process here published it first (out tells its dataset)
        return out
    # another machine published first: the local copy is now its dataset, and our provenance
    # record describes a dataset that was never stored
    store.local(record).unlink(missing_ok=True)
    return dataclasses.replace(
        out, manifest=read_manifest(out.path), published=False, provenance={}
    )


def open_stored_dataset(store, dataset_key: str) -> DecodedDataset:
    """A stored dataset, pulled and verified against its manifest's checksums."""
    return open_dataset(store.pull(dataset_key), verify=True)


# ---- replay -----------------------------------------------------------------------------------
# per_call.parquet column -> CallFigures field
PER_CALL_FIGURES = {
    "ids": "total",
    "hits": "hits",
    "full_blocks": "full_total",
    "full_hits": "full_hits",
    "token_blocks": "token_total",
    "token_hits": "token_hits",
}


def write_per_call(ds: DecodedDataset, cf, path) -> None:
    """The per-call figures of a replay as parquet, one row per call in dataset order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from weka_assets.atomic import atomic_write

    c = {k: ds.column(k) for k in ("trace", "conv", "request", "inner", "role")}
    per_call = pa.table(
        {
            "trace": c["trace"], "conv": c["conv"], "request": c["request"], "inner": c["inner"],
            "role": c["role"], "ids": cf.total, "hits": cf.hits, "full_blocks": cf.full_total,
            "full_hits": cf.full_hits, "token_blocks": cf.token_total, "token_hits": cf.token_hits,
        }
    )  # fmt: skip
    with atomic_write(path) as fh:
        pq.write_table(per_call, fh)


@dataclass
class ReplayInStore:
    result: object  # ReplayResult
    dataset: DecodedDataset
    decode_key: str
    result_key: str
    per_call_key: str
    provenance_key: str


def replay_in_store(
    store, dataset_key: str, decode_key: str, progress: ProgressFn | None = None
) -> ReplayInStore:
    """The unbounded replay of a stored dataset, kept at `replay/<decode key>/` (result.json,
    per_call.parquet) with its provenance beside (`provenance/replay/<decode key>.json`)."""
    ds = open_stored_dataset(store, dataset_key)
    with ExitStack() as stack:
        _entered(stack, progress)
        result, cf = replay(ds, progress)
    out_dir = store.dir(keys.replay_dir(decode_key))
    write_json(result, out_dir / keys.RESULT)
    write_per_call(ds, cf, out_dir / keys.PER_CALL)
    result_key = keys.replay_file(decode_key, keys.RESULT)
    per_call_key = keys.replay_file(decode_key, keys.PER_CALL)
    store.push(result_key)
    store.push(per_call_key)
    # where and when, beside the results (their bytes depend on the dataset only)
    record_key = keys.replay_provenance(decode_key)
    store.write_bytes(record_key, orjson.dumps(provenance(out_dir), option=orjson.OPT_INDENT_2))
    return ReplayInStore(result, ds, decode_key, result_key, per_call_key, record_key)


def read_replay_result(store, result_key: str):
    from weka_assets.replay.unbounded import ReplayResult

    return ReplayResult.model_validate_json(store.read_bytes(result_key))


def stored_replay(store, decode_key: str):
    """The unbounded replay of a dataset as stored by `replay_in_store` (its result and
    per-call figures, `(ReplayResult, CallFigures)`), or None when it was never replayed into
    this store."""
    import numpy as np
    import pyarrow.parquet as pq

    from weka_assets.replay.unbounded import CallFigures

    result_key = keys.replay_file(decode_key, keys.RESULT)
    per_call_key = keys.replay_file(decode_key, keys.PER_CALL)
    if not (store.exists(result_key) and store.exists(per_call_key)):
        return None
    result = read_replay_result(store, result_key)
    t = pq.read_table(store.pull(per_call_key))
    cols = {name: t.column(name).to_numpy().astype(np.int64) for name in PER_CALL_FIGURES}
    return result, CallFigures(**{field: cols[name] for name, field in PER_CALL_FIGURES.items()})


def policy_comparison(correct, legacy) -> list[dict]:
    """Token-replay hit rate per role under the contract's `trace` scope and the legacy `session` one."""
    rows = []
    for role, ok, bad in [("all", correct, legacy)] + [
        (r, correct.per_role[r], legacy.per_role[r]) for r in correct.per_role
    ]:
        rows.append(
            {
                "role": role,
                "calls": ok.calls,
                "token_hit_rate_trace_scope": ok.token_replay_hit_rate,
                "token_hit_rate_session_scope": bad.token_replay_hit_rate,
                "hits_lost_by_session_scope": ok.token_hits - bad.token_hits,
                "calls_that_lose_hits": bad.fidelity_mismatched_calls,
            }
        )
    return rows


def compare_scope_policies_in_store(store, replayed: ReplayInStore, legacy_result_key: str):
    """The replay beside the legacy per-session scope's (stored at `legacy_result_key`), kept
    at `replay/<decode key>/scope_policy_comparison.json`: (legacy result, rows)."""
    legacy = read_replay_result(store, legacy_result_key)
    result = replayed.result
    comparison = policy_comparison(result, legacy)
    both = {"trace": result.model_dump(mode="json"), "session": legacy.model_dump(mode="json")}
    out_dir = store.dir(keys.replay_dir(replayed.decode_key))
    write_json({**both, "rows": comparison}, out_dir / keys.SCOPE_POLICY_COMPARISON)
    store.push(keys.replay_file(replayed.decode_key, keys.SCOPE_POLICY_COMPARISON))
    return legacy, comparison


# ---- capacity ---------------------------------------------------------------------------------
def capacity_figures(ds: DecodedDataset, options) -> tuple:
    """The shared-LRU capacity sweep of a dataset (bounded by `capacity_max_blocks`), its plot,
    and how many traces it covers: `sized_report`, the command line's `replay --capacity`,
    with the LRU policy alone. `options`: the replay options (`capacity_max_blocks`,
    `arrival`, `time_scale`, `kv_model`, `kv_model_revision`, `points`)."""
    from weka_assets.replay.capacity import KV_PRESETS, plot_png
    from weka_assets.replay.sizing import sized_report

    try:
        report, n = sized_report(
            ds,
            max_blocks=options.capacity_max_blocks,
            arrival_mode=options.arrival,
            time_scale=options.time_scale,
            kv_model=options.kv_model or None,
            kv_model_revision=options.kv_model_revision or None,
            points=options.points,
        )
    except ValueError as exc:
        raise SizingError(f"kv_model: {exc} (presets: {', '.join(KV_PRESETS)})") from None
    curve = report.curve("lru")
    # drawn here, once the sweep has freed its arrays: the run's process imports matplotlib
    # (0.3 s, about 30 MB) once for this plot and the blast radius's, where a worker of its
    # own imported it again for this one (0.5 s in all)
    return curve, plot_png(curve), n


def policy_report(ds: DecodedDataset, options, entry, corpus: str) -> tuple | None:
    """Every configured policy at the same capacities, and the tiers and fleet of the corpus's
    sizing (registry entry, else `options.sizing`), over the leading traces up to
    `policy_max_blocks`: (CapacityReport, traces covered); None when only lru is asked and no
    tiers or fleet.

    A stored dataset's sweep runs in a worker process of its own (`parallel.in_worker`): the
    vllm and opt policies compile with numba, whose compiler and LLVM stay loaded in the
    process that imports them (about 150 MB measured after the sweep, the dataset freed), and a
    Dagster run executes every later step in this one."""
    sizing, model, revision = options.sizing(entry)
    if sizing.policies == ["lru"] and not sizing.tiers and sizing.replicas == 1:
        return None
    kw = dict(
        max_blocks=options.policy_max_blocks,
        arrival_mode=options.arrival,
        time_scale=options.time_scale,
        kv_model=model,
        kv_model_revision=revision,
        points=options.points,
        options=sizing,
    )
    try:
        if ds.path is None:  # in memory: here
            from weka_assets.replay.sizing import sized_report

            return sized_report(ds, **kw)
        from weka_assets.replay.sizing import sized_report_at

        return in_worker(sized_report_at, str(ds.path), kw)
    except ValueError as exc:
        raise SizingError(f"capacity sizing of corpus {corpus!r}: {exc}") from None


@dataclass
class CapacityInStore:
    curve: object  # CapacityCurve
    traces: int  # the leading traces the sweep covers
    dataset_traces: int
    curve_key: str
    plot_key: str
    report_key: str | None = None  # the policy sweep, tiers and fleet, when configured
    policy_plot_key: str | None = None
    report_traces: int | None = None


def capacity_in_store(
    store, dataset_key: str, decode_key: str, options, entry, corpus: str
) -> CapacityInStore:
    """The capacity sweep of a stored dataset (`capacity_figures`) and, when configured, every
    policy, tier and fleet (`policy_report`), kept at `replay/<decode key>/`."""
    from weka_assets.atomic import atomic_write
    from weka_assets.replay.sizing import plot_png as sizing_plot_png

    ds = open_stored_dataset(store, dataset_key)
    # the policy sweep's worker first, while this process holds least (the LRU sweep's arrays
    # and matplotlib come after): the two processes' peaks do not add up
    sized = policy_report(ds, options, entry, corpus)
    curve, png, covered = capacity_figures(ds, options)
    out_dir = store.dir(keys.replay_dir(decode_key))
    write_json(curve, out_dir / keys.CAPACITY_CURVE)
    with atomic_write(out_dir / keys.CAPACITY_PLOT) as fh:
        fh.write(png)
    out = CapacityInStore(
        curve, covered, len(ds.traces),
        keys.replay_file(decode_key, keys.CAPACITY_CURVE),
        keys.replay_file(decode_key, keys.CAPACITY_PLOT),
    )  # fmt: skip
    store.push(out.curve_key)
    store.push(out.plot_key)
    if sized is not None:
        write_json(sized[0], out_dir / keys.CAPACITY_REPORT)
        with atomic_write(out_dir / keys.CAPACITY_POLICY_PLOT) as fh:
            fh.write(sizing_plot_png(sized[0]))
        out.report_key = keys.replay_file(decode_key, keys.CAPACITY_REPORT)
        out.policy_plot_key = keys.replay_file(decode_key, keys.CAPACITY_POLICY_PLOT)
        out.report_traces = sized[1]
        store.push(out.report_key)
        store.push(out.policy_plot_key)
    return out


# ---- blast radius -----------------------------------------------------------------------------
@dataclass
class BlastRadiusInStore:
    blast: object  # replay.blast_radius.BlastRadius
    key: str
    plot_key: str
    png: bytes


def blast_radius_in_store(
    store, dataset_key: str, decode_key: str, replayed_key: str | None = None
) -> BlastRadiusInStore:
    """What the dataset at `dataset_key` changed against the newest earlier decode of the same
    inputs in the store, from the replays already stored (never computed again when there;
    this one's under `replayed_key`, default `decode_key`), kept at
    `blast_radius/<current>-vs-<previous>.json` with its plot."""
    from weka_assets.replay.blast_radius import blast_radius, blast_radius_png, previous_key

    current = open_stored_dataset(store, dataset_key)
    prev = previous_key(
        store.manifests(keys.DATASETS), {**current.manifest, "decode_key": decode_key}
    )
    previous = open_stored_dataset(store, keys.dataset(prev)) if prev else None
    br, _ = blast_radius(
        current,
        previous,
        current_replay=stored_replay(store, replayed_key or decode_key),
        previous_replay=stored_replay(store, prev) if prev else None,
    )
    out_key = keys.blast_radius(br.current_key, br.previous_key)
    store.write_bytes(out_key, orjson.dumps(br.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
    png = blast_radius_png(br)
    plot_key = keys.blast_radius_plot(br.current_key, br.previous_key)
    store.write_bytes(plot_key, png)
    return BlastRadiusInStore(br, out_key, plot_key, png)


# ---- live replay ------------------------------------------------------------------------------
def live_replay_in_store(
    store, dataset_key: str, decode_key: str, run_id: str, options, progress=None
):
    """A stored dataset replayed against a real server (`options`: `LiveOptions`), its result
    kept at `live/<decode key>/<run id>/result.json`: (result, result key). A server that
    fails mid-run raises `LiveReplayError` after the partial result is stored."""
    from weka_assets.replay.live import LiveReplayError, answered_calls, run_live_replay

    ds = open_stored_dataset(store, dataset_key)
    out_key = keys.live_run(decode_key, run_id)
    out_path = store.dir(out_key) / keys.RESULT
    on_call = answered_calls(progress, ds, options.max_context) if progress else None
    try:
        with ExitStack() as stack:
            _entered(stack, progress)
            result = run_live_replay(ds, options, out_path=out_path, progress=on_call)
    except LiveReplayError:
        store.push(out_key)  # the partial result
        raise
    store.push(out_key)
    return result, keys.live_result(decode_key, run_id)


# ---- exports ----------------------------------------------------------------------------------
def export_in_store(store, dataset_key: str, decode_key: str, fmt: str):
    """A stored dataset as `fmt` (weka_assets.exports) at `exports/<decode key>/<fmt>.jsonl`,
    its sidecar pushed last (a reader that finds it finds the whole file): (summary, key,
    sidecar key). Raises `ExportError`."""
    from weka_assets.exports import export_dataset

    key, meta_key = keys.export(decode_key, fmt), keys.export_meta(decode_key, fmt)
    summary = export_dataset(store.pull(dataset_key), fmt, store.local(key))
    store.push(key)
    store.push(meta_key)
    return summary, key, meta_key
