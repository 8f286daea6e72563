"""`manifest_blast_radius`: what the current decoder changed against the previous decode of the
same corpus and tokenizer (usually the previous manifest version), in calls, blocks and hit rate."""

import dagster as dg

from weka_assets.defs.helpers import decoding_asset, markdown_image, table
from weka_assets.defs.outputs import BlastRef, DatasetRef, ReplayRef
from weka_assets.defs.resources import WekaStore
from weka_assets.replay.blast_radius import RoleBlast
from weka_assets.store_chain import BlastRadiusInStore, blast_radius_in_store


def blast_metadata(
    store: WekaStore, stored: BlastRadiusInStore, summary: str, manifest_version: int
) -> dict:
    """What the UI shows of a blast radius: the summary, the plot, the tables and the figures."""
    br = stored.blast
    return {
        "summary": dg.MetadataValue.md(summary),
        "plot": dg.MetadataValue.md(markdown_image(stored.png, "blast radius per role")),
        "by_role_and_cause": table(br.table),
        "by_role": table(
            [
                {"role": role, **{k: getattr(f, k) for k in RoleBlast.model_fields}}
                for role, f in [("all", br), *br.per_role.items()]
            ]
        ),
        "previous_decode_key": br.previous_key or "",
        "previous_manifest_version": br.previous_manifest_version or 0,
        "current_decode_key": br.current_key,
        "manifest_version": manifest_version,
        "dagster/row_count": br.calls,
        "calls_tokens_changed": br.calls_tokens_changed,
        "calls_cache_changed": br.calls_cache_changed,
        "full_blocks_changed": br.full_blocks_changed,
        "hit_rate_change": br.hit_rate_change if br.hit_rate_change is not None else 0.0,
        "decode_key": br.current_key,
        "blast_radius_path": dg.MetadataValue.path(store.url(stored.key)),
        "plot_path": dg.MetadataValue.path(store.url(stored.plot_key)),
    }


def build_manifest_blast_radius(manifest_version: int) -> dg.AssetsDefinition:
    """`manifest_blast_radius` for one manifest version (injected, so tests can bump it)."""

    @dg.asset(**decoding_asset(manifest_version, "replay", {"python"}))
    def manifest_blast_radius(
        context: dg.AssetExecutionContext,
        decoded_dataset: DatasetRef,
        replay_benchmark: ReplayRef,
        store: WekaStore,
    ) -> dg.Output[BlastRef]:
        """Calls whose tokens and whose cache behaviour changed against the newest earlier
        decode of the same corpus and tokenizer under another decode key, by role and by cause
        (block first sent by the parent, a sibling, or the call's own conversation), and the
        change in token-replay hit rate. Zero everywhere when a bump changed nothing."""
        # the replays already stored (this one by replay_benchmark), not computed again
        stored = blast_radius_in_store(
            store, decoded_dataset.key, decoded_dataset.decode_key, replay_benchmark.decode_key
        )
        br, summary = stored.blast, stored.blast.markdown()
        context.log.info(summary.splitlines()[0] if summary else "no change")
        return dg.Output(
            BlastRef(
                corpus=decoded_dataset.corpus,
                tokenizer=decoded_dataset.tokenizer,
                current_key=br.current_key,
                previous_key=br.previous_key,
                key=stored.key,
                calls_tokens_changed=br.calls_tokens_changed,
                calls_cache_changed=br.calls_cache_changed,
            ),
            metadata=blast_metadata(store, stored, summary, manifest_version),
        )

    return manifest_blast_radius


def build(manifest_version: int) -> list[dg.AssetsDefinition]:
    return [build_manifest_blast_radius(manifest_version)]
