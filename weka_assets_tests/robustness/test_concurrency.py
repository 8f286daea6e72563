"""Concurrent writers, as real processes: one dataset per decode key, never two half ones.

- Two processes decoding the same key at once (each with its scope report, as the command
  line and the Dagster asset do) produce one dataset, identical to a serial decode: one
  decodes, the other waits on the key's lock and reuses it.
- A writer of one key never waits for another key: while the test holds key A's lock, a
  decode of key B completes and a decode of key A is seen blocked on that lock (the kernel's
  own table, /proc/locks), then completes once it is released.
- Two `weka-assets decode` at once, two decodes without a report (no lock: both decode, the
  first rename wins), and two processes finding the same corrupt dataset: one intact dataset.
- `write_json` and `Store.write_bytes` from two processes into one path, hundreds of times:
  a reader only ever sees one writer's whole file.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import orjson
import pytest

from weka_assets.decoding.dataset import key_lock, verify_dataset
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.pipeline import decode_corpus, scope_report
from weka_assets_tests.corpora import synthetic
from weka_assets_tests.robustness.faults import (
    Group,
    aside,
    assert_only_intact,
    child_env,
    fingerprint,
    injected,
    visible,
    weka_cmd,
)

LIMIT_S = 300  # a process this slow is hung (no timing is asserted)

# A decode in its own process: waits for the "go" file (so two start together), then prints
# its outcome as one JSON line.
DECODE = r"""
import json, os, sys, time
from pathlib import Path
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.pipeline import decode_corpus
from weka_assets.traces.scope import ScopeReport

corpus, root, seed, report, go = sys.argv[1:]
report = ScopeReport.model_validate_json(Path(report).read_bytes()) if report != "-" else None
Path(go + f".ready-{os.getpid()}").touch()
while not os.path.exists(go):
    time.sleep(0.001)
out = decode_corpus(
    corpus, root, DecodeSettings(seed=int(seed)), report=report, measure_drift=False
)
print(json.dumps({"key": out.key, "reused": out.reused, "path": str(out.path)}))
"""

# Rewrites one path many times with its own payload (write_json or Store.write_bytes).
WRITE = r"""
import os, sys, time
from pathlib import Path
import orjson
from weka_assets.pipeline import write_json
from weka_assets.store import Store

how, target, tag, times, go = sys.argv[1:]
payload = {"writer": tag, "rows": [[tag, i, "x" * 64] for i in range(3000)]}
store = Store(str(Path(target).parent)) if how == "store" else None
Path(go + f".ready-{os.getpid()}").touch()
while not os.path.exists(go):
    time.sleep(0.001)
for _ in range(int(times)):
    if store is not None:
        store.write_bytes(Path(target).name, orjson.dumps(payload))
    else:
        write_json(payload, target)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small corpus, its report on disk, and serial reference decodes of seeds 0 and 1."""
    work = tmp_path_factory.mktemp("concurrency")
    corpus = synthetic("semianalysis", traces=4, seed=5)
    report = scope_report(corpus)
    (work / "report.json").write_text(report.model_dump_json())
    (work / "decode.py").write_text(DECODE)
    (work / "write.py").write_text(WRITE)
    refs = {}
    for seed in (0, 1):
        out = decode_corpus(
            corpus, work / "ref", DecodeSettings(seed=seed), report=report, measure_drift=False
        )
        refs[seed] = (out.key, fingerprint(out.path))
    return work, corpus, report, refs


@pytest.fixture
def procs():
    """Every process group a test starts; whatever happens, SIGKILLed (by group) at the end."""
    started: list[Group] = []
    yield started
    for g in started:
        g.__exit__(None, None, None)


def _root(work: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(work / "ref" / ".filler-cache", root / ".filler-cache")
    return root


def _together(cmds, tmp_path: Path, go: Path, env: dict, procs: list) -> list[Group]:
    """Start every command, wait until each is ready (imports done), then release them at once."""
    groups = []
    for i, c in enumerate(cmds):
        groups.append(Group(c, env, tmp_path / f"p{i}.log"))
        procs.append(groups[-1])
    deadline = time.monotonic() + LIMIT_S
    while len(list(go.parent.glob(go.name + ".ready-*"))) < len(groups):
        for g in groups:
            assert g.running(), g.output()
        assert time.monotonic() < deadline, "the processes never got ready"
        time.sleep(0.01)
    go.touch()
    return groups


def _finish(groups: list[Group]) -> list[dict]:
    outs = []
    for g in groups:
        assert g.wait(LIMIT_S) == 0, g.output()
        outs.append(json.loads(g.output().strip().splitlines()[-1]))
    return outs


def _decode_cmd(work: Path, corpus: Path, root: Path, seed: int, report: bool, go: Path):
    return [sys.executable, str(work / "decode.py"), str(corpus), str(root), str(seed)] + [
        str(work / "report.json") if report else "-",
        str(go),
    ]


def test_same_key_twice_at_once_gives_one_dataset(setup, tmp_path, procs):
    work, corpus, _, refs = setup
    root, go = _root(work, tmp_path), tmp_path / "go"
    cmd = _decode_cmd(work, corpus, root, 0, True, go)
    outs = _finish(_together([cmd, cmd], tmp_path, go, child_env(WEKA_ASSETS_WORKERS="1"), procs))
    key, ref_print = refs[0]
    assert {o["key"] for o in outs} == {key}
    assert sorted(o["reused"] for o in outs) == [False, True], "both decoded: no lock held"
    assert [p.name for p in assert_only_intact(root, ref_print)] == [key]
    assert aside(root) == []


def test_a_writer_never_waits_for_another_key(setup, tmp_path, procs):
    work, corpus, _, refs = setup
    root, go = _root(work, tmp_path), tmp_path / "go"
    env = child_env(WEKA_ASSETS_WORKERS="1")
    (key_a, print_a), (key_b, print_b) = refs[0], refs[1]
    with key_lock(root, key_a):  # as if another writer were decoding key A
        blocked, free = _together(
            [
                _decode_cmd(work, corpus, root, 0, True, go),
                _decode_cmd(work, corpus, root, 1, True, go),
            ],
            tmp_path,
            go,
            env,
            procs,
        )
        lock_a = (root / f".lock-{key_a}").stat().st_ino
        deadline = time.monotonic() + LIMIT_S
        while not _waits_on_lock(blocked.pid, lock_a):
            assert blocked.running(), blocked.output()
            assert time.monotonic() < deadline, "the decode of key A never waited on its lock"
            time.sleep(0.01)
        # key B goes ahead while key A is locked
        (out_b,) = _finish([free])
        assert out_b == {"key": key_b, "reused": False, "path": str(root / key_b)}
        assert _waits_on_lock(blocked.pid, lock_a) and blocked.running()
        assert key_a not in [p.name for p in visible(root)]
    (out_a,) = _finish([blocked])
    assert out_a["key"] == key_a and not out_a["reused"]
    assert (root / f".lock-{key_a}").exists() and (root / f".lock-{key_b}").exists()
    assert fingerprint(root / key_a) == print_a and fingerprint(root / key_b) == print_b
    assert sorted(p.name for p in assert_only_intact(root)) == sorted([key_a, key_b])


def _waits_on_lock(pid: int, inode: int) -> bool:
    """True when the kernel lists `pid` as blocked on a flock of the file `inode`."""
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if "->" in f and "FLOCK" in f:
            i = f.index("->")
            if int(f[i + 4]) == pid and int(f[i + 5].rsplit(":", 1)[1]) == inode:
                return True
    return False


def test_two_command_lines_at_once(setup, tmp_path, procs):
    work, corpus, report, _ = setup
    ref = decode_corpus(corpus, tmp_path / "ref", report=report)  # with drift, as the CLI
    ref_print = fingerprint(ref.path)
    root = _root(work, tmp_path)
    cmd = weka_cmd("decode", corpus, "--out", root)
    procs += [Group(cmd, child_env(), tmp_path / f"cli{i}.log") for i in range(2)]
    logs = []
    for g in procs:
        assert g.wait(LIMIT_S) == 0, g.output()
        logs.append(g.output())
    assert [log.strip().splitlines()[-1] for log in logs] == [str(root / ref.key)] * 2
    assert [p.name for p in assert_only_intact(root, ref_print)] == [ref.key]
    assert aside(root) == []
    # one decoded, the other found its dataset (after waiting on the key's lock, or after it)
    assert sum("reused existing dataset" in log for log in logs) == 1


def test_two_decodes_without_a_report(setup, tmp_path, procs):
    """No report, no lock: both decode in one pass; the first rename wins, the other's folder
    aside is dropped, and both name the same intact dataset."""
    work, corpus, _, refs = setup
    root, go = _root(work, tmp_path), tmp_path / "go"
    cmd = _decode_cmd(work, corpus, root, 0, False, go)
    outs = _finish(_together([cmd, cmd], tmp_path, go, child_env(WEKA_ASSETS_WORKERS="1"), procs))
    key, ref_print = refs[0]
    assert [o["path"] for o in outs] == [str(root / key)] * 2
    assert [p.name for p in assert_only_intact(root, ref_print)] == [key]
    assert aside(root) == []


def test_two_readers_find_the_same_corrupt_dataset(setup, tmp_path, procs, request):
    work, corpus, _, refs = setup
    key, ref_print = refs[0]
    root, go = _root(work, tmp_path), tmp_path / "go"
    shutil.copytree(work / "ref" / key, root / key)
    with open(root / key / "tail_rows.npy", "r+b") as fh:
        fh.seek(-3, os.SEEK_END)
        fh.write(b"\x7f")
    injected(request, "flip a stored file")
    assert verify_dataset(root / key) is not None
    cmd = _decode_cmd(work, corpus, root, 0, True, go)
    outs = _finish(_together([cmd, cmd], tmp_path, go, child_env(WEKA_ASSETS_WORKERS="1"), procs))
    assert {o["key"] for o in outs} == {key}
    assert [p.name for p in assert_only_intact(root, ref_print)] == [key]
    assert len(aside(root, f".corrupt-{key}-")) == 1


@pytest.mark.parametrize("how", ["write_json", "store"])
def test_concurrent_atomic_writes_never_tear(setup, tmp_path, procs, how):
    work = setup[0]
    target, go = tmp_path / "out" / "result.json", tmp_path / "go"
    target.parent.mkdir()
    cmds = [
        [sys.executable, str(work / "write.py"), how, str(target), tag, "100", str(go)]
        for tag in ("a", "b")
    ]
    groups = _together(cmds, tmp_path, go, child_env(), procs)
    seen = set()
    while any(g.running() for g in groups):
        try:
            body = target.read_bytes()
        except FileNotFoundError:
            continue
        doc = orjson.loads(body)  # never half a file
        assert len(doc["rows"]) == 3000 and {r[0] for r in doc["rows"]} == {doc["writer"]}
        seen.add(doc["writer"])
    for g in groups:
        assert g.wait(LIMIT_S) == 0, g.output()  # no writer failed
    assert seen and orjson.loads(target.read_bytes())["writer"] in {"a", "b"}
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # nothing left aside
