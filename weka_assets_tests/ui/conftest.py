"""Fixtures of the browser test: Debian's chromium driven by the PyPI `playwright` package
(never a browser download), a `dagster dev` over a copy of the project, and the folder the
screenshots go to (printed at the end of the session)."""

import os
import shutil
from pathlib import Path

import pytest

from weka_assets_tests.dagster_dev import ROOT, copy_project, start_dagster_dev

CHROMIUM = Path(os.environ.get("WEKA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("WEKA_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "ui"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """An empty folder for this session's screenshots."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


def pytest_terminal_summary(terminalreporter):
    shots = sorted(ARTIFACTS.glob("*.png")) if ARTIFACTS.is_dir() else []
    if shots:
        terminalreporter.write_line(f"UI screenshots ({len(shots)}): {ARTIFACTS}")


@pytest.fixture
def page(tmp_path):
    """A headless Chromium page (1600x1000) with its profile, config and cache under tmp."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the UI browser test needs Debian's chromium "
            "(scripts/install-browser.sh, run by scripts/test.sh and .ci/run, installs it with "
            "apt-get; or set WEKA_CHROMIUM to a Chromium binary)",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the `playwright` package is missing: pip install -e '.[dev]'", pytrace=False)
    home = tmp_path / "browser-home"
    home.mkdir()
    env = dict(
        os.environ,
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env=env, headless=True
        )
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


@pytest.fixture
def ui_server(tmp_path):
    """`dagster dev` on 127.0.0.1 over a copy of the project (its registry: `sample` and
    `sample-kvt`) with a fresh DAGSTER_HOME and store; stopped by PID afterwards."""
    project = copy_project(tmp_path / "project")
    home = tmp_path / "dagster-home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    store = tmp_path / "store"
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        WEKA_ASSETS_STORE=str(store),
        # the test clicks every materialization itself; discovery stays on
        WEKA_ASSETS_AUTOMATION="stopped",
        # one process per run, not per step: the same assets, far less start-up on 2 cores
        WEKA_ASSETS_EXECUTOR="in_process",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    for name in ("WEKA_ASSETS_REGISTRY", "WEKA_ASSETS_TOKENIZERS", "WEKA_ASSETS_WEBSERVER"):
        env.pop(name, None)
    server = start_dagster_dev(project, env, tmp_path / "dagster-dev.log")
    try:
        yield server, project, store
    finally:
        server.stop()
