"""SIGKILL at random points, with real processes: nothing half-written is ever visible, nothing
is lost, and the next run completes and equals an uninterrupted one.

`weka-assets decode` (a process group: the command and its worker processes) is killed at
seeded random points, four ways in turn: after a random delay anywhere in its run, a random
delay after its dataset folder aside appears (mid-write), as soon as its manifest is written
aside (publishing), and as soon as the dataset is renamed into place (published). After each
kill the dataset root holds no visible dataset, or only a complete one that verifies and
equals the reference; a normal run then removes the abandoned folder aside and yields a
dataset byte-identical to a serial reference decode. `weka-assets materialize` is killed
while it rebuilds a changed corpus (mid-decode, in the later steps, anywhere): the previous
materialization's outputs stay readable throughout, and a rerun succeeds.

Faults are counted (pytest's terminal summary, "faults injected"); `WEKA_FAULTS=long` kills
five times as often and `WEKA_FAULTS_SEED` draws other points (weka_assets_tests.robustness
.faults).
"""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from weka_assets.decoding.dataset import (
    DatasetWriter,
    is_complete,
    open_dataset,
    verify_dataset,
)
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.pipeline import decode_corpus, scope_report
from weka_assets.synthetic import iter_corpus, write_corpus
from weka_assets.traces.reader import corpus_digest, file_digests
from weka_assets_tests.corpora import synthetic
from weka_assets_tests.robustness.faults import (
    SEED,
    Group,
    aside,
    assert_only_intact,
    child_env,
    fingerprint,
    injected,
    scaled,
    visible,
    wait_for,
    weka_cmd,
)

pytestmark = pytest.mark.slow

RUN_LIMIT_S = 300  # a run this long is a hang, not a slow machine (no timing is asserted)
MODES = ("anywhere", "mid-write", "publishing", "published")
KILLS = 8  # decode kills in CI (WEKA_FAULTS=long: 5 x)
MAX_ATTEMPTS = 4


@pytest.fixture(scope="module")
def corpus() -> Path:
    """Three full-size traces: a decode long enough (about a second of work after start-up)
    to be killed in the middle of writing."""
    return synthetic("semianalysis", traces=3, seed=11, size="full")


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """A serial decode (no worker processes) with the command line's settings: the bytes every
    interrupted-then-resumed run must reproduce."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WEKA_ASSETS_WORKERS", "1")
    try:
        root = tmp_path_factory.mktemp("reference")
        report = scope_report(corpus)
        out = decode_corpus(corpus, root, DecodeSettings(), report=report)
    finally:
        mp.undo()
    return out, report, fingerprint(out.path), root / ".filler-cache"


def _fresh_root(path: Path, filler_cache: Path) -> Path:
    """A new dataset root with the tokenizer filler already cached (saves every run the same
    few seconds of tokenizing; a kill while the cache is written is covered by its own
    write-aside-then-rename)."""
    path.mkdir(parents=True)
    shutil.copytree(filler_cache, path / ".filler-cache")
    return path


def _publishing(root: Path) -> bool:
    """A manifest in the folder aside (about to be renamed), or the dataset already in place."""
    return bool(visible(root)) or any(is_complete(p) for p in aside(root))


def _new_dataset(root: Path, known: set[str]) -> bool:
    return bool({p.name for p in visible(root)} - known)


def test_killed_decode_leaves_nothing_half_written(corpus, reference, tmp_path, request):
    ref, report, ref_print, filler_cache = reference
    cmd = lambda root: weka_cmd("decode", corpus, "--out", root)  # noqa: E731
    env = child_env()

    # one uninterrupted run, watched: where its phases fall (the kills aim at them), and that
    # the command line's parallel decode equals the serial reference
    root = _fresh_root(tmp_path / "whole", filler_cache)
    with Group(cmd(root), env, tmp_path / "whole.log") as g:
        assert wait_for(lambda: aside(root), g, RUN_LIMIT_S), g.output()
        t_aside = g.elapsed()
        assert wait_for(lambda: visible(root), g, RUN_LIMIT_S), g.output()
        t_published = g.elapsed()
        assert g.wait(RUN_LIMIT_S) == 0, g.output()
        t_end = g.elapsed()
    assert g.output().strip().splitlines()[-1] == str(root / ref.key)  # printed last
    assert [p.name for p in assert_only_intact(root, ref_print)] == [ref.key]
    assert aside(root) == []

    rng = random.Random(SEED)
    kills, misses, abandoned, published_before_kill = 0, 0, 0, 0
    for i in range(scaled(KILLS)):
        mode = MODES[i % len(MODES)]
        for attempt in range(MAX_ATTEMPTS):  # a run that ended before its kill is tried again
            root = _fresh_root(tmp_path / f"kill-{i}-{attempt}", filler_cache)
            with Group(cmd(root), env, tmp_path / f"kill-{i}-{attempt}.log") as g:
                if mode == "anywhere":
                    delay = rng.uniform(0, t_end)
                    wait_for(lambda: g.elapsed() >= delay, g, RUN_LIMIT_S)  # noqa: B023
                elif mode == "mid-write":
                    wait_for(lambda: aside(root), g, RUN_LIMIT_S)  # noqa: B023
                    time.sleep(rng.uniform(0, max(t_published - t_aside, 0.01) / 2))
                elif mode == "publishing":  # its manifest written, not yet renamed into place
                    wait_for(partial(_publishing, root), g, RUN_LIMIT_S)
                else:  # published: renamed into place, the command not yet finished
                    wait_for(lambda: visible(root), g, RUN_LIMIT_S)  # noqa: B023
                killed = g.kill()
            if killed:
                kills += 1
                injected(request, f"SIGKILL weka-assets decode ({mode})")
            else:
                misses += 1

            # right after the kill: nothing visible, or a complete dataset equal to the reference
            left = assert_only_intact(root, ref_print)
            if killed:
                published_before_kill += bool(left)
                abandoned += bool(aside(root))
                assert mode != "published" or left, "killed after publication, yet no dataset"

            # a normal run completes: it removes the abandoned folder aside (its writer is
            # dead) and its dataset is byte-identical to the serial reference
            again = decode_corpus(corpus, root, DecodeSettings(), report=report)
            assert again.key == ref.key and again.reused == bool(left)
            assert [p.name for p in assert_only_intact(root, ref_print)] == [ref.key]
            assert aside(root) == [], "an abandoned folder aside was left behind"
            open_dataset(again.path, verify=True)
            if killed:
                break
        else:
            pytest.fail(f"{MAX_ATTEMPTS} runs in a row ended before their kill ({mode})")

    request.node.user_properties += [
        ("kills_leaving_a_folder_aside", abandoned),
        ("kills_after_publication", published_before_kill),
        ("runs_that_ended_before_their_kill", misses),
    ]
    assert kills == scaled(KILLS)
    # the kills landed where they were aimed: some mid-write (an abandoned folder aside was
    # left), some after publication (a complete dataset was left)
    assert abandoned >= 1 and published_before_kill >= 1, (abandoned, published_before_kill)


def test_only_folders_of_dead_local_writers_are_removed(tmp_path):
    """A folder aside is named after its writer's pid and host: the next writer removes it once
    that pid is gone on this host, never a live writer's, nor one of another host (a root
    shared over the network), where the pid means nothing here."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    kept = {
        f".tmp-decode-{dead.pid}@{host}-aaaa1111": False,
        f".tmp-decode-{dead.pid}-bbbb2222": False,  # named before hosts were
        f".tmp-decode-{dead.pid}@another-host.example-cccc3333": True,
        f".tmp-decode-{os.getpid()}@{host}-dddd4444": True,  # this very writer
    }
    for name in kept:
        (tmp_path / name).mkdir()
    writer = DatasetWriter(tmp_path, np.arange(64, dtype=np.int32), 4)
    try:
        assert writer.tmp.name.startswith(f".tmp-decode-{os.getpid()}@{host}-")
        assert {n: (tmp_path / n).is_dir() for n in kept} == kept
    finally:
        writer.abort()


# ---- Dagster: weka-assets materialize killed while it rebuilds a changed corpus -------------


def _descriptors(store: Path) -> dict[str, dict]:
    return {
        p.relative_to(store / "descriptors").as_posix(): orjson.loads(p.read_bytes())
        for p in sorted((store / "descriptors").rglob("*.json"))
    }


def _assert_outputs_readable(store: Path) -> dict[str, dict]:
    """Every asset's stored descriptor loads, and the data it points to is intact: the raw
    snapshot's checksums, the scope report, the dataset (every file's sha256), the replay
    results and the blast radius. Returns the descriptors' data by asset."""
    import hashlib

    from weka_assets.replay.unbounded import ReplayResult
    from weka_assets.traces.scope import ScopeReport

    out = {}
    for name, body in _descriptors(store).items():
        asset, data = name.split("/")[0], body["data"]
        out[asset] = data
        if asset == "raw_traces":
            snapshot = store / data["key"]
            files = [snapshot] if snapshot.is_file() else sorted(snapshot.iterdir())
            digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
            assert digests == {f["name"]: f["sha256"] for f in data["files"]}, name
        elif asset == "trace_scope":
            ScopeReport.model_validate_json((store / data["report_key"]).read_bytes())
        elif asset == "decoded_dataset":
            open_dataset(store / data["key"], verify=True)
        elif asset == "replay_benchmark":
            ReplayResult.model_validate_json((store / data["result_key"]).read_bytes())
            pq.read_table(store / data["per_call_key"])
        elif asset == "manifest_blast_radius":
            orjson.loads((store / data["key"]).read_bytes())
    return out


def _latest_dataset_recorded(home: Path, monkeypatch) -> str | None:
    """The decode key of the newest `decoded_dataset` materialization in the instance."""
    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("decoded_dataset"))
    if event is None:
        return None
    return event.asset_materialization.metadata["decode_key"].value


def test_killed_materialization_keeps_previous_outputs(tmp_path, request, monkeypatch):
    import dagster as dg

    from weka_assets.definitions import build_defs, resources
    from weka_assets.instance.materialize import materialize_corpus

    home, store = tmp_path / "dagster-home", tmp_path / "store"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    source = tmp_path / "corpus.jsonl"
    shutil.copyfile(synthetic("semianalysis", traces=3, seed=1), source)
    registry = tmp_path / "corpora.yaml"
    registry.write_text(json.dumps({"corpora": [{"name": "crash", "source": str(source)}]}))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("WEKA_ASSETS_REGISTRY", str(registry))

    # the previous materialization, complete (in process: the same definitions as the CLI's)
    with dg.DagsterInstance.get() as instance:
        steps = materialize_corpus(
            "crash", instance, build_defs(resource_defs=resources(str(store))), log_level="ERROR"
        )
    assert all(s.success for s in steps), [s.failures for s in steps]
    before = _assert_outputs_readable(store)
    v1_key = before["decoded_dataset"]["decode_key"]
    assert _latest_dataset_recorded(home, monkeypatch) == v1_key

    # the corpus changes upstream before every run: each run has a new dataset to decode
    cmd = weka_cmd("materialize", "--corpus", "crash", "--store", store)
    # one process per run (worker processes, killed with their group, are the decode test's)
    env = child_env(DAGSTER_HOME=home, WEKA_ASSETS_REGISTRY=registry, WEKA_ASSETS_WORKERS="1")
    datasets = store / "datasets"
    versions = iter(range(2, 100))
    rng = random.Random(SEED + 1)
    kills = misses = 0
    for i in range(scaled(3)):
        trigger = ("mid-decode", "after-decode", "anywhere")[i % 3]
        for attempt in range(MAX_ATTEMPTS):  # a run that ended before its kill is tried again
            write_corpus(iter_corpus("semianalysis", 3, next(versions), "small"), source)
            known = {p.name for p in visible(datasets)}
            with Group(cmd, env, tmp_path / f"materialize-{i}-{attempt}.log") as g:
                if trigger == "mid-decode":
                    wait_for(lambda: aside(datasets), g, RUN_LIMIT_S)
                    time.sleep(rng.uniform(0, 0.3))
                elif trigger == "after-decode":  # in the replay and blast radius steps
                    wait_for(partial(_new_dataset, datasets, known), g, RUN_LIMIT_S)
                    time.sleep(rng.uniform(0, 1.0))
                else:
                    delay = rng.uniform(0.5, 8.0)
                    wait_for(lambda: g.elapsed() >= delay, g, RUN_LIMIT_S)  # noqa: B023
                killed = g.kill()
            # whatever the kill interrupted: every stored output still loads and verifies,
            # the previous dataset is intact, and the instance still opens and records a
            # dataset that exists and verifies
            _assert_outputs_readable(store)
            assert_only_intact(datasets)
            assert verify_dataset(datasets / v1_key) is None
            recorded = _latest_dataset_recorded(home, monkeypatch)
            assert recorded is not None and verify_dataset(datasets / recorded) is None
            if killed:
                kills += 1
                injected(request, f"SIGKILL weka-assets materialize ({trigger})")
                break
            misses += 1
        else:
            pytest.fail(f"{MAX_ATTEMPTS} materializations in a row ended before their kill")
    request.node.user_properties.append(("runs_that_ended_before_their_kill", misses))
    assert kills == scaled(3)

    # a rerun succeeds and builds the new corpus's dataset; nothing abandoned is left behind
    with Group(cmd, env, tmp_path / "materialize-rerun.log") as g:
        assert g.wait(RUN_LIMIT_S) == 0, g.output()
    after = _assert_outputs_readable(store)
    v2_key = after["decoded_dataset"]["decode_key"]
    assert after["raw_traces"]["digest"] == corpus_digest(file_digests(source))  # the latest
    assert v2_key != v1_key
    assert _latest_dataset_recorded(home, monkeypatch) == v2_key
    assert after["replay_benchmark"]["decode_key"] == v2_key
    assert aside(datasets) == []
    assert verify_dataset(datasets / v1_key) is None  # the previous dataset is still there
