"""A copy of the project (optionally with MANIFEST_VERSION bumped) and a real `dagster dev`
over it, for the end-to-end tests (after a loader fix, the browser test of the UI).

The server binds 127.0.0.1 on a free port, runs in its own process group, and is started
through a small wrapper that restores default SIGINT/SIGTERM handling before exec'ing
`dagster dev` (a process started from a non-interactive shell inherits SIGINT ignored, and
`dagster dev` would then not stop). It is stopped by its PID: SIGTERM, then SIGKILL to the
group for whatever is left.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from weka_assets_tests.cluster.harness import free_port

ROOT = Path(__file__).resolve().parents[1]
# Not dagster.yaml: the root's is the template the tests copy into their $DAGSTER_HOME; one in
# the folder `dagster dev` starts in, DAGSTER_HOME being elsewhere, is ignored with a warning.
PROJECT_FILES = ("workspace.yaml", "pyproject.toml")
# The README's way to open the UI: `dagster dev` started in $DAGSTER_HOME (see the script).
DEV_SCRIPT = ROOT / "scripts" / "dev"
REGISTRY = "corpora.yaml"

# argv[1:] is the command to exec with SIGINT, SIGTERM and SIGHUP back at their defaults.
_DEFAULT_SIGNALS_WRAPPER = (
    "import os, signal, sys\n"
    "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n"
    "    signal.signal(s, signal.SIG_DFL)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def copy_project(dest: Path, registry: bool = True) -> Path:
    """The package and the files `dagster dev` and the CLI read, copied to `dest`. Without
    the registry (`corpora.yaml`) the discovery sensor of a server there registers nothing."""
    shutil.copytree(
        ROOT / "weka_assets", dest / "weka_assets", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in PROJECT_FILES + ((REGISTRY,) if registry else ()):
        shutil.copy(ROOT / name, dest / name)
    return dest


def bump_manifest(project: Path) -> int:
    """Raise the single `MANIFEST_VERSION = N` literal of `project` to N + 1; the new N."""
    versions = project / "weka_assets" / "versions.py"
    text = versions.read_text()
    found = re.findall(r"^MANIFEST_VERSION = (\d+)$", text, flags=re.M)
    assert len(found) == 1, "MANIFEST_VERSION must be written as one literal"
    version = int(found[0]) + 1
    versions.write_text(
        re.sub(r"^MANIFEST_VERSION = \d+$", f"MANIFEST_VERSION = {version}", text, flags=re.M)
    )
    return version


def bumped_copy(dest: Path, registry: bool = False) -> Path:
    """The project with `MANIFEST_VERSION = N` raised to N + 1 in that single literal."""
    bump_manifest(copy_project(dest, registry))
    return dest


@dataclass
class DagsterDev:
    """A running `dagster dev`: its URL, process and log file."""

    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
        resp = httpx.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=timeout,
        )
        resp.raise_for_status()
        body = resp.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def stop(self, grace: float = 20) -> None:
        """SIGTERM to the PID (dagster dev stops its webserver, daemon and code servers), then
        SIGKILL to its process group for anything left."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait(timeout=10)


def start_dagster_dev(
    project: Path, env: dict, log_path: Path, *, port: int | None = None, ready_s: float = 120
) -> DagsterDev:
    """`dagster dev -w workspace.yaml` in `project` on 127.0.0.1, once its code location has
    loaded (the webserver answers a few seconds before the code is in)."""
    port = port or free_port()
    args = ["dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    server = DagsterDev(f"http://127.0.0.1:{port}", _start(args, project, env, log_path), log_path)
    return _loaded(server, ready_s)


LOCATION_STATUS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def wait_until_loaded(server: DagsterDev, timeout: float = 120) -> None:
    """Until the webserver answers and every code location has loaded (or one failed)."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.process.poll() is None, f"dagster dev exited:\n{server.log_tail()}"
        assert time.monotonic() < deadline, f"dagster dev not ready:\n{server.log_tail()}"
        try:
            data = server.graphql(LOCATION_STATUS, timeout=5)["workspaceOrError"]
        except (httpx.HTTPError, ValueError):
            time.sleep(1)
            continue
        entries = data.get("locationEntries") or []
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            errors = [
                e["locationOrLoadError"]["message"]
                for e in entries
                if e["locationOrLoadError"]["__typename"] == "PythonError"
            ]
            assert not errors, errors
            return
        time.sleep(1)


def _start(args: list[str], project: Path, env: dict, log_path: Path) -> subprocess.Popen:
    """`python -m ARGS...` in `project`, in its own process group, default signal handling."""
    return _exec(
        [sys.executable, "-m", *args], project, dict(env, PYTHONPATH=str(project)), log_path
    )


def _exec(argv: list[str], cwd: Path, env: dict, log_path: Path) -> subprocess.Popen:
    """`argv` (its first item a path) in `cwd`, in its own process group, with SIGINT, SIGTERM
    and SIGHUP at their defaults; stdout and stderr to `log_path`."""
    log = open(log_path, "w")
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _DEFAULT_SIGNALS_WRAPPER, *argv],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its children
        )
    finally:
        log.close()


def start_dev_script(
    env: dict, log_path: Path, *, port: int | None = None, ready_s: float = 120
) -> DagsterDev:
    """`scripts/dev -h 127.0.0.1 -p PORT` (the README's command; it execs `dagster dev` in
    $DAGSTER_HOME), once its code location has loaded. Started from the repository root."""
    port = port or free_port()
    argv = [str(DEV_SCRIPT), "-h", "127.0.0.1", "-p", str(port)]
    server = DagsterDev(f"http://127.0.0.1:{port}", _exec(argv, ROOT, env, log_path), log_path)
    return _loaded(server, ready_s)


def start_webserver(
    project: Path, env: dict, log_path: Path, *, ready_s: float = 120
) -> DagsterDev:
    """`dagster-webserver -w workspace.yaml` alone (no daemon), once its code location has
    loaded: what a deployment runs beside `start_daemon`."""
    port = free_port()
    args = ["dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    server = DagsterDev(f"http://127.0.0.1:{port}", _start(args, project, env, log_path), log_path)
    return _loaded(server, ready_s)


def _loaded(server: DagsterDev, ready_s: float) -> DagsterDev:
    """`server` once its code location has loaded; stopped by PID when it does not."""
    try:
        wait_until_loaded(server, ready_s)
    except BaseException:
        server.stop()
        raise
    return server


def start_daemon(project: Path, env: dict, log_path: Path) -> DagsterDev:
    """`dagster-daemon run -w workspace.yaml` (its `url` is empty); stop it with `stop()`."""
    process = _start(["dagster._daemon", "run", "-w", "workspace.yaml"], project, env, log_path)
    return DagsterDev("", process, log_path)
