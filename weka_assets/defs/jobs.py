"""Jobs for the two partition spaces of the chain (a run covers one partitions definition),
derived from the assets (`defs/assets`, `MODULES`): the corpus's assets, then its corpus x
tokenizer assets that automation builds; on-demand assets bring their own jobs."""

import dagster as dg

from weka_assets.defs.assets import build_assets, on_demand_jobs
from weka_assets.defs.partitions import corpus_partitions


def chain_assets(assets: list[dg.AssetsDefinition]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(corpus assets, decode assets) of a corpus's chain, in definition order: the assets
    partitioned by corpus, then the others that automation builds (not `live_replay`, which
    needs a server, nor the exports: both run only on demand)."""
    corpus, decode = [], []
    for a in assets:
        for key in a.keys_by_output_name.values():  # in the order of its outs
            if a.partitions_def == corpus_partitions:
                corpus.append(key.to_user_string())
            elif a.automation_conditions_by_key.get(key) is not None:
                decode.append(key.to_user_string())
    return tuple(corpus), tuple(decode)


# the chain of one corpus: what `weka-assets launch` and `materialize` submit
CORPUS_ASSETS, DECODE_ASSETS = chain_assets(build_assets())


def build_jobs(assets: list[dg.AssetsDefinition]) -> list:
    """`scope_job` and `decode_job` over the chain of `assets`, then the on-demand jobs."""
    corpus, decode = chain_assets(assets)
    return [
        dg.define_asset_job(
            "scope_job",
            selection=dg.AssetSelection.assets(*corpus),
            description="Snapshot a corpus and prove its hash-id scope layout.",
        ),
        dg.define_asset_job(
            "decode_job",
            selection=dg.AssetSelection.assets(*decode),
            description="Decode a corpus with one tokenizer, replay it through a prefix cache, and compare with the previous decode.",
        ),
        *on_demand_jobs(),
    ]
