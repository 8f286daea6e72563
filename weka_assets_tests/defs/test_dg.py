"""The `dg` command line works on this project ([tool.dg] in pyproject.toml) with the pinned
Dagster release: `dg check defs` loads the definitions, `dg list defs` lists the graph."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from weka_assets_tests.defs.test_definitions import ASSETS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DG = Path(sys.executable).with_name("dg")


def dg(*args: str) -> subprocess.CompletedProcess:
    if not DG.exists() and shutil.which("dg") is None:
        pytest.fail("dg is not installed: the dev extra pins dagster-dg-cli")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [str(DG) if DG.exists() else "dg", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_dg_check_defs_loads_the_definitions():
    run = dg("check", "defs")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "All definitions loaded successfully" in run.stdout + run.stderr


def test_dg_list_defs_lists_the_asset_graph():
    run = dg("list", "defs", "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    listed = json.loads(run.stdout)
    assert {a["asset_key"] for a in listed["assets"]} == ASSETS
    deps = {a["asset_key"]: set(a["dependency_keys"]) for a in listed["assets"]}
    assert deps["replay_benchmark"] >= {"decoded_dataset", "legacy_scope_replay", "capacity_curve"}
