"""What a user of the UI waits for: a new corpus's whole chain through a real webserver and
daemon, beside the command-line chain and the runs' own time; and a manifest bump's rebuild.

Each case starts `scripts/dev` (`dagster dev`: webserver, daemon, code server) on 127.0.0.1 with
a fresh DAGSTER_HOME (the repository's dagster.yaml, or with `--dagster-defaults` the settings
before issue 27: Dagster's own 30 s backfill loop and 5 s dequeue) and a fresh store, stops the
discovery sensor (so that only what is launched runs; the automation sensor keeps running, as
for a new user), registers the benchmark corpus (391 full-size traces) in the registry, and
measures, from a fresh start each time:

- `launch`: `weka-assets launch --corpus bench --url URL --wait`, the command's wall time;
- `ui`: the backfill the UI's "Materialize all..." launches (lineage filtered to
  `not group:live and not group:exports`, the corpus ticked: the same `launchPartitionBackfill`
  mutation, asset selection and partition names), from the mutation to the backfill's end;
- `bump` (after `launch`, same instance and store): `dagster dev` restarted over a copy of the
  project whose MANIFEST_VERSION is raised by one (automation stopped, as in the README's
  "after a loader fix": the deterministic path), then `weka-assets backfill-stale --url URL
  --wait`: the command's wall, and from the backfill's launch to its end.

Beside each: the runs' own time (each run's start to end, from the webserver, summed: the runs
of a chain are sequential) and, measured in the same session, the command-line chain of
benchmarks/chain.py (`weka-assets decode` then `weka-assets replay`). The targets (issue 27):
launch and "Materialize all" within the CLI chain + 15 s, the bump within its runs + 15 s.
The servers are stopped by PID. Results are printed and appended to
benchmarks/results/ui_latency.jsonl.

    .venv/bin/python benchmarks/ui_latency.py                      # launch, ui, bump
    .venv/bin/python benchmarks/ui_latency.py --dagster-defaults   # the same, settings before
    .venv/bin/python benchmarks/ui_latency.py --cases launch --repeats 3
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402
from chain import chain_command, corpus, machine, measure  # noqa: E402

from weka_assets.defs.jobs import CORPUS_ASSETS, DECODE_ASSETS  # noqa: E402
from weka_assets.instance.launch import backfill_summary  # noqa: E402
from weka_assets.instance.staleness import backfill_failed, graphql, wait_backfill  # noqa: E402
from weka_assets_tests.dagster_dev import (  # noqa: E402
    bumped_copy,
    start_dagster_dev,
    start_dev_script,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "ui_latency.jsonl"
CORPUS = "bench"
TOKENIZER = "deepseek"
# what the lineage filter `not group:live and not group:exports` leaves: the chain
UI_ASSETS = [*CORPUS_ASSETS, *DECODE_ASSETS]
# The instance settings before issue 27: Dagster's own queue cadence and backfill loop.
DAGSTER_DEFAULTS_YAML = """telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
run_monitoring:
  enabled: true
"""

SENSORS = """{ sensorsOrError(repositorySelector: {repositoryName: "__repository__",
  repositoryLocationName: "weka_assets"}) { ... on Sensors { results { name
  sensorState { id status } } } } }"""
STOP_SENSOR = """mutation($id: String!) { stopSensor(id: $id) { __typename } }"""
UI_BACKFILL = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(
  backfillParams: $params) { __typename ... on LaunchBackfillSuccess { backfillId }
  ... on PythonError { message } } }"""
ADD_PARTITION = """mutation($key: String!) { addDynamicPartition(repositorySelector:
  {repositoryName: "__repository__", repositoryLocationName: "weka_assets"},
  partitionsDefName: "corpus", partitionKey: $key) { __typename } }"""
RUN_TIMES = """query($id: ID!) { runOrError(runId: $id) { ... on Run { startTime endTime
  creationTime } } }"""


def _env(work: Path, registry: Path, defaults: bool, automation: str = "running") -> dict:
    home = work / "home"
    home.mkdir(exist_ok=True)
    if not (home / "dagster.yaml").exists():
        if defaults:
            (home / "dagster.yaml").write_text(DAGSTER_DEFAULTS_YAML)
        else:
            shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        WEKA_ASSETS_STORE=str(work / "store"),
        WEKA_ASSETS_REGISTRY=str(registry),
        WEKA_ASSETS_AUTOMATION=automation,
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("WEKA_ASSETS_WEBSERVER", None)
    return env


def _registry(work: Path, path: Path | None) -> Path:
    """The registry: empty (the discovery sensor's first tick finds nothing), or the corpus."""
    registry = work / "corpora.yaml"
    entries = [{"name": CORPUS, "source": str(path), "scope_policy": "fail"}] if path else []
    registry.write_text(yaml.safe_dump({"corpora": entries}))
    return registry


def _stop_discovery(url: str) -> None:
    for sensor in graphql(url, SENSORS, {})["sensorsOrError"]["results"]:
        if sensor["name"] == "corpus_discovery_sensor":
            graphql(url, STOP_SENSOR, {"id": sensor["sensorState"]["id"]})


BACKFILL_TIMES = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { timestamp endTimestamp } } }"""


def _runs(url: str, backfill_id: str) -> dict:
    """The backfill's runs: how many, their own time summed, the span from the first run's
    creation to the last run's end, and the timeline from the backfill's creation (seconds):
    each run created (submitted to the queue), started (its process has loaded the code),
    ended, then the backfill marked done."""
    summary = backfill_summary(url, backfill_id)
    times = [graphql(url, RUN_TIMES, {"id": r["run_id"]})["runOrError"] for r in summary["runs"]]
    backfill = graphql(url, BACKFILL_TIMES, {"id": backfill_id})["partitionBackfillOrError"]
    t0 = backfill["timestamp"]
    timeline = [
        [round(t[k] - t0, 1) for k in ("creationTime", "startTime", "endTime")]
        for t in sorted(times, key=lambda t: t["creationTime"])
    ]
    return {
        "backfill_s": round(backfill["endTimestamp"] - t0, 2),
        "timeline_runs_created_started_ended_s": timeline,
        "runs": len(times),
        "run_statuses": sorted(r["status"] for r in summary["runs"]),
        "runs_own_s": round(sum(t["endTime"] - t["startTime"] for t in times), 2),
        "runs_span_s": round(
            max(t["endTime"] for t in times) - min(t["creationTime"] for t in times), 2
        ),
    }


def _cli(env: dict, project: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "weka_assets.cli", *args],
        cwd=project,
        env=dict(env, PYTHONPATH=str(project)),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(
            f"weka-assets {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return wall, proc


def _serve(work: Path, env: dict, project: Path | None = None):
    log = work / f"dagster-dev-{int(time.time() * 1000)}.log"
    if project is None:
        return start_dev_script(env, log, ready_s=180)
    return start_dagster_dev(project, env, log, ready_s=180)


def case_launch(work: Path, path: Path, defaults: bool, bump: bool) -> list[dict]:
    """`weka-assets launch --wait` on a fresh instance; then, with `bump`, the manifest bump."""
    registry = _registry(work, None)
    env = _env(work, registry, defaults)
    server = _serve(work, env)
    try:
        _stop_discovery(server.url)
        _registry(work, path)
        wall, proc = _cli(env, ROOT, "launch", "--corpus", CORPUS, "--url", server.url, "--wait")
        summary = json.loads(proc.stdout)
        out = [
            {
                "case": "launch",
                "wall_s": round(wall, 2),
                **_runs(server.url, summary["backfill_id"]),
            }
        ]
    except BaseException:
        print(server.log_tail(8000), file=sys.stderr)
        raise
    finally:
        server.stop()
    if not bump:
        return out
    copy = bumped_copy(work / "bumped")
    env = _env(work, registry, defaults, automation="stopped")
    server = _serve(work, env, project=copy)
    try:
        wall, proc = _cli(env, copy, "backfill-stale", "--url", server.url, "--wait")
        backfills = [
            line.split()[1] for line in proc.stdout.splitlines() if line.startswith("backfill ")
        ]
        (backfill_id,) = backfills
        out.append({"case": "bump", "wall_s": round(wall, 2), **_runs(server.url, backfill_id)})
    except BaseException:
        print(server.log_tail(8000), file=sys.stderr)
        raise
    finally:
        server.stop()
    return out


def case_ui(work: Path, path: Path, defaults: bool) -> dict:
    """The UI's "Materialize all..." mutation, from sending it to the backfill's end."""
    env = _env(work, _registry(work, None), defaults)
    server = _serve(work, env)
    try:
        _stop_discovery(server.url)
        _registry(work, path)
        graphql(server.url, ADD_PARTITION, {"key": CORPUS})  # the UI's "Add partition"
        params = {
            "tags": [],
            "assetSelection": [{"path": [a]} for a in UI_ASSETS],
            "partitionNames": [CORPUS],
            "fromFailure": False,
        }
        t = time.perf_counter()
        answer = graphql(server.url, UI_BACKFILL, {"params": params})["launchPartitionBackfill"]
        assert answer["__typename"] == "LaunchBackfillSuccess", answer
        status = wait_backfill(server.url, answer["backfillId"], poll=0.5)
        wall = time.perf_counter() - t
        assert not backfill_failed(status), status
        return {"case": "ui", "wall_s": round(wall, 2), **_runs(server.url, answer["backfillId"])}
    except BaseException:
        print(server.log_tail(8000), file=sys.stderr)
        raise
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=int, default=391)
    ap.add_argument("--cases", default="launch,ui,bump", help="comma-separated: launch, ui, bump")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--dagster-defaults",
        action="store_true",
        help="the instance settings before issue 27 (Dagster's 30 s backfill loop, 5 s dequeue)",
    )
    ap.add_argument(
        "--workdir", type=Path, default=Path.home() / ".cache" / "weka-assets" / "bench"
    )
    args = ap.parse_args()
    cases = set(args.cases.split(","))
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = corpus(args.workdir, args.traces)
    settings = (
        "dagster defaults (30 s backfill loop, 5 s dequeue)"
        if args.dagster_defaults
        else ("dagster.yaml (2 s backfill loop, 1 s dequeue)")
    )
    print(f"corpus {path.name}; settings: {settings}", flush=True)
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="ui-latency-") as tmp:
            tmp = Path(tmp)
            (tmp / "cli").mkdir()
            chain = measure(["bash", "-c", chain_command(path, tmp / "cli")], pss=False)
            shutil.rmtree(tmp / "cli")
            results = []
            if cases & {"launch", "bump"}:
                (tmp / "launch").mkdir()
                results += case_launch(tmp / "launch", path, args.dagster_defaults, "bump" in cases)
            if "ui" in cases:
                (tmp / "ui").mkdir()
                results.append(case_ui(tmp / "ui", path, args.dagster_defaults))
        for r in results:
            r["cli_chain_s"] = round(chain["wall_s"], 2)
            target = r["runs_own_s"] if r["case"] == "bump" else r["cli_chain_s"]
            r["target_s"] = round(target + 15, 2)
            r["within_target"] = r["wall_s"] <= r["target_s"]
            print(
                f"  [{i + 1}] {r['case']:<6} wall {r['wall_s']:6.1f} s   runs' own {r['runs_own_s']:5.1f} s"
                f" ({r['runs']} runs)   CLI chain {r['cli_chain_s']:5.1f} s   target {r['target_s']:5.1f} s"
                f"   {'ok' if r['within_target'] else 'OVER'}",
                flush=True,
            )
        record = {
            "benchmark": "ui_latency",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "traces": args.traces,
            "settings": "dagster-defaults" if args.dagster_defaults else "dagster.yaml",
            "machine": machine(),
            "results": results,
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
