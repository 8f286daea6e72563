"""Re-materializing an unchanged partition reuses its stored dataset: how much faster is it?

Builds a synthetic corpus and, in a fresh Dagster instance (in process, as `weka-assets
materialize` does), materializes raw_traces + trace_scope, then the `decoded_dataset` partition
twice: the first run decodes, the second finds the same decode key and reuses the dataset.
Prints both wall times, their ratio, the whole chain's time, and the peak RSS.
Run: .venv/bin/python benchmarks/reuse.py [--traces 64 --size full]
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dagster as dg  # noqa: E402

from weka_assets.definitions import build_defs, resources  # noqa: E402
from weka_assets.defs.partitions import multi_key  # noqa: E402
from weka_assets.defs.resources import CorpusCatalog  # noqa: E402
from weka_assets.instance.materialize import materialize_corpus, run_selection  # noqa: E402
from weka_assets.synthetic import iter_corpus, write_corpus  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=64)
    ap.add_argument("--size", choices=("small", "full"), default="full")
    ap.add_argument("--profile", default="semianalysis")
    ap.add_argument(
        "--results", type=Path, default=Path(__file__).parent / "results" / "reuse.jsonl"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="weka-bench-") as tmp:
        corpus = write_corpus(
            iter_corpus(args.profile, args.traces, 0, args.size), Path(tmp) / "corpus.jsonl"
        )
        res = dict(
            resources(str(Path(tmp) / "store")),
            catalog=CorpusCatalog(corpora={"bench": str(corpus)}),
        )
        defs = build_defs(resource_defs=res)
        times = []
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("corpus", ["bench"])
            assert run_selection(
                defs, instance, ["raw_traces", "trace_scope"], "bench", "WARNING"
            ).success
            for _ in range(2):
                start = time.perf_counter()
                step = run_selection(
                    defs, instance, ["decoded_dataset"], multi_key("bench", "deepseek"), "WARNING"
                )
                times.append(time.perf_counter() - start)
                assert step.success, step.failures
            assert step.outputs["decoded_dataset"].reused
            start = time.perf_counter()
            assert all(
                s.success for s in materialize_corpus("bench", instance, defs, log_level="WARNING")
            )
            chain = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {
        "benchmark": "reuse",
        "traces": args.traces,
        "size": args.size,
        "first_s": round(times[0], 3),
        "second_s": round(times[1], 3),
        "ratio": round(times[1] / times[0], 4),
        "whole_chain_again_s": round(chain, 3),
        "peak_rss_mb": round(rss_mb, 1),
        "unix": int(time.time()),
    }
    print(f"decoded_dataset, first (decodes)         {times[0]:8.2f} s")
    print(f"decoded_dataset, second (reuses the key) {times[1]:8.2f} s")
    print(f"ratio second/first                       {times[1] / times[0]:8.3f}")
    print(f"whole chain again (replays recomputed)   {chain:8.2f} s")
    print(f"peak RSS                                 {rss_mb:8.0f} MB")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
