"""`live_replay`: a decoded corpus replayed against a real inference server, measured cached
tokens against the prediction for that server's block size. Materialized on demand (it needs
a server), never by automation."""

import dagster as dg

from weka_assets.decoding.dataset import open_dataset
from weka_assets.defs.helpers import decoding_asset, table
from weka_assets.defs.outputs import DatasetRef, LiveRef
from weka_assets.defs.resources import LiveServer, WekaStore
from weka_assets.progress import dagster_progress
from weka_assets.replay.live import LiveReplayError, answered_calls, run_live_replay

LIVE_GROUP = "live"


def _percentile_rows(result) -> list[dict]:
    rows = []
    for name in ("latency_s", "ttft_s"):
        p = getattr(result.totals, name).model_dump()
        rows.append({"figure": name, **{k: v for k, v in p.items()}})
    return rows


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
        options = live_server.options()
        ds = open_dataset(store.pull(decoded_dataset.key), verify=True)
        out_key = f"live/{decoded_dataset.decode_key}/{context.run.run_id}"
        out_path = store.dir(out_key) / "result.json"
        progress = dagster_progress(context, interval=5.0)
        on_call = answered_calls(progress, ds, options.max_context)

        try:
            with progress:
                result = run_live_replay(ds, options, out_path=out_path, progress=on_call)
        except LiveReplayError as exc:
            store.push(out_key)
            raise dg.Failure(
                f"live replay of {decoded_dataset.corpus!r} against {live_server.url}: {exc}",
                metadata={
                    "partial_result": dg.MetadataValue.path(store.url(f"{out_key}/result.json"))
                },
            ) from None
        store.push(out_key)
        t = result.totals
        context.log.info(result.summary())
        calls = [c.model_dump() for c in result.calls]
        return dg.Output(
            LiveRef(
                corpus=decoded_dataset.corpus,
                tokenizer=decoded_dataset.tokenizer,
                decode_key=decoded_dataset.decode_key,
                result_key=f"{out_key}/result.json",
                matched_calls=t.matched_calls,
                mismatched_calls=t.mismatched_calls,
            ),
            metadata={
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
                "per_call": table(calls),
                "decode_key": decoded_dataset.decode_key,
                "manifest_version": decoded_dataset.manifest_version,
                "result_path": dg.MetadataValue.path(store.url(f"{out_key}/result.json")),
            },
        )

    return live_replay
