"""The store on S3 (moto's server on 127.0.0.1, through s3fs) as several machines see it: each
Store object with a working folder of its own stands for one machine.

- A long-lived Store sees what another machine published after its own earlier look (no
  stale listing answers "not there").
- Publication is exclusive: of two machines publishing one key, one manifest wins, nothing
  stored is overwritten, and the other adopts the stored dataset.
- Two real processes (as if two machines) decoding one corpus into one store at once publish
  one dataset, and both end with local copies identical to it.
"""

import hashlib
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from weka_assets.decoding.dataset import _manifest_digest, verify_dataset
from weka_assets.pipeline import decode_corpus
from weka_assets.store import Store, StoreError
from weka_assets_tests.corpora import synthetic

BASE = "s3://store/weka"
WAIT_S = 300  # a process this slow is hung (no timing is asserted)


@pytest.fixture
def bucket(s3, monkeypatch):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    client.create_bucket(Bucket="store")
    client.put_bucket_versioning(Bucket="store", VersioningConfiguration={"Status": "Enabled"})
    return client


def _versions(client) -> dict[str, int]:
    """How many versions each object of the store has (1: never overwritten)."""
    out: dict[str, int] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket="store"):
        for v in page.get("Versions", []):
            out[v["Key"]] = out.get(v["Key"], 0) + 1
    return out


def _remote_files(client, prefix: str) -> dict[str, bytes]:
    out = {}
    for obj in client.list_objects_v2(Bucket="store", Prefix=prefix).get("Contents", []):
        body = client.get_object(Bucket="store", Key=obj["Key"])["Body"].read()
        out[obj["Key"][len(prefix) :]] = body
    return out


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")}


def _dataset(folder: Path, note: str, extra: bytes = b"") -> Path:
    """A small valid dataset folder (checksummed manifest) whose manifest says `note`."""
    folder.mkdir(parents=True)
    (folder / "a.npy").write_bytes(b"shared bytes")
    (folder / "b.bin").write_bytes(b"written by " + note.encode() + extra)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
    manifest = {"decode_key": folder.name, "note": note, "files": files}
    files["manifest.json"] = _manifest_digest(manifest)
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS))
    assert verify_dataset(folder) is None
    return folder


def test_a_missing_bucket_is_one_line_naming_it(s3, monkeypatch, tmp_path):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    store = Store("s3://missing-bucket/weka", cache_dir=tmp_path / "cache")  # nothing asked yet
    with pytest.raises(StoreError) as err:
        store.exists("datasets/x/manifest.json")
    assert str(err.value) == (
        "store s3://missing-bucket/weka: the S3 bucket 'missing-bucket' does not exist (create "
        "it first; the store never creates buckets)"
    )
    with pytest.raises(StoreError, match="'missing-bucket' does not exist"):
        store.write_bytes("provenance/x.json", b"{}")
    # the command line: one line, exit 1 (an instance of its own: no notice about a default)
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    run = subprocess.run(
        [sys.executable, "-m", "weka_assets.cli", "materialize", "--corpus", "sample",
         "--store", "s3://missing-bucket/weka"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, **s3.env, "HF_HUB_OFFLINE": "1", "DAGSTER_HOME": str(home)},
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "the S3 bucket 'missing-bucket' does not exist" in lines[0]


def test_a_missing_compute_log_or_source_bucket_is_one_line_naming_it(s3, tmp_path):
    """The other buckets an operator names (issue 28): the instance's compute logs (an
    S3ComputeLogManager, as deploy/dagster.yaml configures) and a corpus source."""
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\ncompute_logs:\n"
        "  module: dagster_aws.s3.compute_log_manager\n  class: S3ComputeLogManager\n"
        f"  config:\n    bucket: missing-logs\n    prefix: logs\n"
        f"    endpoint_url: {s3.env['AWS_ENDPOINT_URL']}\n"
    )
    env = {**os.environ, **s3.env, "HF_HUB_OFFLINE": "1", "DAGSTER_HOME": str(home)}
    store = str(tmp_path / "store")
    for argv, bucket in (
        (["materialize", "--corpus", "sample", "--store", store], "missing-logs"),
        (
            ["fetch", "s3://missing-source/traces.jsonl", "--out", str(tmp_path / "f")],
            "missing-source",
        ),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "weka_assets.cli", *argv],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert run.returncode == 1, run.stdout + run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and f"'{bucket}'" in lines[0], run.stderr
        assert "Traceback" not in run.stderr
    assert not any((tmp_path / "store").rglob("*.*"))  # nothing ran: no file stored


def test_a_long_lived_store_sees_what_another_machine_published(bucket, tmp_path):
    a = Store(BASE, cache_dir=tmp_path / "a")
    b = Store(BASE, cache_dir=tmp_path / "b")
    _dataset(b.local("datasets/k0"), "b")
    assert b.publish("datasets/k0") is True
    key = "datasets/k1"
    # A looks first: lists the datasets (k0 only) and asks for k1, not there yet
    assert set(a.manifests("datasets")) == {"k0"}
    assert not a.exists(key) and not a.exists(f"{key}/manifest.json")
    # B publishes k1
    _dataset(b.local(key), "b")
    assert b.publish(key) is True
    # A, the same object, must see all of it now
    assert a.exists(f"{key}/manifest.json")
    assert a.exists(key)
    assert set(a.manifests("datasets")) == {"k0", "k1"}
    pulled = a.pull(key)
    assert _local_files(pulled) == _local_files(b.local(key))


def test_of_two_machines_publishing_one_key_one_wins_and_the_other_adopts(bucket, tmp_path):
    a = Store(BASE, cache_dir=tmp_path / "a")
    b = Store(BASE, cache_dir=tmp_path / "b")
    key = "datasets/k2"
    _dataset(a.local(key), "a")
    _dataset(b.local(key), "b", extra=b" (longer)")
    assert a.manifests("datasets") == {}  # a stale listing here must not matter later
    won = [a.publish(key), b.publish(key)]
    assert won == [True, False]
    stored = _remote_files(bucket, "weka/datasets/k2/")
    assert stored == _local_files(a.local(key))  # A's dataset, whole
    # B's local copy is now the stored one (its own moved away, nothing of it left)
    assert _local_files(b.local(key)) == stored
    assert orjson.loads((b.local(key) / "manifest.json").read_bytes())["note"] == "a"
    assert verify_dataset(b.local(key)) is None
    assert [p.name for p in b.local(key).parent.iterdir()] == ["k2"]
    # nothing stored was ever overwritten
    assert set(_versions(bucket).values()) == {1}
    # publishing again changes nothing: A finds its own manifest, B the same bytes
    assert [a.publish(key), b.publish(key)] == [False, False]
    assert set(_versions(bucket).values()) == {1}


# ---- two processes, as two machines --------------------------------------------------------


def _decode_as_a_machine(env, corpus, cache_dir, report_json, index, ready, first_done, out):
    """A process standing in for a machine: decode_in_store (the Dagster asset's path) into the
    shared S3 store with a working folder of its own. Both processes meet at the start of the
    publication (the test hook), both having decoded; the second publishes once the first is
    done, as if its conditional write reached S3 a moment later."""
    import os

    os.environ.update(env)
    from weka_assets import store as store_module
    from weka_assets.decoding.settings import DecodeSettings
    from weka_assets.defs.resources import WekaStore
    from weka_assets.store_chain import decode_in_store
    from weka_assets.traces.scope import ScopeReport
    from weka_assets.versions import MANIFEST_VERSION

    def hook(store, subpath):
        ready.wait(WAIT_S)  # both decoded, neither published: the race is on
        if index == 1:
            assert first_done.wait(WAIT_S)

    store_module.PUBLISH_TEST_HOOK = hook
    report = ScopeReport.model_validate_json(report_json)
    try:
        res = decode_in_store(
            WekaStore(base_path=BASE, cache_dir=cache_dir),
            corpus,
            DecodeSettings(),
            report,
            MANIFEST_VERSION,
            measure_drift=False,
        )
        out.put((index, res.key, res.reused, res.published, str(res.path)))
    except BaseException as exc:
        out.put((index, repr(exc)))
        raise
    finally:
        if index == 0:
            first_done.set()


@pytest.mark.slow
def test_two_machines_decoding_one_corpus_at_once_publish_one_dataset(bucket, s3, tmp_path):
    from weka_assets.pipeline import scope_report

    corpus = synthetic("semianalysis", traces=3, seed=11)
    report = scope_report(corpus)
    # a serial reference decode, to know the key and to share the filler cache
    ref = decode_corpus(corpus, tmp_path / "ref", report=report, measure_drift=False)
    ctx = multiprocessing.get_context("spawn")
    ready, first_done, out = ctx.Barrier(2), ctx.Event(), ctx.Queue()
    procs = []
    for i in range(2):
        cache = tmp_path / f"machine-{i}"
        shutil.copytree(ref.path.parent / ".filler-cache", cache / "datasets" / ".filler-cache")
        env = {**s3.env, "WEKA_ASSETS_WORKERS": "1"}
        args = (env, str(corpus), str(cache), report.model_dump_json(), i, ready, first_done, out)
        procs.append(ctx.Process(target=_decode_as_a_machine, args=args))
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=WAIT_S) for _ in procs)
    for p in procs:
        p.join(WAIT_S)
    assert [p.exitcode for p in procs] == [0, 0], results
    keys = {r[1] for r in results}
    assert keys == {ref.key}, results
    assert [r[2] for r in results] == [False, False]  # both decoded: neither saw the other's
    assert sorted(r[3] for r in results) == [False, True], "exactly one publishes"
    prefix = f"weka/datasets/{ref.key}/"
    stored = _remote_files(bucket, prefix)
    assert stored and "manifest.json" in stored
    for r in results:
        assert _local_files(Path(r[4])) == stored
    assert stored == {k: v for k, v in _local_files(ref.path).items()}  # content only
    versions = _versions(bucket)
    assert all(versions[k] == 1 for k in versions if k.startswith(prefix)), versions
