"""`live_replay`: a decoded corpus replayed against a real inference server, measured cached
tokens against the prediction for that server's block size. Materialized on demand (it needs
a server), never by automation: its own job, `live_replay_job`."""

import dagster as dg

from weka_assets import store_keys
from weka_assets.defs.helpers import decoding_asset, table
from weka_assets.defs.outputs import DatasetRef, LiveRef
from weka_assets.defs.resources import LiveServer, WekaStore
from weka_assets.progress import dagster_progress
from weka_assets.replay.live import LiveReplayError
from weka_assets.store_chain import live_replay_in_store

LIVE_GROUP = "live"

JOBS = [
    dg.define_asset_job(
        "live_replay_job",
        selection=dg.AssetSelection.assets("live_replay"),
        description="Replay a decoded corpus against the server configured in the live_server resource.",
    )
]


def _percentile_rows(result) -> list[dict]:
    rows = []
    for name in ("latency_s", "ttft_s"):
        p = getattr(result.totals, name).model_dump()
        rows.append({"figure": name, **{k: v for k, v in p.items()}})
    return rows


def live_metadata(result, live_server: LiveServer) -> dict:
    """What the UI shows of a live replay: the summary, the counts, the percentiles, per call."""
    t = result.totals
    return {
        "summary": dg.MetadataValue.md(result.summary()),
        "server": live_server.url,
        "model": live_server.model,
        "dagster/row_count": t.sent,
        "cached_tokens": t.cached_tokens,
        "predicted_cached_tokens": t.predicted_cached_tokens,
        "matched_calls": t.matched_calls,
        "mismatched_calls": t.mismatched_calls,
        "mismatches_by_explanation": dg.MetadataValue.json(t.mismatches_by_explanation),
        "dropped_calls": t.dropped_calls,
        "errors": t.errors,
        "latency_and_ttft": table(_percentile_rows(result)),
        "per_call": table([c.model_dump() for c in result.calls]),
    }


def build_live_replay(manifest_version: int) -> dg.AssetsDefinition:
    @dg.asset(**decoding_asset(manifest_version, LIVE_GROUP, {"python"}, automated=False))
    def live_replay(
        context: dg.AssetExecutionContext,
        decoded_dataset: DatasetRef,
        store: WekaStore,
        live_server: LiveServer,
    ) -> dg.Output[LiveRef]:
        """The decoded prompts sent as token ids to a real server on the recorded schedule;
        per call the server's cached tokens against the prediction for its block size, with
        latency and time-to-first-token percentiles. A server that fails mid-run fails the
        partition and keeps the partial result."""
        if not live_server.url or not live_server.model:
            raise dg.Failure(
                "live_replay needs a server: set the live_server resource's url and model"
            )
        ds, run_id = decoded_dataset, context.run.run_id
        progress = dagster_progress(context, interval=5.0)
        try:
            result, result_key = live_replay_in_store(
                store, ds.key, ds.decode_key, run_id, live_server.options(), progress
            )
        except LiveReplayError as exc:
            partial = store.url(store_keys.live_result(ds.decode_key, run_id))
            raise dg.Failure(
                f"live replay of {ds.corpus!r} against {live_server.url}: {exc}",
                metadata={"partial_result": dg.MetadataValue.path(partial)},
            ) from None
        context.log.info(result.summary())
        t = result.totals
        return dg.Output(
            LiveRef(
                corpus=ds.corpus,
                tokenizer=ds.tokenizer,
                decode_key=ds.decode_key,
                result_key=result_key,
                matched_calls=t.matched_calls,
                mismatched_calls=t.mismatched_calls,
            ),
            metadata={
                **live_metadata(result, live_server),
                "decode_key": ds.decode_key,
                "manifest_version": ds.manifest_version,
                "result_path": dg.MetadataValue.path(store.url(result_key)),
            },
        )

    return live_replay


def build(manifest_version: int) -> list[dg.AssetsDefinition]:
    return [build_live_replay(manifest_version)]
