"""Jobs for the two partition spaces of the chain (a run covers one partitions definition)."""

import dagster as dg

scope_job = dg.define_asset_job(
    "scope_job",
    selection=dg.AssetSelection.assets("raw_traces", "trace_scope"),
    description="Snapshot a corpus and prove its hash-id scope layout.",
)
decode_job = dg.define_asset_job(
    "decode_job",
    selection=dg.AssetSelection.assets("decoded_dataset", "replay_benchmark"),
    description="Decode a corpus with one tokenizer and replay it through a prefix cache.",
)
