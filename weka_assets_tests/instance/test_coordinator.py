"""The deployment's run coordinator (weka_assets/instance/coordinator.py): Dagster's run queue,
which gives a partitioned run launched by hand (no `weka-assets/corpus` tag: the UI's
Materialize, a backfill from the UI) its corpus's tag before queueing it, so the per-corpus
limit of deploy/dagster.yaml holds for it too."""

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from weka_assets.defs.partitions import CORPUS_TAG
from weka_assets.instance.coordinator import CorpusRunCoordinator, with_corpus_tag

LIMIT = {"key": CORPUS_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}


@pytest.fixture
def instance():
    coordinator = {
        "module": "weka_assets.instance.coordinator",
        "class": "CorpusRunCoordinator",
        "config": {"max_concurrent_runs": 4, "tag_concurrency_limits": [LIMIT]},
    }
    with dg.instance_for_test(overrides={"run_coordinator": coordinator}) as instance:
        yield instance


@pytest.mark.parametrize(
    ("tags", "corpus"),
    [
        ({"dagster/partition": "sample"}, "sample"),  # raw_traces, trace_scope
        ({"dagster/partition": "sample|deepseek"}, "sample"),  # corpus x tokenizer
        ({"dagster/partition": "sample", CORPUS_TAG: "other"}, "other"),  # tagged: kept
        ({}, None),  # not partitioned (an export job): nothing to add
    ],
)
def test_a_submitted_run_gets_its_corpus(instance, tags, corpus):
    """What `CorpusRunCoordinator.submit_run` does before Dagster queues the run (queueing
    itself, which needs a code location's origin, is the cluster test's)."""
    assert isinstance(instance.run_coordinator, CorpusRunCoordinator)
    run = create_run_for_test(instance, job_name="j", tags=tags)
    tagged = with_corpus_tag(instance, run)
    assert tagged.tags.get(CORPUS_TAG) == corpus
    assert instance.get_run_by_id(run.run_id).tags.get(CORPUS_TAG) == corpus


def test_the_queue_reads_its_limits(instance):
    """Dagster's queue applies the coordinator's limits (it is a QueuedRunCoordinator)."""
    limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert list(limits) == [LIMIT]
