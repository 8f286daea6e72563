"""Materialize the whole chain for one corpus in process, against a Dagster instance.

Used by `weka-assets materialize` (scripts, cron, the Quick start): the same assets, checks
and resources as the UI, recorded in the instance at $DAGSTER_HOME, so staleness and lineage
are the same whichever way a partition was built.
"""

from dataclasses import dataclass, field

import dagster as dg

from weka_assets.defs.decoded import decoded_dataset
from weka_assets.defs.partitions import (
    configured_tokenizers,
    corpus_partitions,
    multi_key,
    validate_key,
)
from weka_assets.defs.raw import raw_traces
from weka_assets.defs.replay import replay_benchmark
from weka_assets.defs.scope import trace_scope

ASSETS = [raw_traces, trace_scope, decoded_dataset, replay_benchmark]


@dataclass
class StepOutcome:
    partition: str
    success: bool
    outputs: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)


def _run(instance, resources, selection, partition_key, log_level: str) -> StepOutcome:
    result = dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=partition_key,
        instance=instance,
        resources=resources,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        tags={"weka-assets/trigger": "cli"},
    )
    out = StepOutcome(str(partition_key), result.success)
    for event in result.all_events:
        if event.is_step_failure:
            err = event.step_failure_data.error
            out.failures.append(f"{event.step_key}: {err.message.strip() if err else 'failed'}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            if not ev.passed:
                out.failed_checks.append(
                    f"{ev.asset_key.to_user_string()}.{ev.check_name} ({ev.severity.value})"
                )
    if result.success:
        for name in selection:
            out.outputs[name] = result.output_for_node(name)
    return out


def materialize_corpus(
    corpus: str,
    instance: dg.DagsterInstance,
    resources: dict,
    tokenizers: list[str] | None = None,
    log_level: str = "INFO",
) -> list[StepOutcome]:
    """raw_traces + trace_scope for `corpus`, then decoded_dataset + replay_benchmark per tokenizer.

    Registers the corpus partition when needed. Stops after the scope step if it fails.
    """
    validate_key(corpus)
    tokenizers = tokenizers or configured_tokenizers()
    unknown = sorted(set(tokenizers) - set(configured_tokenizers()))
    if unknown:
        raise ValueError(f"tokenizer(s) {unknown} are not partitions (set WEKA_ASSETS_TOKENIZERS)")
    if not instance.has_dynamic_partition(corpus_partitions.name, corpus):
        instance.add_dynamic_partitions(corpus_partitions.name, [corpus])
    steps = [_run(instance, resources, ["raw_traces", "trace_scope"], corpus, log_level)]
    if not steps[0].success:
        return steps
    for tok in tokenizers:
        steps.append(
            _run(
                instance,
                resources,
                ["decoded_dataset", "replay_benchmark"],
                multi_key(corpus, tok),
                log_level,
            )
        )
    return steps
