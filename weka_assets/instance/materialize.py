"""Materialize the whole chain for one corpus in process, against a Dagster instance.

Used by `weka-assets materialize` and `backfill-stale` (scripts, cron, the Quick start): the
same assets, checks and resources as the UI, recorded in the instance at $DAGSTER_HOME, so
staleness and lineage are the same whichever way a partition was built.
"""

from dataclasses import dataclass, field

import dagster as dg

from weka_assets.defs import jobs
from weka_assets.defs.partitions import (
    configured_tokenizers,
    corpus_partitions,
    multi_key,
    validate_key,
)

CORPUS_ASSETS = list(jobs.CORPUS_ASSETS)  # derived from the assets (defs/assets, MODULES)


def check_compute_log_bucket(instance: dg.DagsterInstance) -> None:
    """A `WekaError` naming the bucket when the instance keeps its compute logs in an S3
    bucket that does not exist (or cannot be reached): one line before any run, where every
    step of every run would otherwise fail to upload its logs with a stack trace."""
    from weka_assets.errors import WekaError

    manager = instance.compute_log_manager
    bucket = getattr(manager, "_s3_bucket", None)  # dagster_aws's S3ComputeLogManager
    if not isinstance(bucket, str):
        return
    try:
        manager._s3_session.meta.client.head_bucket(Bucket=bucket)
    except Exception as exc:  # botocore's ClientError, or the endpoint unreachable
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            raise WekaError(
                f"compute logs ($DAGSTER_HOME/dagster.yaml): the S3 bucket {bucket!r} does not "
                "exist (create it first)"
            ) from None
        raise WekaError(
            f"compute logs ($DAGSTER_HOME/dagster.yaml): no access to the S3 bucket {bucket!r} "
            f"({code or type(exc).__name__})"
        ) from None


@dataclass
class StepOutcome:
    partition: str
    success: bool
    run_id: str = ""
    outputs: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)


def run_selection(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    selection: list[str],
    partition_key: str | dg.MultiPartitionKey,
    log_level: str = "INFO",
    tags: dict | None = None,
) -> StepOutcome:
    """One in-process run of `selection` for one partition; failures collected, not raised."""
    result = dg.materialize(
        list(defs.assets),
        selection=selection,
        partition_key=partition_key,
        instance=instance,
        resources=dict(defs.resources),
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        tags={"weka-assets/trigger": "cli", **(tags or {})},
    )
    out = StepOutcome(str(partition_key), result.success, result.run_id)
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
            out.outputs[name] = result.asset_value(name)
    return out


def decode_assets(defs: dg.Definitions) -> list[str]:
    """The corpus x tokenizer assets of the chain, in definition order (not `live_replay`,
    which needs a server, nor the exports: both run only on demand; `jobs.chain_assets`).
    Read from the asset definitions, not the resolved graph, which would load instance-bound
    state."""
    return list(jobs.chain_assets(list(defs.assets))[1])


def materialize_corpus(
    corpus: str,
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    tokenizers: list[str] | None = None,
    log_level: str = "INFO",
) -> list[StepOutcome]:
    """raw_traces + trace_scope for `corpus`, then every corpus x tokenizer asset per tokenizer.

    Registers the corpus partition when needed. Stops after the scope step if it fails.
    """
    validate_key(corpus)
    tokenizers = tokenizers or configured_tokenizers()
    unknown = sorted(set(tokenizers) - set(configured_tokenizers()))
    if unknown:
        raise ValueError(f"tokenizer(s) {unknown} are not partitions (set WEKA_ASSETS_TOKENIZERS)")
    if not instance.has_dynamic_partition(corpus_partitions.name, corpus):
        instance.add_dynamic_partitions(corpus_partitions.name, [corpus])
    steps = [run_selection(defs, instance, CORPUS_ASSETS, corpus, log_level)]
    if not steps[0].success:
        return steps
    for tok in tokenizers:
        steps.append(
            run_selection(defs, instance, decode_assets(defs), multi_key(corpus, tok), log_level)
        )
    return steps
