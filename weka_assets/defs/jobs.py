"""Jobs for the two partition spaces of the chain (a run covers one partitions definition)."""

import dagster as dg

# the chain of one corpus: its corpus-partitioned assets, then its corpus x tokenizer ones
CORPUS_ASSETS = ("raw_traces", "trace_scope")
DECODE_ASSETS = (
    "decoded_dataset",
    "legacy_scope_dataset",
    "legacy_scope_replay",
    "capacity_curve",
    "replay_benchmark",
    "manifest_blast_radius",
)

scope_job = dg.define_asset_job(
    "scope_job",
    selection=dg.AssetSelection.assets(*CORPUS_ASSETS),
    description="Snapshot a corpus and prove its hash-id scope layout.",
)
decode_job = dg.define_asset_job(
    "decode_job",
    selection=dg.AssetSelection.assets(*DECODE_ASSETS),
    description="Decode a corpus with one tokenizer, replay it through a prefix cache, and compare with the previous decode.",
)
live_replay_job = dg.define_asset_job(
    "live_replay_job",
    selection=dg.AssetSelection.assets("live_replay"),
    description="Replay a decoded corpus against the server configured in the live_server resource.",
)
export_job = dg.define_asset_job(
    "export_job",
    selection=dg.AssetSelection.assets("mooncake_export", "aiperf_payload_export"),
    description="Export a decoded corpus as Mooncake hash_ids lines and as aiperf token-id payloads (on demand).",
)
text_export_job = dg.define_asset_job(
    "text_export_job",
    selection=dg.AssetSelection.assets("text_export"),
    description="Export a decoded corpus as text prompts: a tokenizer decode of every call (on demand; slow on large corpora).",
)
