"""`decoded_dataset`: synthetic token datasets keyed by decode key (manifest version included)."""

import dagster as dg

from weka_assets.decoding.settings import DecodeSettings
from weka_assets.defs.helpers import decode_in_store, decoding_asset, key_values
from weka_assets.defs.outputs import DatasetRef, RawCorpus, ScopeGate
from weka_assets.defs.resources import DecodeOptions, WekaStore
from weka_assets.errors import WekaError
from weka_assets.progress import dagster_progress
from weka_assets.traces.reader import CorpusFormat
from weka_assets.traces.scope import ScopeReport

DESCRIPTIONS = {
    "decoded_dataset": "Hash ids decoded into synthetic tokens: each distinct (scope, id) block "
    "once, calls as block lists plus tail specs. Stored at its decode key; an existing key is "
    "reused, never rebuilt or overwritten.",
    "legacy_scope_dataset": "The same corpus decoded with the legacy per-session scope (each "
    "subagent on its own agent id): the historic loader bug, kept only to show what it cost "
    "(replay_benchmark compares the two). Stored and reused by its own decode key.",
}


def build_decoded_dataset(
    manifest_version: int, name: str = "decoded_dataset", scope_policy: str = "trace"
) -> dg.AssetsDefinition:
    """`decoded_dataset` (or, with the legacy `session` scope policy, `legacy_scope_dataset`)
    for one manifest version (injected, so tests can bump it)."""

    @dg.asset(
        name=name,
        description=DESCRIPTIONS[name],
        **decoding_asset(
            manifest_version, "decoded", {"python", "numpy", "parquet"}, corpus_inputs=True
        ),
    )
    def _decoded(
        context: dg.AssetExecutionContext,
        raw_traces: RawCorpus,
        trace_scope: ScopeGate,
        store: WekaStore,
        decode: DecodeOptions,
    ) -> dg.Output[DatasetRef]:
        keys = context.partition_key.keys_by_dimension
        corpus, tokenizer = keys["corpus"], keys["tokenizer"]
        report = ScopeReport.model_validate_json(store.read_bytes(trace_scope.report_key))
        settings: DecodeSettings = decode.settings(tokenizer, scope_policy=scope_policy)
        label = "legacy session scope: " if scope_policy == "session" else ""
        progress = dagster_progress(context, label=label)
        progress.expect("decode", report.traces)
        try:
            with progress:
                out = decode_in_store(
                    store,
                    store.pull(raw_traces.key),
                    settings,
                    report,
                    manifest_version,
                    progress=progress,
                    measure_drift=scope_policy == "trace",  # the legacy one is a comparison
                    digest=raw_traces.digest,  # verified by raw_traces: not hashed again
                    # as trace_scope read it (None, from before formats: detected)
                    fmt=CorpusFormat(trace_scope.format, trace_scope.block_size),
                )
        except WekaError as exc:
            raise dg.Failure(f"decoding {corpus!r} with {tokenizer!r}: {exc}") from None
        m = out.manifest
        verb = "reused existing" if out.reused else "decoded new"
        context.log.info(
            f"{verb} dataset {out.key} ({m.get('calls')} calls, {m.get('blocks')} blocks) in {out.seconds:.2f}s"
        )
        return dg.Output(
            DatasetRef(
                corpus=corpus,
                tokenizer=tokenizer,
                key=f"datasets/{out.key}",
                decode_key=out.key,
                manifest_version=m["manifest_version"],
                reused=out.reused,
            ),
            data_version=dg.DataVersion(out.key),
            metadata={
                "decode_key": out.key,
                "manifest_version": m["manifest_version"],
                "tokenizer": tokenizer,
                "reused": out.reused,
                "published": out.published,
                "dagster/row_count": m.get("calls", 0),
                "traces": m.get("traces", 0),
                "distinct_blocks": m.get("blocks", 0),
                "hash_ids": m.get("ids", 0),
                "prompt_tokens": m.get("prompt_tokens", 0),
                "seconds": round(out.seconds, 3),
                "dataset_path": dg.MetadataValue.path(store.url(f"datasets/{out.key}")),
                "manifest_path": dg.MetadataValue.path(
                    store.url(f"datasets/{out.key}/manifest.json")
                ),
                "key_material": dg.MetadataValue.json(out.material),
                "provenance_path": dg.MetadataValue.path(
                    store.url(f"provenance/datasets/{out.key}.json")
                ),
                "retokenization_drift": key_values(m.get("retokenization_drift", {})),
            },
        )

    return _decoded
