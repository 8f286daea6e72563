"""The deployment's run coordinator (weka_assets/instance/coordinator.py): Dagster's run queue,
which gives a partitioned run launched by hand (no `weka-assets/corpus` tag: the UI's
Materialize, a backfill from the UI) its corpus's tag before queueing it, so the per-corpus
limit of deploy/dagster.yaml holds for it too."""

import logging
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml
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


# ---- the daemon's cadence ---------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


class _RecordedSleep(threading.Event):
    """A shutdown event whose `wait` records how long the loop asked to sleep, then stops it."""

    def __init__(self):
        super().__init__()
        self.slept: list[float] = []

    def wait(self, timeout=None):
        self.slept.append(timeout)
        self.set()
        return True


def _backfill_loop_sleep(instance) -> float:
    """What Dagster's backfill loop (the daemon's BackfillDaemon) sleeps after an iteration
    that found no backfill: the interval it runs at."""
    from dagster._daemon.backfill import execute_backfill_iteration_loop

    context = SimpleNamespace(instance=instance)  # all an iteration with no backfill reads
    event = _RecordedSleep()
    loop = execute_backfill_iteration_loop(context, logging.getLogger("test"), event)
    for _ in loop:
        if event.slept:
            break
    return event.slept[0]


@pytest.fixture
def dagster_default_interval(monkeypatch):
    """Dagster's 30 s, restored after the test (the setting is process-wide)."""
    from dagster._daemon import controller

    monkeypatch.setattr(controller, "DEFAULT_DAEMON_INTERVAL_SECONDS", 30)
    return 30


@pytest.mark.parametrize("yaml_path", ["dagster.yaml", "deploy/dagster.yaml"])
def test_the_instance_configs_shorten_the_daemon_loops(yaml_path, dagster_default_interval):
    """A corpus's chain is an asset backfill that advances once per backfill-loop iteration and
    once per dequeue: both instance configs set them to seconds, not Dagster's 30 s and 5 s."""
    config = yaml.safe_load((ROOT / yaml_path).read_text())["run_coordinator"]
    assert (config["module"], config["class"]) == (
        "weka_assets.instance.coordinator",
        "CorpusRunCoordinator",
    )
    assert config["config"]["backfill_interval_seconds"] <= 2
    assert config["config"]["dequeue_interval_seconds"] <= 1


def test_the_backfill_loop_runs_at_the_configured_interval(tmp_path, dagster_default_interval):
    """The root dagster.yaml, as the daemon of `scripts/dev` loads it: the run coordinator it
    builds before starting its loops sets the backfill loop's sleep, and Dagster's own loop
    then sleeps that long (30 s without it: the 90 s "Materialize all" of issue 27)."""
    with dg.instance_for_test() as plain:
        assert _backfill_loop_sleep(plain) == pytest.approx(dagster_default_interval, abs=1)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, CorpusRunCoordinator)
        assert coordinator.dequeue_interval_seconds == 1
        assert coordinator.backfill_interval_seconds == 2
        # limits from the same block still reach Dagster's queue
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
        assert _backfill_loop_sleep(instance) <= 2


def test_a_backfill_interval_below_one_second_is_refused(dagster_default_interval):
    with pytest.raises(ValueError, match="backfill_interval_seconds"):
        CorpusRunCoordinator(backfill_interval_seconds=0)
