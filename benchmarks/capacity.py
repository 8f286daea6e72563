"""How fast is the bounded-capacity KV-cache curve, and how does it scale with corpus size?

Builds synthetic corpora (`semianalysis`, full size) of 24, 48 and 96 traces, decodes each into
a temporary folder, then, in a fresh child process per size (so the peak RSS is the
simulator's, not the decoder's), times `capacity_curve` with a 12-point sweep: the whole call,
and inside it the depth (reuse-distance) pass alone. Prints blocks per second of that pass,
seconds, peak RSS and the scaling between consecutive sizes; appends one JSON line per size to
benchmarks/results/capacity.jsonl.
Run: .venv/bin/python benchmarks/capacity.py [--traces 24 48 96 --repeat 3]
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


def measure(dataset: str, repeat: int) -> dict:
    """In this process: time the pass and the curve on one decoded dataset."""
    from weka_assets.decoding.dataset import open_dataset
    from weka_assets.replay.capacity import (
        call_block_keys,
        capacity_curve,
        reorder_segments,
        start_depths,
    )
    from weka_assets.replay.schedule import global_order

    ds = open_dataset(dataset)
    curve_s, depth_s = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        curve = capacity_curve(ds)  # default 12-point sweep + the unbounded point
        curve_s.append(time.perf_counter() - start)
    keys, lengths = call_block_keys(ds)
    order = global_order(ds)
    flat, lens = reorder_segments(keys, lengths, order), lengths[order]
    for _ in range(repeat):
        start = time.perf_counter()
        start_depths(flat, lens)
        depth_s.append(time.perf_counter() - start)
    return {
        "calls": ds.n_calls,
        "blocks": curve.blocks_total,
        "distinct_blocks": curve.distinct_blocks,
        "points": len(curve.points),
        "hit_rate_unbounded": curve.points[-1].hit_rate,
        "hit_rate_mid": curve.points[len(curve.points) // 2].hit_rate,
        "depth_pass_s": min(depth_s),
        "curve_s": min(curve_s),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, nargs="+", default=[24, 48, 96])
    ap.add_argument("--profile", default="semianalysis")
    ap.add_argument("--size", choices=("small", "full"), default="full")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--results", type=Path, default=Path(__file__).parent / "results" / "capacity.jsonl"
    )
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # child mode: a decoded dataset path
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.repeat)))
        return 0

    from weka_assets.pipeline import decode_corpus
    from weka_assets.synthetic import iter_corpus, write_corpus

    rows = []
    with tempfile.TemporaryDirectory(prefix="weka-bench-capacity-") as tmp:
        for n in args.traces:
            corpus = write_corpus(
                iter_corpus(args.profile, n, 0, args.size), Path(tmp) / f"corpus-{n}.jsonl"
            )
            out = decode_corpus(corpus, Path(tmp) / "store", measure_drift=False)
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--measure",
                    str(out.path),
                    "--repeat",
                    str(args.repeat),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            m = json.loads(child.stdout.strip().splitlines()[-1])
            row = {
                "benchmark": "capacity",
                "profile": args.profile,
                "size": args.size,
                "traces": n,
                **m,
                "depth_blocks_per_s": round(m["blocks"] / m["depth_pass_s"]),
                "curve_blocks_per_s": round(m["blocks"] / m["curve_s"]),
                "unix": int(time.time()),
            }
            for k in ("depth_pass_s", "curve_s", "peak_rss_mb"):
                row[k] = round(row[k], 3)
            rows.append(row)
            print(
                f"{n:4d} traces  {m['calls']:6d} calls  {m['blocks']:10,d} blocks  "
                f"depth pass {m['depth_pass_s']:6.2f} s ({row['depth_blocks_per_s'] / 1e6:5.2f} M "
                f"blocks/s)  curve {m['curve_s']:6.2f} s ({row['curve_blocks_per_s'] / 1e6:5.2f} M "
                f"blocks/s)  peak RSS {m['peak_rss_mb']:7.0f} MB",
                flush=True,
            )
    for a, b in zip(rows, rows[1:], strict=False):
        blocks = b["blocks"] / a["blocks"]
        depth = b["depth_pass_s"] / a["depth_pass_s"]
        curve = b["curve_s"] / a["curve_s"]
        b["scaling_vs_previous"] = {
            "traces": a["traces"],
            "blocks_ratio": round(blocks, 3),
            "depth_time_ratio": round(depth, 3),
            "curve_time_ratio": round(curve, 3),
        }
        print(
            f"{a['traces']} -> {b['traces']} traces: blocks x{blocks:.2f}, depth pass time "
            f"x{depth:.2f}, curve time x{curve:.2f} (per block x{depth / blocks:.2f} / "
            f"x{curve / blocks:.2f})"
        )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
