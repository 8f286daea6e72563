"""A backfill of 4 corpus partitions through a real deployment: 1 Celery worker against 2.

Starts `scripts/cluster` (PostgreSQL, Redis, moto's S3, daemon, webserver; sensors stopped) with
N workers, each pinned to its own core with one process (`--pin-cores`, as on machines of one
core each), launches one backfill of the whole chain of 4 synthetic corpora through the
webserver's GraphQL API, and waits for it. Prints, per worker count, the backfill's wall time,
the span from the first run's start to the last run's end, the summed step time, the steps each
worker ran, and the 1-worker / 2-worker ratios.
Run: .venv/bin/python benchmarks/cluster.py [--traces 100 --size full]
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from weka_assets.instance.launch import backfill_summary, launch_chain  # noqa: E402
from weka_assets.instance.staleness import backfill_failed, graphql, wait_backfill  # noqa: E402
from weka_assets.synthetic import iter_corpus, write_corpus  # noqa: E402
from weka_assets_tests.cluster import harness as wc  # noqa: E402

RUN_TIMES = """query($id: ID!) { runOrError(runId: $id) { ... on Run { startTime endTime
  stepStats { stepKey startTime endTime } } } }"""


def one(workers: int, registry: Path, corpora: list[str], tmp: Path) -> dict:
    cluster = wc.Cluster(tmp / f"cluster-{workers}")
    try:
        state = wc.start(
            cluster, workers, registry=str(registry), pin_cores=True, sensors_stopped=True
        )
        url = cluster.environment(state)["WEKA_ASSETS_WEBSERVER"]
        t0 = time.perf_counter()
        backfill = launch_chain(url, corpora, "deepseek")
        status = wait_backfill(url, backfill, poll=1.0)
        wall = time.perf_counter() - t0
        summary = backfill_summary(url, backfill)
        assert not backfill_failed(status), status
        runs = [graphql(url, RUN_TIMES, {"id": r["run_id"]})["runOrError"] for r in summary["runs"]]
        steps = sum(s["endTime"] - s["startTime"] for r in runs for s in r["stepStats"])
        span = max(r["endTime"] for r in runs) - min(r["startTime"] for r in runs)
        return {
            "workers": workers,
            "backfill_wall_s": round(wall, 1),
            "runs_span_s": round(span, 1),
            "step_time_s": round(steps, 1),
            "runs": len(runs),
            "run_statuses": sorted(
                f"{r['partition']} {r['status']}" + (" (a retry)" if r["retry_of"] else "")
                for r in summary["runs"]
            ),
            "steps_by_host": summary["steps_by_host"],
        }
    finally:
        if cluster.state_file.exists():
            wc.stop(cluster)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=100, help="traces per corpus")
    ap.add_argument("--size", choices=("small", "full"), default="full")
    ap.add_argument(
        "--results", type=Path, default=Path(__file__).parent / "results" / "cluster.jsonl"
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="weka-bench-cluster-"))
    tmp.chmod(0o755)  # PostgreSQL runs as its own user
    try:
        corpora = [f"bench-{i}" for i in range(4)]
        lines = ["corpora:"]
        for i, name in enumerate(corpora):
            path = write_corpus(
                iter_corpus("semianalysis", args.traces, 100 + i, args.size),
                tmp / f"{name}.jsonl",
            )
            lines += [f"  - name: {name}", f"    source: {path}"]
        registry = tmp / "corpora.yaml"
        registry.write_text("\n".join(lines) + "\n")
        results = [one(n, registry, corpora, tmp) for n in (1, 2)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    a, b = results
    report = {
        "corpora": 4,
        "traces_per_corpus": args.traces,
        "size": args.size,
        "results": results,
        "wall_ratio_1_over_2": round(a["backfill_wall_s"] / b["backfill_wall_s"], 2),
        "span_ratio_1_over_2": round(a["runs_span_s"] / b["runs_span_s"], 2),
    }
    print(json.dumps(report, indent=2))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as fh:
        fh.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
