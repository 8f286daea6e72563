"""`decoded_dataset`: synthetic token datasets keyed by decode key (manifest version included)."""

import dataclasses

import dagster as dg

from weka_assets.decoding.dataset import read_manifest
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.defs.automation import rebuild_condition
from weka_assets.defs.metadata import key_values
from weka_assets.defs.outputs import DatasetRef, RawCorpus, ScopeGate
from weka_assets.defs.partitions import corpus_mapping, corpus_tokenizer_partitions
from weka_assets.defs.resources import DecodeOptions, WekaStore
from weka_assets.errors import WekaError
from weka_assets.pipeline import decode_corpus
from weka_assets.progress import dagster_progress
from weka_assets.traces.reader import CorpusFormat
from weka_assets.traces.scope import ScopeReport


def manifest_code_version(manifest_version: int) -> str:
    """The code version of every asset whose bytes depend on decoding."""
    return f"manifest-v{manifest_version}"


def decoding_asset(
    manifest_version: int,
    group: str,
    kinds: set[str],
    *,
    corpus_inputs: bool = False,
    automated: bool = True,
) -> dict:
    """`@dg.asset` arguments shared by every corpus x tokenizer asset built on a decoded dataset:
    the manifest version in the code version, the partitions, and (optionally) the corpus-level
    inputs mapped onto the corpus dimension."""
    kwargs = dict(
        partitions_def=corpus_tokenizer_partitions,
        code_version=manifest_code_version(manifest_version),
        group_name=group,
        kinds=kinds,
        owners=["team:weka-assets"],
        io_manager_key="descriptor_io_manager",
    )
    if corpus_inputs:
        kwargs["ins"] = {
            "raw_traces": dg.AssetIn(partition_mapping=corpus_mapping),
            "trace_scope": dg.AssetIn(partition_mapping=corpus_mapping),
        }
    if automated:
        kwargs["automation_condition"] = rebuild_condition()
    return kwargs


def decode_in_store(
    store: WekaStore,
    corpus_path,
    settings: DecodeSettings,
    report: ScopeReport,
    manifest_version: int,
    **kw,
):
    """decode_corpus into the store's datasets/: an existing key (also a remote one) is reused;
    a new dataset is published exclusively (its manifest last, with conditional writes on S3),
    so of two machines decoding one key at once, one publishes and the other adopts its
    dataset. Its provenance goes to `provenance/datasets/<key>.json`, beside it."""

    def fetch_existing(key: str) -> bool:
        if store.exists(f"datasets/{key}/manifest.json"):
            store.pull(f"datasets/{key}")
            return True
        return False

    out = decode_corpus(
        corpus_path, store.dir("datasets"), settings, report=report, manifest_version=manifest_version,
        fetch_existing=fetch_existing, provenance_dir=store.dir("provenance/datasets"), **kw,
    )  # fmt: skip
    if out.reused:
        return out
    record = f"provenance/datasets/{out.key}.json"
    won = store.publish(f"datasets/{out.key}")
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


def build_decoded_dataset(manifest_version: int) -> dg.AssetsDefinition:
    """`decoded_dataset` for one manifest version (injected, so tests can bump it)."""

    @dg.asset(
        **decoding_asset(
            manifest_version, "decoded", {"python", "numpy", "parquet"}, corpus_inputs=True
        )
    )
    def decoded_dataset(
        context: dg.AssetExecutionContext,
        raw_traces: RawCorpus,
        trace_scope: ScopeGate,
        store: WekaStore,
        decode: DecodeOptions,
    ) -> dg.Output[DatasetRef]:
        """Hash ids decoded into synthetic tokens: each distinct (scope, id) block once, calls as
        block lists plus tail specs. Stored at its decode key; an existing key is reused, never
        rebuilt or overwritten."""
        keys = context.partition_key.keys_by_dimension
        corpus, tokenizer = keys["corpus"], keys["tokenizer"]
        report = ScopeReport.model_validate_json(store.read_bytes(trace_scope.report_key))
        settings: DecodeSettings = decode.settings(tokenizer)
        progress = dagster_progress(context)
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

    return decoded_dataset
