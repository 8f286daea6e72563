"""`decoded_dataset` and `legacy_scope_dataset`: synthetic token datasets keyed by decode key
(manifest version included), decoded in one step that reads the corpus once: as trace_scope
parsed it (traces/parsed.py), else its JSON."""

import dagster as dg

from weka_assets import store_keys
from weka_assets.decoding.drift import DEFINITION as DRIFT_DEFINITION
from weka_assets.defs.helpers import decoding_asset, key_values
from weka_assets.defs.outputs import DatasetRef, RawCorpus, ScopeGate
from weka_assets.defs.resources import DecodeOptions, WekaStore
from weka_assets.errors import WekaError
from weka_assets.pipeline import DecodeOutcome, Variant
from weka_assets.progress import dagster_progress
from weka_assets.store_chain import decode_variants_in_store, kept_parse, read_scope_report
from weka_assets.traces.reader import CorpusFormat

DESCRIPTIONS = {
    "decoded_dataset": "Hash ids decoded into synthetic tokens: each distinct (scope, id) block "
    "once, calls as block lists plus tail specs. Stored at its decode key; an existing key is "
    "reused, never rebuilt or overwritten.",
    "legacy_scope_dataset": "The same corpus decoded with the legacy per-session scope (each "
    "subagent on its own agent id): the historic loader bug, kept only to show what it cost "
    "(replay_benchmark compares the two). Stored and reused by its own decode key.",
}
# each dataset's scope policy: the contract's, and the historic bug's
SCOPE_POLICIES = {"decoded_dataset": "trace", "legacy_scope_dataset": "session"}
# what the step's progress lines start with, by the datasets it decodes
LABELS = {
    ("decoded_dataset",): "",
    ("legacy_scope_dataset",): "legacy session scope: ",
    tuple(SCOPE_POLICIES): "trace and legacy session scopes: ",
}


def build_decoded_datasets(manifest_version: int) -> dg.AssetsDefinition:
    """Both datasets of a corpus x tokenizer partition for one manifest version (injected, so
    tests can bump it). One step: when both are selected, every trace is read and parsed once
    and decoded twice; either one can be materialized alone."""
    kw = decoding_asset(
        manifest_version, "decoded", {"python", "numpy", "parquet"}, corpus_inputs=True
    )
    per_asset = ("code_version", "group_name", "kinds", "owners", "io_manager_key")
    out_kw = {k: kw.pop(k) for k in (*per_asset, "automation_condition") if k in kw}

    @dg.multi_asset(
        name="decoded_datasets",
        outs={
            name: dg.AssetOut(description=DESCRIPTIONS[name], is_required=False, **out_kw)
            for name in SCOPE_POLICIES
        },
        can_subset=True,
        **kw,
    )
    def decoded_datasets(
        context: dg.AssetExecutionContext,
        raw_traces: RawCorpus,
        trace_scope: ScopeGate,
        store: WekaStore,
        decode: DecodeOptions,
    ):
        keys = context.partition_key.keys_by_dimension
        corpus, tokenizer = keys["corpus"], keys["tokenizer"]
        names = [n for n in SCOPE_POLICIES if n in context.selected_output_names]
        report = read_scope_report(store, trace_scope.report_key)
        variants = [
            # the legacy dataset is a comparison: no drift measurement
            Variant(
                decode.settings(tokenizer, scope_policy=SCOPE_POLICIES[n]), n == "decoded_dataset"
            )
            for n in names
        ]
        label = LABELS[tuple(names)]
        progress = dagster_progress(context, label=label)
        progress.expect("decode", report.traces)
        try:
            with progress:
                outs = decode_variants_in_store(
                    store,
                    store.pull(raw_traces.key),
                    variants,
                    report,
                    manifest_version,
                    progress=progress,
                    digest=raw_traces.digest,  # verified by raw_traces: not hashed again
                    # as trace_scope read it (None, from before formats: detected)
                    fmt=CorpusFormat(trace_scope.format, trace_scope.block_size),
                    parsed=kept_parse(store, trace_scope.parsed_key),
                )
        except WekaError as exc:
            raise dg.Failure(f"decoding {corpus!r} with {tokenizer!r}: {exc}") from None
        for name, out in zip(names, outs, strict=True):
            yield _output(context, name, out, corpus, tokenizer, store)

    return decoded_datasets


def _output(context, name: str, out: DecodeOutcome, corpus: str, tokenizer: str, store):
    m = out.manifest
    verb = "reused existing" if out.reused else "decoded new"
    context.log.info(
        f"{name}: {verb} dataset {out.key} ({m.get('calls')} calls, {m.get('blocks')} blocks) in {out.seconds:.2f}s"
    )
    return dg.Output(
        DatasetRef(
            corpus=corpus,
            tokenizer=tokenizer,
            key=store_keys.dataset(out.key),
            decode_key=out.key,
            manifest_version=m["manifest_version"],
            reused=out.reused,
        ),
        output_name=name,
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
            # what a new dataset was decoded from: trace_scope's kept parse, or the JSON
            **({} if out.reused else {"decoded_from": "parse" if out.from_parse else "json"}),
            "dataset_path": dg.MetadataValue.path(store.url(store_keys.dataset(out.key))),
            "manifest_path": dg.MetadataValue.path(store.url(store_keys.dataset_manifest(out.key))),
            "key_material": dg.MetadataValue.json(out.material),
            "provenance_path": dg.MetadataValue.path(
                store.url(store_keys.dataset_provenance(out.key))
            ),
            "retokenization_drift": key_values(m.get("retokenization_drift", {})),
            "retokenization_drift_definition": DRIFT_DEFINITION,
        },
    )


def build(manifest_version: int) -> list[dg.AssetsDefinition]:
    return [build_decoded_datasets(manifest_version)]
