"""Automation: new corpora and manifest-version bumps flow through without anyone clicking,
but never past a corpus whose scope checks failed."""

import warnings
from collections import defaultdict

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.sensor_definition import SensorExecutionData

from weka_assets import env
from weka_assets.defs.partitions import CORPUS_TAG, corpus_of, corpus_tags


def on_new_data() -> dg.AutomationCondition:
    """`eager`, where "a dependency updated" means its data version changed: a nightly refresh
    that re-fetches identical bytes triggers nothing downstream."""
    changed = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
    return dg.AutomationCondition.eager().replace("any_deps_updated", changed)


def rebuild_condition() -> dg.AutomationCondition:
    """For assets whose bytes depend on decoding: rebuild when upstream's data changed (its
    data version, not any new materialization: a refresh of identical bytes rebuilds nothing),
    when the partition is new, or when the manifest version (in the code version) was bumped;
    and only when every blocking check upstream passed."""
    bumped = (
        dg.AutomationCondition.code_version_changed()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.in_progress()
    )
    return (
        (on_new_data() | bumped) & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("upstream data changed, or manifest version bumped; upstream scope checks passed")


def with_corpus_tag(request: dg.RunRequest) -> dg.RunRequest:
    """The request with its partition's corpus tag (CORPUS_TAG) added."""
    if request.partition_key is None or CORPUS_TAG in request.tags:
        return request
    return request.with_replaced_attrs(tags={**request.tags, **corpus_tags(request.partition_key)})


def per_corpus(request: dg.RunRequest, asset_graph) -> list[dg.RunRequest]:
    """A run request with its corpus's tag; a backfill request (what automation emits when a
    tick requests several partitions of one asset) split into one backfill per corpus, each
    with its corpus's tag, which its runs inherit. Partition keys need a
    `partition_loading_context` (corpora are dynamic partitions)."""
    subset = request.asset_graph_subset
    if subset is None:
        return [with_corpus_tag(request)]
    by_corpus = defaultdict(set)
    for part in subset.iterate_asset_partitions():
        by_corpus[corpus_of(part.partition_key) if part.partition_key else ""].add(part)
    return [
        dg.RunRequest.for_asset_graph_subset(
            AssetGraphSubset.from_asset_partition_set(parts, asset_graph),
            tags={**request.tags, **({CORPUS_TAG: corpus} if corpus else {})},
        )
        for corpus, parts in sorted(by_corpus.items())
    ]


class CorpusAutomationSensor(dg.AutomationConditionSensorDefinition):
    """Dagster's automation sensor, whose every run carries its corpus's tag (CORPUS_TAG), so the
    run queue's per-corpus limit holds for automation runs too.

    Dagster tags an automation run with its partition only (`dagster/partition`, and one tag
    per dimension for multi-partitions), and no setting derives a run's tags from its
    partition key. So the conditions are evaluated in the code server
    (`use_user_code_server`), where the requests of a tick pass through `evaluate_tick`: each
    run request gets its corpus's tag, and a backfill request is split into one backfill per
    corpus (a backfill's runs carry the backfill's tags, which must then name one corpus).
    Which partitions are requested, when, and in what order is Dagster's own.
    """

    def __init__(
        self,
        name: str,
        *,
        target: dg.AssetSelection,
        default_status: dg.DefaultSensorStatus,
        minimum_interval_seconds: int | None = None,
        description: str | None = None,
        metadata=None,
        tags=None,
    ):
        with warnings.catch_warnings():  # use_user_code_server is a beta parameter
            warnings.simplefilter("ignore", dg.BetaWarning)
            super().__init__(
                name,
                target=target,
                default_status=default_status,
                minimum_interval_seconds=minimum_interval_seconds,
                description=description,
                metadata=metadata,
                tags=tags,
                use_user_code_server=True,
            )

    def evaluate_tick(self, context: dg.SensorEvaluationContext) -> SensorExecutionData:
        data = super().evaluate_tick(context)
        if not data.run_requests:
            return data
        graph = context.repository_def.asset_graph
        with dg.partition_loading_context(dynamic_partitions_store=context.instance):
            requests = [r for request in data.run_requests for r in per_corpus(request, graph)]
        return SensorExecutionData(
            run_requests=requests,
            skip_message=data.skip_message,
            cursor=data.cursor,
            dagster_run_reactions=data.dagster_run_reactions,
            log_key=data.log_key,
            dynamic_partitions_requests=data.dynamic_partitions_requests,
            asset_events=data.asset_events,
            automation_condition_evaluations=data.automation_condition_evaluations,
        )

    def with_attributes(self, *, jobs=None, metadata=None) -> "CorpusAutomationSensor":
        # Definitions copies sensors through this (metadata updates): keep the class
        return CorpusAutomationSensor(
            self.name,
            target=self.asset_selection,
            default_status=self.default_status,
            minimum_interval_seconds=self.minimum_interval_seconds,
            description=self.description,
            metadata=metadata if metadata is not None else self.metadata,
            tags=self.tags,
        )


AUTOMATION_INTERVAL_S = 5

automation_sensor = CorpusAutomationSensor(
    "weka_automation_sensor",
    target=dg.AssetSelection.all(),
    # running by default; WEKA_ASSETS_AUTOMATION=stopped for instances that must only do what
    # they are told (tests that drive backfills by hand); read when the code location loads
    default_status=dg.DefaultSensorStatus.STOPPED
    if env.get("WEKA_ASSETS_AUTOMATION") == "stopped"
    else dg.DefaultSensorStatus.RUNNING,
    # the sensor daemon's own loop (5 s): a scope partition's children are requested within
    # seconds of its materialization (30 s made every step of the chain wait up to 30)
    minimum_interval_seconds=AUTOMATION_INTERVAL_S,
    description="Requests new and stale partitions (after a manifest-version bump) whose upstream scope checks passed.",
)
