"""Automation: new corpora and manifest-version bumps flow through without anyone clicking,
but never past a corpus whose scope checks failed."""

import dagster as dg

from weka_assets import env


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


automation_sensor = dg.AutomationConditionSensorDefinition(
    "weka_automation_sensor",
    target=dg.AssetSelection.all(),
    # running by default; WEKA_ASSETS_AUTOMATION=stopped for instances that must only do what
    # they are told (tests that drive backfills by hand); read when the code location loads
    default_status=dg.DefaultSensorStatus.STOPPED
    if env.get("WEKA_ASSETS_AUTOMATION") == "stopped"
    else dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Requests new and stale partitions (after a manifest-version bump) whose upstream scope checks passed.",
)
