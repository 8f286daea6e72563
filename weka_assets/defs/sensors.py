"""Discovery and refresh: new registry entries become partitions and moved upstream revisions
get a `raw_traces` run, without anyone remembering to click."""

import json

import dagster as dg

from weka_assets import env
from weka_assets.defs.partitions import corpus_partitions, corpus_tags
from weka_assets.defs.resources import CorpusCatalog
from weka_assets.errors import WekaError
from weka_assets.sources import resolve_revision

RAW = dg.AssetKey("raw_traces")
# read when the code location loads (a schedule's cron is part of its definition)
REFRESH_CRON = env.get("WEKA_ASSETS_REFRESH_CRON")


@dg.sensor(
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=[RAW],
    description="Adds a `corpus` partition for every registry entry (corpora.yaml) and requests "
    "`raw_traces` when a corpus's source resolves to a revision it has not seen; an unchanged "
    "upstream requests nothing.",
)
def corpus_discovery_sensor(
    context: dg.SensorEvaluationContext, catalog: CorpusCatalog
) -> dg.SensorResult:
    """Adds a partition for each registry entry that has none, and requests `raw_traces` for
    every corpus whose source resolves to a revision it has not seen (the cursor keeps the last
    revision per corpus). An unchanged upstream requests nothing; an unreachable one is logged
    and retried next tick."""
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(corpus_partitions.name))
    names = catalog.names()
    new = [n for n in names if n not in known]
    requests = []
    for name in names:
        try:
            revision = resolve_revision(catalog.source(name), token=catalog.hf_token or None)
        except WekaError as exc:
            context.log.warning(f"{name}: cannot resolve its revision, will retry: {exc}")
            continue
        if seen.get(name) == revision:
            continue
        why = "new corpus" if name not in seen else f"revision moved from {seen[name]}"
        context.log.info(f"{name}: {why} -> {revision}")
        requests.append(
            dg.RunRequest(
                run_key=f"{name}@{revision}",
                asset_selection=[RAW],
                partition_key=name,
                tags={
                    "weka-assets/revision": revision[:200],
                    "weka-assets/trigger": "discovery",
                    **corpus_tags(name),
                },
            )
        )
        seen[name] = revision
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[corpus_partitions.build_add_request(new)] if new else [],
        cursor=json.dumps(seen, sort_keys=True),
    )


@dg.schedule(
    cron_schedule=REFRESH_CRON,
    target=dg.AssetSelection.assets(RAW),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Re-fetch and re-verify every registered corpus ({REFRESH_CRON}; set WEKA_ASSETS_REFRESH_CRON). "
    "An unchanged upstream keeps its data version, so nothing downstream turns stale.",
)
def corpus_refresh_schedule(context: dg.ScheduleEvaluationContext, catalog: CorpusCatalog):
    """A `raw_traces` run for every registered corpus partition."""
    registered = set(context.instance.get_dynamic_partitions(corpus_partitions.name))
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for name in catalog.names():
        if name in registered:
            yield dg.RunRequest(
                run_key=f"refresh-{name}-{day}", partition_key=name, tags=corpus_tags(name)
            )
