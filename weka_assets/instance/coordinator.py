"""The run coordinator: Dagster's run queue, with every run of a corpus tagged, and the cadence
of the daemon's backfill loop.

The queue limits runs to one per corpus on the tag `weka-assets/corpus` (deploy/dagster.yaml).
What this project requests carries it (sensors, the schedule, automation, `weka-assets launch`,
`backfill-stale`), but a run launched by hand (the UI's Materialize, a backfill from the UI, the
launchpad) carries only Dagster's partition tags, and Dagster derives no tag from a partition
key. So the coordinator, Dagster's `QueuedRunCoordinator` itself, adds the tag from the run's
`dagster/partition` before the run is queued: every run of a corpus, however it was launched,
waits for the corpus's other runs. The queue, its limits and the dequeuing are Dagster's.

`backfill_interval_seconds`: a corpus's chain spans two partitions definitions, so "Materialize
all" in the UI, `weka-assets launch` and `backfill-stale` are asset backfills, and an asset
backfill advances one step per iteration of the daemon's backfill loop: the corpus run, then the
corpus x tokenizer runs, then completion. Dagster 1.13 sleeps a fixed 30 s between iterations
(`dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS`; no instance setting exists:
dagster-io/dagster#11649, the RFC to shorten it, #11860, was never merged), so a chain whose runs
take 8 s took 90 s. The daemon builds its run coordinator (this class, from dagster.yaml) before
it starts its loops, which read the constant when they start: setting it here is the one place
an instance's configuration reaches it. Everything else about backfills stays Dagster's.
"""

import logging
from collections.abc import Mapping
from typing import Any

from dagster import Field, IntSource
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun
from dagster._daemon import controller

from weka_assets.defs.partitions import CORPUS_TAG, corpus_tags

PARTITION_TAG = "dagster/partition"
BACKFILL_INTERVAL = "backfill_interval_seconds"


def with_corpus_tag(instance, run: DagsterRun) -> DagsterRun:
    """The stored run with its corpus's tag added from its partition, when it has none."""
    partition = run.tags.get(PARTITION_TAG)
    if not partition or CORPUS_TAG in run.tags:
        return run
    try:
        tags = corpus_tags(partition)
    except Exception:  # not a corpus partition key: nothing to add
        return run
    instance.add_run_tags(run.run_id, tags)
    return instance.get_run_by_id(run.run_id) or run


def set_backfill_interval(seconds: int) -> None:
    """Set the backfill loop's sleep (see the module docstring). Fails loudly on a Dagster
    release without the constant, rather than silently keeping 30 s."""
    if seconds < 1:
        raise ValueError(f"{BACKFILL_INTERVAL} must be at least 1, not {seconds}")
    if not isinstance(getattr(controller, "DEFAULT_DAEMON_INTERVAL_SECONDS", None), int):
        raise RuntimeError(
            f"{BACKFILL_INTERVAL}: this Dagster release has no "
            "dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS; remove the setting"
        )
    if controller.DEFAULT_DAEMON_INTERVAL_SECONDS != seconds:
        logging.getLogger("dagster.daemon").info("backfill daemon interval: %d s", seconds)
    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = seconds


class CorpusRunCoordinator(QueuedRunCoordinator):
    """`QueuedRunCoordinator` that tags a partitioned run with its corpus when it has none, and
    takes `backfill_interval_seconds` (the daemon's backfill loop; Dagster's default 30)."""

    def __init__(self, backfill_interval_seconds: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.backfill_interval_seconds = backfill_interval_seconds
        if backfill_interval_seconds is not None:
            set_backfill_interval(backfill_interval_seconds)

    @classmethod
    def config_type(cls):
        return {
            **QueuedRunCoordinator.config_type(),
            BACKFILL_INTERVAL: Field(
                IntSource,
                is_required=False,
                description="Seconds the daemon's backfill loop sleeps between iterations "
                "(Dagster 1.13: a fixed 30). Each asset backfill step waits for one iteration.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]):
        # the other keys are QueuedRunCoordinator's, named as its parameters
        rest = {k: v for k, v in config_value.items() if k != BACKFILL_INTERVAL}
        return cls(
            inst_data=inst_data,
            backfill_interval_seconds=config_value.get(BACKFILL_INTERVAL),
            **rest,
        )

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = with_corpus_tag(self._instance, context.dagster_run)
        return super().submit_run(context._replace(dagster_run=run))
