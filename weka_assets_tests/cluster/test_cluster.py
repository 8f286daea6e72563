"""The chain on a real deployment on this machine (`scripts/cluster`): PostgreSQL instance
storage, a Redis broker, moto's S3 server as the store, the daemon, the webserver, and two
prefork Celery workers, each with its own cache folder and host name as if on its own machine.

One cluster for the module, in phases (tests in file order):
1. five corpora launched at once through `weka-assets launch --url --wait`; while they run, the
   worker that executes `big`'s decoding step (`decoded_datasets`) is SIGKILLed (its whole
   process group, as a machine dying); `dup-a` and `dup-b` are two partitions of the same bytes, so two workers
   decode one decode key at once;
2. what the store holds afterwards: every dataset complete and verified, byte-identical to a
   single-process `weka-assets decode` of the same corpus, one dataset for the shared key;
3. the per-corpus run limit: a corpus-only run and a corpus x tokenizer run of one corpus,
   submitted at once, never overlap, while runs of two corpora do (self-contained: it launches
   the chains it needs when phase 1 did not run);
4. a manifest bump (new code deployed: `reload`), then `weka-assets backfill-stale --url`.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import s3fs

from weka_assets.decoding.dataset import verify_dataset
from weka_assets.definitions import defs
from weka_assets.defs.jobs import CORPUS_ASSETS, DECODE_ASSETS
from weka_assets.defs.partitions import CORPUS_TAG, corpus_of, corpus_tokenizer_partitions
from weka_assets.synthetic import iter_corpus, write_corpus
from weka_assets.versions import MANIFEST_VERSION
from weka_assets_tests.cluster import harness as wc
from weka_assets_tests.dagster_dev import bump_manifest, copy_project

# the phases share one deployment and run in file order, so one pytest worker runs them all:
# scripts/test.sh runs pytest-xdist with --dist loadfile
pytestmark = [pytest.mark.cluster, pytest.mark.live, pytest.mark.slow]

# one step per op: both datasets of a partition decode in one step (`decoded_datasets`)
DECODE_STEP = defs.resolve_assets_def("decoded_dataset").node_def.name
STEPS_PER_CORPUS = len(
    {defs.resolve_assets_def(a).node_def.name for a in (*CORPUS_ASSETS, *DECODE_ASSETS)}
)
CORPORA = ("sample", "kvt", "big", "dup-a", "dup-b")


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = httpx.post(
        f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
    ).json()
    assert not body.get("errors"), body["errors"]
    return body["data"]


@pytest.fixture(scope="module")
def deployment():
    """A started cluster (sensors stopped: runs start only when launched), its environment,
    the project copy it loads its code from, and the corpora of its registry."""
    state_dir = Path(tempfile.mkdtemp(prefix="weka-cluster-"))
    state_dir.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data folder
    project = copy_project(state_dir / "project", registry=False)
    corpora = state_dir / "corpora"
    big = write_corpus(iter_corpus("semianalysis", 60, 3, "full"), corpora / "big.jsonl")
    dup = write_corpus(iter_corpus("kv-cache-tester", 6, 5, "small"), corpora / "dup.jsonl")
    sources = {
        "sample": "builtin:sample",
        "kvt": "builtin:sample-kvt",
        "big": str(big),
        "dup-a": str(dup),
        "dup-b": str(dup),
    }
    registry = state_dir / "corpora.yaml"
    registry.write_text(
        "corpora:\n" + "".join(f"  - name: {n}\n    source: {s}\n" for n, s in sources.items())
    )
    cluster = wc.Cluster(state_dir / "state")
    try:
        state = wc.start(
            cluster,
            workers=2,
            project=project,
            registry=str(registry),
            sensors_stopped=True,
            # longer than any step here even on a busy machine (a longer step would be
            # delivered twice), short enough that the killed one comes back soon
            visibility_timeout=40,
        )
        env = dict(os.environ, **cluster.environment(state), PYTHONPATH=str(project))
        yield {
            "cluster": cluster,
            "env": env,
            "url": env["WEKA_ASSETS_WEBSERVER"],
            "project": project,
            "sources": sources,
            "phase1": {},
        }
    finally:
        if cluster.state_file.exists():
            wc.stop(cluster)
        subprocess.run(["rm", "-rf", str(state_dir)], check=False)


def _cli(env: dict, cwd: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weka_assets.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


RUNS_OF = """query($p: String!) { runsOrError(filter: {tags: [{key: "dagster/partition", value: $p}]})
  { ... on Runs { results { runId status } } } }"""
ENGINE = """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
  __typename ... on EngineEvent { message metadataEntries { label ... on TextMetadataEntry { text } } }
} } } }"""


def _celery_workers_of(url: str, run_id: str, step: str) -> list[str]:
    """The workers (w1, w2) that started `step` in the run, in order: Dagster-celery records an
    engine event naming the Celery worker whenever a task starts executing."""
    events = graphql(url, ENGINE, {"id": run_id})["logsForRun"]["events"]
    out = []
    for e in events:
        if e["__typename"] == "EngineEvent" and f"Executing steps {step} in" in e["message"]:
            for m in e["metadataEntries"]:
                if m["label"] == "Celery worker":
                    out.append(m["text"].split("@")[0])
    return out


def _kill_the_decoding_worker(d: dict, partition: str, found: dict, stop: threading.Event):
    """Wait until a worker starts the decoding step of `partition`, then SIGKILL that worker's
    whole process group (its prefork child with it)."""
    url, pids = d["url"], d["cluster"].load()["pids"]
    try:
        _watch(url, pids, partition, found, stop)
    except Exception as exc:  # reported by the test's assertion on `found`
        found["error"] = repr(exc)


def _watch(url: str, pids: dict, partition: str, found: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        runs = graphql(url, RUNS_OF, {"p": partition})["runsOrError"]["results"]
        for run in runs:
            workers = _celery_workers_of(url, run["runId"], DECODE_STEP)
            if workers:
                os.killpg(pids[workers[0]], signal.SIGKILL)
                found.update(run_id=run["runId"], killed=workers[0])
                return
        time.sleep(0.1)


def test_corpora_launched_at_once_run_on_both_workers_and_survive_a_killed_worker(deployment):
    d = deployment
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_the_decoding_worker, args=(d, "big|deepseek", killed, stop), daemon=True
    )
    killer.start()
    launches = {name: _launch(d, name) for name in CORPORA}
    results = {}
    try:
        for name, proc in launches.items():
            out, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, f"{name}: {err[-3000:]}\n{out}"
            results[name] = json.loads(out)
    finally:
        stop.set()
        for proc in launches.values():
            if proc.poll() is None:
                proc.kill()
    d["phase1"].update(results=results, killed=killed)

    for name, summary in results.items():
        assert summary["status"] == "COMPLETED_SUCCESS", summary
        assert {r["partition"] for r in summary["runs"]} >= {name, f"{name}|deepseek"}
    steps = {}
    for summary in results.values():
        for host, n in summary["steps_by_host"].items():
            steps[host] = steps.get(host, 0) + n
    assert set(steps) == {"w1", "w2"} and min(steps.values()) > 0, steps
    assert sum(steps.values()) == STEPS_PER_CORPUS * len(CORPORA)  # every step, once

    # the worker running big's decode was killed mid-step: the step was delivered again, to
    # the other worker, within the same run, and that run succeeded
    assert "run_id" in killed, f"no worker was seen starting big's decoding step: {killed}"
    workers = _celery_workers_of(d["url"], killed["run_id"], DECODE_STEP)
    assert workers[0] == killed["killed"] and killed["killed"] not in workers[1:], workers
    assert len(workers) == 2, workers
    run = graphql(
        d["url"], "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
        {"id": killed["run_id"]},
    )["runOrError"]  # fmt: skip
    assert run["status"] == "SUCCESS"
    assert not wc.alive(d["cluster"].load()["pids"][killed["killed"]])


def _s3(env: dict) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        key=env["AWS_ACCESS_KEY_ID"],
        secret=env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=env["AWS_ENDPOINT_URL"],
        use_listings_cache=False,
    )


def _decode_key(env: dict, corpus: str) -> str:
    fs = _s3(env)
    body = json.loads(
        fs.cat_file(
            f"{env['WEKA_ASSETS_STORE'][5:]}/descriptors/decoded_dataset/{corpus}__deepseek.json"
        )
    )
    return body["data"]["decode_key"]


def test_the_store_holds_complete_datasets_identical_to_a_single_process_decode(
    deployment, tmp_path
):
    d = deployment
    assert d["phase1"].get("results"), "the launch phase did not complete"
    env, fs = d["env"], _s3(d["env"])
    base = env["WEKA_ASSETS_STORE"][len("s3://") :]
    objects = fs.find(f"{base}/datasets")
    assert objects and not [o for o in objects if ".tmp" in o], objects
    published = sorted({o[len(base) + 10 :].split("/")[0] for o in objects})
    # nothing half-published: every dataset folder on S3 has its manifest and verifies
    local = tmp_path / "from-s3"
    for key in published:
        fs.get(f"{base}/datasets/{key}", str(local / key), recursive=True)
        assert verify_dataset(local / key) is None, key

    keys = {name: _decode_key(env, name) for name in CORPORA}
    assert keys["dup-a"] == keys["dup-b"]  # one decode key, decoded by two workers at once
    # published: these, and the legacy session-scope datasets replay_benchmark compares with
    assert set(keys.values()) <= set(published)
    for name in ("sample", "kvt", "big"):
        out = _cli(env, d["project"], "decode", d["sources"][name], "--out", str(tmp_path / "one"))
        assert out.returncode == 0, out.stderr
        single = Path(out.stdout.strip().splitlines()[-1])
        assert single.name == keys[name], (name, single.name, keys[name])
        files = sorted(p.name for p in single.iterdir())
        assert files == sorted(p.name for p in (local / keys[name]).iterdir())
        for f in files:
            assert (single / f).read_bytes() == (local / keys[name] / f).read_bytes(), (name, f)


LAUNCH_RUN = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN_TIMES = """query($ids: [String!]) { runsOrError(filter: {runIds: $ids}) { ... on Runs {
  results { runId status startTime endTime tags { key value } } } } }"""
ALL_RUNS = """{ runsOrError { ... on Runs { results { runId tags { key value } } } } }"""
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}


def _launch(d: dict, corpus: str) -> subprocess.Popen:
    """`weka-assets launch --corpus CORPUS --url URL --wait` against the deployment, started."""
    return subprocess.Popen(
        [sys.executable, "-m", "weka_assets.cli", "launch", "--corpus", corpus,
         "--url", d["url"], "--wait"],
        env=d["env"], cwd=d["project"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _submit(url: str, job: str, partition: str) -> str:
    """A run of `job` for one partition, launched by hand as the UI's Materialize launches it:
    with Dagster's partition tags only, no corpus tag (the run coordinator adds it)."""
    if "|" in partition:
        tags = dict(corpus_tokenizer_partitions.get_tags_for_partition_key(partition))
    else:
        tags = {"dagster/partition": partition}
    params = {
        "selector": {
            "repositoryLocationName": "weka_assets",
            "repositoryName": "__repository__",
            "jobName": job,
        },
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }
    launched = graphql(url, LAUNCH_RUN, {"p": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _overlap(a: dict, b: dict) -> bool:
    return a["startTime"] < b["endTime"] and b["startTime"] < a["endTime"]


def test_runs_of_one_corpus_never_overlap_whatever_partitions_they_cover(deployment):
    d = deployment
    url, corpora = d["url"], ("kvt", "dup-a")
    if not d["phase1"].get("results"):  # run alone: the chains the decode runs read
        launches = [_launch(d, name) for name in corpora]
        for proc in launches:
            out, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, err[-3000:]

    # per corpus, a corpus-only run (raw_traces, trace_scope) and a corpus x tokenizer run
    # (the decoding chain), all four submitted at once, by hand (no corpus tag: the UI's)
    submitted = {}
    for corpus in corpora:
        submitted[(corpus, "scope_job")] = _submit(url, "scope_job", corpus)
        submitted[(corpus, "decode_job")] = _submit(url, "decode_job", f"{corpus}|deepseek")
    deadline = time.monotonic() + 900
    while True:
        runs = graphql(url, RUN_TIMES, {"ids": list(submitted.values())})["runsOrError"]
        by_id = {r["runId"]: r for r in runs["results"]}
        if all(r["status"] in TERMINAL_RUN for r in by_id.values()):
            break
        assert time.monotonic() < deadline, {k: by_id[v]["status"] for k, v in submitted.items()}
        time.sleep(2)
    run = {key: by_id[run_id] for key, run_id in submitted.items()}
    assert {r["status"] for r in run.values()} == {"SUCCESS"}, run
    t0 = min(r["startTime"] for r in run.values())
    for (corpus, job), r in sorted(run.items(), key=lambda kv: kv[1]["startTime"]):
        print(f"{corpus:6} {job:11} {r['startTime'] - t0:6.1f} s .. {r['endTime'] - t0:6.1f} s")
    for corpus in corpora:
        scope, decode = run[(corpus, "scope_job")], run[(corpus, "decode_job")]
        assert not _overlap(scope, decode), (corpus, scope, decode)
    assert any(
        _overlap(run[(corpora[0], a)], run[(corpora[1], b)])
        for a in ("scope_job", "decode_job")
        for b in ("scope_job", "decode_job")
    ), run

    # and every run this deployment has run so far (the launch backfills' too) carries the
    # corpus tag of its partition, the corpus-only ones included
    for r in graphql(url, ALL_RUNS)["runsOrError"]["results"]:
        tags = {t["key"]: t["value"] for t in r["tags"]}
        if "dagster/partition" in tags:
            assert tags.get(CORPUS_TAG) == corpus_of(tags["dagster/partition"]), tags


def test_a_manifest_bump_is_backfilled_through_the_cluster(deployment):
    d = deployment
    assert d["phase1"].get("results"), "the launch phase did not complete"
    new_version = bump_manifest(d["project"])
    wc.reload(d["cluster"])  # the new code deployed: daemon, webserver and workers restarted
    env, project = d["env"], d["project"]

    stale = _cli(env, project, "stale", "--json")
    assert stale.returncode == 0, stale.stderr
    listed = {(s["asset"], s["partition"]) for s in json.loads(stale.stdout)["stale"]}
    expected = {(a, f"{c}|deepseek") for a in DECODE_ASSETS for c in CORPORA}
    assert listed == expected

    out = _cli(env, project, "backfill-stale", "--url", d["url"], "--wait")
    assert out.returncode == 0, out.stderr[-3000:]
    after = _cli(env, project, "stale", "--json")
    assert json.loads(after.stdout)["stale"] == [], after.stdout
    fs = _s3(env)
    base = env["WEKA_ASSETS_STORE"][len("s3://") :]
    for c in CORPORA:
        body = json.loads(fs.cat_file(f"{base}/descriptors/decoded_dataset/{c}__deepseek.json"))
        assert body["data"]["manifest_version"] == new_version == MANIFEST_VERSION + 1
