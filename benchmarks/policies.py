"""How long does each eviction policy's capacity curve take, against today's LRU sweep?

Builds a synthetic corpus (`semianalysis`, full size, `--traces` traces; or takes `--corpus`),
decodes it into a temporary folder, then in a fresh child process per policy (so each peak RSS
is that policy's) times `sizing.capacity_report` with that one policy and the default 12-point
sweep plus the unbounded point, over the leading traces up to `--max-blocks` block accesses
(the `capacity_curve` asset's budget: 8,000,000). Prints seconds, accesses per second, the ratio to the LRU sweep and peak RSS;
appends one JSON line per policy to benchmarks/results/policies.jsonl.
Run: .venv/bin/python benchmarks/policies.py [--traces 391 --policies lru ttl opt vllm]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(dataset: str, policy: str, max_blocks: int) -> dict:
    """In this process: one policy's curve on one decoded dataset."""
    from weka_assets.decoding.dataset import open_dataset
    from weka_assets.replay.capacity import capacity_traces
    from weka_assets.replay.sizing import SizingOptions, capacity_report

    ds = open_dataset(dataset)
    ds = ds.head(capacity_traces(ds, max_blocks))
    start = time.perf_counter()
    report = capacity_report(ds, options=SizingOptions(policies=[policy]))
    seconds = time.perf_counter() - start
    curve = report.curves[0]
    return {
        "policy": policy,
        "traces": len(ds.traces),
        "calls": curve.calls,
        "accesses": curve.blocks_total,
        "points": len(curve.points),
        "seconds": round(seconds, 3),
        "hit_rates": [p.hit_rate for p in curve.points],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=391)
    ap.add_argument("--corpus", type=Path, default=None, help="a corpus file instead of synth")
    ap.add_argument("--max-blocks", type=int, default=8_000_000)
    ap.add_argument("--profile", default="semianalysis")
    ap.add_argument("--size", choices=("small", "full"), default="full")
    ap.add_argument("--policies", nargs="+", default=["lru", "ttl", "opt", "vllm"])
    ap.add_argument(
        "--results", type=Path, default=Path(__file__).parent / "results" / "policies.jsonl"
    )
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # child: dataset, policy
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.max_blocks)))
        return 0

    from weka_assets.pipeline import decode_corpus
    from weka_assets.synthetic import iter_corpus, write_corpus

    rows = []
    with tempfile.TemporaryDirectory(prefix="weka-bench-policies-") as tmp:
        corpus = args.corpus or write_corpus(
            iter_corpus(args.profile, args.traces, 0, args.size), Path(tmp) / "corpus.jsonl"
        )
        out = decode_corpus(corpus, Path(tmp) / "store", measure_drift=False)
        for policy in args.policies:
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--measure",
                    str(out.path),
                    policy,
                    "--max-blocks",
                    str(args.max_blocks),
                ],  # fmt: skip
                check=True,
                capture_output=True,
                text=True,
            )
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    lru = next((r["seconds"] for r in rows if r["policy"] == "lru"), None)
    for r in rows:
        r.update(corpus_traces=args.traces, profile=args.profile, size=args.size)
        r.update(max_blocks=args.max_blocks, unix=int(time.time()))
        r["vs_lru"] = round(r["seconds"] / lru, 2) if lru else None
        print(
            f"{r['policy']:>5}: {r['traces']} traces, {r['accesses']:,} accesses, {r['points']} points in "
            f"{r['seconds']:7.2f} s ({r['accesses'] * r['points'] / r['seconds'] / 1e6:6.2f} M "
            f"access-points/s), {r['vs_lru'] if lru else '-'} x the LRU sweep, peak RSS "
            f"{r['peak_rss_mb']} MB",
            flush=True,
        )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
