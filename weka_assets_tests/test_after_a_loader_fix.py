"""The README's "After a loader fix" flow, end to end, in a copy of the project whose
MANIFEST_VERSION literal is raised by one: stale lists exactly the decoding partitions,
backfill-stale rebuilds them (in process, and as one backfill through a running webserver and
daemon), then nothing is stale, both datasets exist, and a bump that changed nothing has a zero
blast radius. Every command is the real CLI in a subprocess against one DAGSTER_HOME."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weka_assets.defs.jobs import DECODE_ASSETS
from weka_assets.versions import MANIFEST_VERSION
from weka_assets_tests.dagster_dev import ROOT, bumped_copy, start_daemon, start_webserver

pytestmark = pytest.mark.slow

DECODING_ASSETS = set(DECODE_ASSETS)
PARTITION = "sample-kvt|deepseek"
BACKFILLS = "{ partitionBackfillsOrError { ... on PartitionBackfills { results { id status } } } }"


@pytest.fixture
def flow(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        WEKA_ASSETS_STORE=str(tmp_path / "store"),
        WEKA_ASSETS_AUTOMATION="stopped",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("WEKA_ASSETS_WEBSERVER", None)
    copy = bumped_copy(tmp_path / "bumped")

    def cli(*args, project: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "weka_assets.cli", *args],
            cwd=project,
            env=dict(env, PYTHONPATH=str(project)),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check:
            assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    cli("materialize", "--corpus", "sample-kvt")
    return cli, copy, env, tmp_path


def stale_pairs(cli, project) -> set[tuple[str, str]]:
    out = json.loads(cli("stale", "--json", project=project).stdout)
    return {(s["asset"], s["partition"]) for s in out["stale"]}


def assert_rebuilt(cli, copy, tmp_path):
    assert stale_pairs(cli, copy) == set()
    manifests = [
        json.loads(p.read_text()) for p in (tmp_path / "store" / "datasets").glob("*/manifest.json")
    ]
    trace_scoped = sorted(
        m["manifest_version"]
        for m in manifests
        if m["key_material"]["settings"]["scope_policy"] == "trace"
    )
    assert trace_scoped == [MANIFEST_VERSION, MANIFEST_VERSION + 1]
    blasts = [
        json.loads(p.read_text()) for p in (tmp_path / "store" / "blast_radius").glob("*-vs-*.json")
    ]
    bump = [b for b in blasts if b["previous_manifest_version"] == MANIFEST_VERSION]
    assert len(bump) == 1 and bump[0]["current_manifest_version"] == MANIFEST_VERSION + 1
    assert (
        bump[0]["calls_tokens_changed"] == 0
        and bump[0]["calls_cache_changed"] == 0
        and bump[0]["calls"] > 0
    )


def test_bump_stale_backfill_in_process(flow):
    cli, copy, _, tmp_path = flow
    assert stale_pairs(cli, ROOT) == set()
    assert stale_pairs(cli, copy) == {(a, PARTITION) for a in DECODING_ASSETS}
    done = cli("backfill-stale", "--wait", "--in-process", project=copy)
    assert re.search(r"^run \S+ sample-kvt\|deepseek ok$", done.stdout, flags=re.M), done.stdout
    assert_rebuilt(cli, copy, tmp_path)


@pytest.mark.live
def test_bump_stale_backfill_through_a_running_webserver(flow):
    cli, copy, env, tmp_path = flow
    # a webserver, and the daemon started once the backfill is submitted: the daemon looks for
    # new backfills every 30 s, from its start, so its first look finds this one (a daemon
    # already running would take up to 30 s more, then 30 s to see the runs done)
    server = start_webserver(copy, env, tmp_path / "webserver.log")
    daemon = None
    launch = subprocess.Popen(
        [sys.executable, "-m", "weka_assets.cli", "backfill-stale", "--url", server.url, "--wait"],
        cwd=copy, env=dict(env, PYTHONPATH=str(copy)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not server.graphql(BACKFILLS)["partitionBackfillsOrError"]["results"]:
            assert launch.poll() is None, launch.communicate()
            assert time.monotonic() < deadline, "no backfill was submitted"
            time.sleep(0.5)
        daemon = start_daemon(copy, env, tmp_path / "daemon.log")
        out, err = launch.communicate(timeout=600)
        assert launch.returncode == 0, err[-3000:]
        backfill_id = re.search(r"^backfill (\S+)$", out, flags=re.M)[1]
        listed = server.graphql(BACKFILLS)["partitionBackfillsOrError"]["results"]
        assert [b["id"] for b in listed] == [backfill_id]
        assert listed[0]["status"] in ("COMPLETED", "COMPLETED_SUCCESS")
        assert_rebuilt(cli, copy, tmp_path)
    finally:
        if launch.poll() is None:
            launch.kill()
        if daemon is not None:
            daemon.stop()
        server.stop()
