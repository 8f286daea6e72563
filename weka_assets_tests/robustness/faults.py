"""Fault injection with real processes: commands run in their own process group (they start
worker processes) and are killed with SIGKILL as a whole; every fault a test injects is
counted.

The counts appear in pytest's terminal summary ("faults injected", per test and in total) and
as each test's `faults_injected` property in a `--junitxml` report. `WEKA_FAULTS=long` runs
five times as many kills as CI (`WEKA_FAULTS=ci`, the default), with other random delays
(`WEKA_FAULTS_SEED`, default 0).
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

PROFILE = os.environ.get("WEKA_FAULTS", "ci")
SCALE = {"ci": 1, "long": 5}
if PROFILE not in SCALE:
    raise RuntimeError(f"WEKA_FAULTS={PROFILE!r}: use one of {', '.join(SCALE)}")
SEED = int(os.environ.get("WEKA_FAULTS_SEED", "0"))

FAULTS: Counter = Counter()  # test id -> faults injected
KINDS: Counter = Counter()  # kind of fault -> count


def scaled(n: int) -> int:
    return n * SCALE[PROFILE]


class _Summary:
    """A pytest plugin registered on the first fault: the counts in the terminal summary."""

    def pytest_terminal_summary(self, terminalreporter):
        if not FAULTS:
            return
        tr = terminalreporter
        tr.section(f"faults injected (profile {PROFILE!r}, seed {SEED})")
        for test, n in sorted(FAULTS.items()):
            tr.write_line(f"{n:>6}  {test}")
        for kind, n in sorted(KINDS.items()):
            tr.write_line(f"{n:>6}  of kind {kind}")
        tr.write_line(f"{sum(FAULTS.values()):>6}  in total")


def injected(request: pytest.FixtureRequest, kind: str, n: int = 1) -> None:
    """Count `n` faults of `kind` injected by the running test."""
    config = request.config
    if not config.pluginmanager.has_plugin("weka-faults-summary"):
        config.pluginmanager.register(_Summary(), "weka-faults-summary")
    test = request.node.nodeid.split("[", 1)[0]  # parametrized cases under their test
    FAULTS[test] += n
    KINDS[kind] += n
    props = request.node.user_properties
    for i, (name, value) in enumerate(props):
        if name == "faults_injected":
            props[i] = (name, value + n)
            break
    else:
        props.append(("faults_injected", n))


def weka_cmd(*args: str) -> list[str]:
    """`weka-assets ARGS` with this interpreter (the console script's own entry point)."""
    return [sys.executable, "-m", "weka_assets.cli", *map(str, args)]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Group:
    """A command in its own session and process group, its output in files (never a pipe
    that could fill up); `kill()` sends SIGKILL to the whole group."""

    def __init__(self, cmd: list[str], env: dict, log: Path, cwd: Path | None = None):
        self.log = log
        self._out = open(log, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def kill(self) -> bool:
        """SIGKILL the group; True when the command was still running (a fault was injected)."""
        alive = self.proc.poll() is None
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._out.close()
        return alive and self.proc.returncode == -signal.SIGKILL

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout} s: {self.output()}") from None
        self._out.close()
        return rc

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()  # whatever happened, nothing we started outlives the test


def wait_for(predicate, group: Group, timeout: float, poll: float = 0.005) -> bool:
    """Poll `predicate` while `group` runs; True as soon as it holds, False if the command
    ended (or `timeout` passed) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if not group.running():
            return bool(predicate())
        time.sleep(poll)
    return False


# ---- what a dataset root holds --------------------------------------------------------------

VOLATILE = {"created_unix"}  # in manifests before dataset format 4; none since (content only)


def fingerprint(path: Path) -> dict:
    """What must be identical between two decodes of the same key: every file's sha256 (read
    from disk, not from the manifest) and the manifest less its creation time and checksums."""
    import hashlib

    import orjson

    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(path).iterdir())
        if p.name != "manifest.json"
    }
    manifest = orjson.loads((Path(path) / "manifest.json").read_bytes())
    listed = {k: v for k, v in manifest.pop("files").items() if k != "manifest.json"}
    assert listed == files, f"{path}: the manifest does not list the files on disk"
    return {"files": files, "manifest": {k: v for k, v in manifest.items() if k not in VOLATILE}}


def visible(root: Path) -> list[Path]:
    """The entries of a dataset root a reader could take for a dataset (not hidden)."""
    return sorted(p for p in Path(root).iterdir() if not p.name.startswith("."))


def aside(root: Path, prefix: str = ".tmp-decode-") -> list[Path]:
    return sorted(Path(root).glob(f"{prefix}*"))


def assert_only_intact(root: Path, reference: dict | None = None) -> list[Path]:
    """Every visible entry of `root` is a complete dataset whose files match its manifest (and
    equal `reference` when given); returns the visible datasets."""
    from weka_assets.decoding.dataset import is_complete, verify_dataset

    found = visible(root) if Path(root).is_dir() else []
    for p in found:
        assert p.is_dir() and is_complete(p), f"{p}: visible but not a complete dataset"
        assert verify_dataset(p) is None, f"{p}: {verify_dataset(p)}"
        if reference is not None:
            assert fingerprint(p) == reference, f"{p}: differs from the reference"
    return found
