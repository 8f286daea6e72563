"""`manifest_blast_radius`: what the current decoder changed against the previous decode of the
same corpus and tokenizer (usually the previous manifest version), in calls, blocks and hit rate."""

import dagster as dg
import orjson

from weka_assets.decoding.dataset import open_dataset
from weka_assets.defs.assets.replay import stored_replay
from weka_assets.defs.helpers import decoding_asset, markdown_image, table
from weka_assets.defs.outputs import BlastRef, DatasetRef, ReplayRef
from weka_assets.defs.resources import WekaStore
from weka_assets.replay.blast_radius import RoleBlast, blast_radius, blast_radius_png, previous_key


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
        current = open_dataset(store.pull(decoded_dataset.key), verify=True)
        prev = previous_key(
            store.manifests("datasets"),
            {**current.manifest, "decode_key": decoded_dataset.decode_key},
        )
        previous = open_dataset(store.pull(f"datasets/{prev}"), verify=True) if prev else None
        # the replays already stored (this one by replay_benchmark), not computed again
        br, _ = blast_radius(
            current,
            previous,
            current_replay=stored_replay(store, replay_benchmark.decode_key),
            previous_replay=stored_replay(store, prev) if prev else None,
        )
        out_key = f"blast_radius/{br.current_key}-vs-{br.previous_key or 'none'}.json"
        store.write_bytes(
            out_key, orjson.dumps(br.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
        )
        png = blast_radius_png(br)
        plot_key = out_key.removesuffix(".json") + ".png"
        store.write_bytes(plot_key, png)
        summary = br.markdown()
        context.log.info(summary.splitlines()[0] if summary else "no change")
        return dg.Output(
            BlastRef(
                corpus=decoded_dataset.corpus,
                tokenizer=decoded_dataset.tokenizer,
                current_key=br.current_key,
                previous_key=br.previous_key,
                key=out_key,
                calls_tokens_changed=br.calls_tokens_changed,
                calls_cache_changed=br.calls_cache_changed,
            ),
            metadata={
                "summary": dg.MetadataValue.md(summary),
                "plot": dg.MetadataValue.md(markdown_image(png, "blast radius per role")),
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
                "blast_radius_path": dg.MetadataValue.path(store.url(out_key)),
                "plot_path": dg.MetadataValue.path(store.url(plot_key)),
            },
        )

    return manifest_blast_radius
