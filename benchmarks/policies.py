"""How long does each eviction policy's capacity curve take, against today's LRU sweep?

Builds a synthetic corpus (`semianalysis`, full size, `--traces` traces; or takes `--corpus`),
decodes it into a temporary folder, then in a fresh child process per policy (so each peak RSS
is that policy's) times `sizing.capacity_report` with that one policy and the default 12-point
sweep plus the unbounded point, over the leading traces up to `--max-blocks` block accesses
(the `capacity_curve` asset's budget: 8,000,000), three times: the first report of the process
(what a command or a Dagster run waits for; for opt and vllm it includes loading numba and
their compiled code) and the best of the two after it (code loaded, as in a notebook or any
process that reports more than once). Prints both with their ratio to the LRU sweep, accesses
per second and peak RSS; appends one JSON line per policy to benchmarks/results/policies.jsonl.
Run: .venv/bin/python benchmarks/policies.py [--traces 391 --policies lru ttl opt vllm]
"""

import argparse
import json
import os
import resource
import statistics
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
    times = []
    for _ in range(3):  # the first loads the policy's compiled code (opt, vllm); then loaded
        start = time.perf_counter()
        report = capacity_report(ds, options=SizingOptions(policies=[policy]))
        times.append(time.perf_counter() - start)
    curve = report.curves[0]
    return {
        "policy": policy,
        "traces": len(ds.traces),
        "calls": curve.calls,
        "accesses": curve.blocks_total,
        "points": len(curve.points),
        "seconds": round(times[0], 3),
        "seconds_loaded": round(min(times[1:]), 3),
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
    ap.add_argument(
        "--repeat", type=int, default=1, help="rounds of every policy (medians reported)"
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
        for _ in range(args.repeat):  # rounds: every policy once a round, so drift hits all
            for policy in args.policies:
                child = subprocess.run(
                    [sys.executable, __file__, "--measure", str(out.path), policy,
                     "--max-blocks", str(args.max_blocks)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    lru = [r for r in rows if r["policy"] == "lru"]
    for i, r in enumerate(rows):
        base = lru[i // len(args.policies)] if lru else None  # the LRU sweep of its round
        r.update(corpus_traces=args.traces, profile=args.profile, size=args.size)
        r.update(max_blocks=args.max_blocks, unix=int(time.time()))
        r["vs_lru"] = round(r["seconds"] / base["seconds"], 2) if base else None
        r["vs_lru_loaded"] = (
            round(r["seconds_loaded"] / base["seconds_loaded"], 2) if base else None
        )
    for policy in args.policies:
        mine = [r for r in rows if r["policy"] == policy]
        r = mine[0]

        def median(key: str, mine=mine):
            return statistics.median(x[key] for x in mine) if lru else None

        print(
            f"{policy:>5}: {r['traces']} traces, {r['accesses']:,} accesses, {r['points']} "
            f"points, median of {len(mine)}: first report {median('seconds'):5.2f} s "
            f"({median('vs_lru')} x the LRU sweep), code loaded {median('seconds_loaded'):5.2f} s "
            f"({median('vs_lru_loaded')} x); ratios "
            f"{', '.join(str(x['vs_lru']) for x in mine)} / "
            f"{', '.join(str(x['vs_lru_loaded']) for x in mine)}; peak RSS "
            f"{max(x['peak_rss_mb'] for x in mine)} MB",
            flush=True,
        )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
