"""Jobs for the two partition spaces of the chain (a run covers one partitions definition)."""

import dagster as dg

scope_job = dg.define_asset_job(
    "scope_job",
    selection=dg.AssetSelection.assets("raw_traces", "trace_scope"),
    description="Snapshot a corpus and prove its hash-id scope layout.",
)
decode_job = dg.define_asset_job(
    "decode_job",
    selection=dg.AssetSelection.assets(
        "decoded_dataset", "replay_benchmark", "manifest_blast_radius"
    ),
    description="Decode a corpus with one tokenizer, replay it through a prefix cache, and compare with the previous decode.",
)
live_replay_job = dg.define_asset_job(
    "live_replay_job",
    selection=dg.AssetSelection.assets("live_replay"),
    description="Replay a decoded corpus against the server configured in the live_server resource.",
)
