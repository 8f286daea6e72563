"""The deployment's run coordinator: Dagster's run queue, with every run of a corpus tagged.

The queue limits runs to one per corpus on the tag `weka-assets/corpus` (deploy/dagster.yaml).
What this project requests carries it (sensors, the schedule, automation, `weka-assets launch`,
`backfill-stale`), but a run launched by hand (the UI's Materialize, a backfill from the UI, the
launchpad) carries only Dagster's partition tags, and Dagster derives no tag from a partition
key. So the coordinator, Dagster's `QueuedRunCoordinator` itself, adds the tag from the run's
`dagster/partition` before the run is queued: every run of a corpus, however it was launched,
waits for the corpus's other runs. The queue, its limits and the dequeuing are Dagster's.
"""

from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun

from weka_assets.defs.partitions import CORPUS_TAG, corpus_tags

PARTITION_TAG = "dagster/partition"


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


class CorpusRunCoordinator(QueuedRunCoordinator):
    """`QueuedRunCoordinator` that tags a partitioned run with its corpus when it has none."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = with_corpus_tag(self._instance, context.dagster_run)
        return super().submit_run(context._replace(dagster_run=run))
