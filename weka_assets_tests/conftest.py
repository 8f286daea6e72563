"""Shared test setup: no network (Hugging Face offline) and the real kv-cache-tester sample."""

import os
import signal
from pathlib import Path

import pytest

pytest_plugins = ["weka_assets_tests.servers"]

# Before anything imports huggingface_hub: it reads the variable once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"

# Dagster's in-process execution gives SIGTERM whatever handler SIGINT had before the run. In a
# process started in the background SIGINT is ignored, so after the first materialization
# SIGTERM was ignored too, and so in every child: Dagster's own `tail -F` of the compute logs
# could no longer be terminated (30 s timeouts, then failures). Tests run with Python's default
# handlers however they are started.
for _sig, _handler in (
    (signal.SIGINT, signal.default_int_handler),
    (signal.SIGTERM, signal.SIG_DFL),
):
    if signal.getsignal(_sig) is signal.SIG_IGN:
        signal.signal(_sig, _handler)

REAL_SAMPLE = (
    Path(__file__).resolve().parents[1].parent / "shared" / "real-traces" / "kv-cache-tester-sample"
)


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The 30 real kv-cache-tester traces (read-only; copy before mutating)."""
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real kv-cache-tester sample not found at {REAL_SAMPLE}")
    return REAL_SAMPLE


@pytest.fixture(autouse=True)
def _no_stale_dagster_state_storage():
    """Dagster keeps the current definitions-state storage in a process-wide context variable;
    a test whose instance was disposed can leave it pointing at a dead instance, and the next
    Definitions load in the same process then fails. Start every test without it."""
    from dagster._core.storage.defs_state import base

    base._current_storage.set(None)
