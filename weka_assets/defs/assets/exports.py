"""`mooncake_export`, `aiperf_payload_export`, `text_export`: a decoded dataset as the files
other benchmark tools read (weka_assets/exports), stored at `exports/<decode key>/`.

Thin assets: one `export_in_store` call (`weka_assets.store_chain`), then the descriptor and metadata. They carry the
manifest version in their code version like every asset built on a decoded dataset, so a bump
makes them stale with the rest. They are on demand (no automation condition, not in
`decode_job` nor `weka-assets materialize`): they copy what the dataset already holds into
other formats, and two of them are as large as the token stream itself, which is what the
compact dataset exists to avoid storing (`aiperf-payload`: every token id as JSON, about 0.8 GB
for the 30 real traces; `text` also runs a tokenizer decode of every call, about 45 s there and
hours for a billion-token corpus). `export_job` builds the two token-id exports; `text_export`
has a job of its own.
"""

import dagster as dg

from weka_assets.defs.helpers import decoding_asset, key_values
from weka_assets.defs.outputs import DatasetRef, ExportRef
from weka_assets.defs.resources import WekaStore
from weka_assets.exports import ExportError
from weka_assets.store_chain import export_in_store

EXPORTS = {  # asset name -> format
    "mooncake_export": "mooncake",
    "aiperf_payload_export": "aiperf-payload",
    "text_export": "text",
}
DESCRIPTIONS = {
    "mooncake": "One Mooncake line per call in corpus timeline order: timestamp (ms), input and "
    "output length, and the whole prompt's hash_ids renumbered into one corpus-wide namespace "
    "that keeps the decoded scope (what aiperf analyze-trace, vLLM and SGLang benchmarks read).",
    "aiperf-payload": "aiperf mooncake_trace lines carrying each call's exact decoded token ids "
    "as a verbatim /v1/completions body, with its timestamp and session (conversation).",
    "text": "Each call's prompt as text (the dataset's tokenizer decode of its tokens), with "
    "session, delay and max_tokens, for text-only clients; the metadata states the "
    "re-tokenisation drift such a client sees.",
}


def _export_asset(name: str, fmt: str, manifest_version: int) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        description=DESCRIPTIONS[fmt],
        **decoding_asset(manifest_version, "exports", {"python", "json"}, automated=False),
    )
    def _asset(
        context: dg.AssetExecutionContext, decoded_dataset: DatasetRef, store: WekaStore
    ) -> dg.Output[ExportRef]:
        try:
            summary, key, meta_key = export_in_store(
                store, decoded_dataset.key, decoded_dataset.decode_key, fmt
            )
        except ExportError as exc:
            raise dg.Failure(f"{name} of {decoded_dataset.decode_key}: {exc}") from None
        context.log.info(f"{fmt}: {summary.lines} lines, {summary.bytes:,} bytes at {key}")
        meta = summary.meta
        extra = {
            k: meta[k]
            for k in ("block_size", "distinct_blocks", "tokens", "characters")
            if meta.get(k) is not None
        }
        if "retokenization_drift" in meta:
            extra["retokenization_drift"] = key_values(meta["retokenization_drift"])
        return dg.Output(
            ExportRef(
                corpus=decoded_dataset.corpus,
                tokenizer=decoded_dataset.tokenizer,
                decode_key=decoded_dataset.decode_key,
                format=fmt,
                key=key,
                meta_key=meta_key,
                lines=summary.lines,
                sha256=summary.sha256,
            ),
            data_version=dg.DataVersion(summary.sha256[:24]),
            metadata={
                "format": fmt,
                "dagster/row_count": summary.lines,
                "bytes": summary.bytes,
                "sha256": summary.sha256,
                "ordering": meta["ordering"],
                "decode_key": decoded_dataset.decode_key,
                "manifest_version": decoded_dataset.manifest_version,
                "tokenizer": decoded_dataset.tokenizer,
                **extra,
                "path": dg.MetadataValue.path(store.url(key)),
                "meta_path": dg.MetadataValue.path(store.url(meta_key)),
            },
        )

    return _asset


def build_export_assets(manifest_version: int) -> list[dg.AssetsDefinition]:
    """The three export assets for one manifest version (injected, so tests can bump it)."""
    return [_export_asset(name, fmt, manifest_version) for name, fmt in EXPORTS.items()]


build = build_export_assets

JOBS = [
    dg.define_asset_job(
        "export_job",
        selection=dg.AssetSelection.assets("mooncake_export", "aiperf_payload_export"),
        description="Export a decoded corpus as Mooncake hash_ids lines and as aiperf token-id payloads (on demand).",
    ),
    dg.define_asset_job(
        "text_export_job",
        selection=dg.AssetSelection.assets("text_export"),
        description="Export a decoded corpus as text prompts: a tokenizer decode of every call (on demand; slow on large corpora).",
    ),
]
