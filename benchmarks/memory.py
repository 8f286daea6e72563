"""Peak memory on a multi-GB corpus: does reading and decoding stay bounded by the largest trace?

Builds one `.jsonl` of the requested size by repeating synthetic traces under new trace ids
(the same bytes otherwise, so building takes about as long as writing the file), optionally
with one enormous trace of long hash-id lists in the middle (`--big-trace-mb`). Then runs, as a
user would, `weka-assets validate` and `weka-assets decode` on it and measures each command's
whole process tree (the command and its worker processes), sampled every 20 ms: the peak of
the tree's summed RSS and the peak RSS of its largest single process; and, from the kernel,
the command's own ru_maxrss. Each is printed beside the corpus size and the largest trace's
size; the claim under test is that memory follows the largest trace (times the number of
workers in flight), not the corpus.

Results are printed and appended, one JSON object per run, to benchmarks/results/memory.jsonl.

    .venv/bin/python benchmarks/memory.py                       # 3 GB, decode included
    .venv/bin/python benchmarks/memory.py --gb 8 --big-trace-mb 200
    .venv/bin/python benchmarks/memory.py --gb 1 --skip-decode  # read only: minutes, not tens
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

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "weka-assets"
MB = 1 << 20

# ru_maxrss of exactly one command: RUSAGE_CHILDREN of a wrapper that runs only that command
WRAPPER = (
    "import json, resource, subprocess, sys;"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode;"
    "print(json.dumps({'rc': rc, 'maxrss': resource.getrusage(resource.RUSAGE_CHILDREN)"
    ".ru_maxrss * 1024}))"
)


def big_trace(target_bytes: int, trace_id: str) -> bytes:
    """One trace whose calls extend each other (ids 0..n-1), about `target_bytes` of JSON.
    One-token blocks: a call of n ids claims n prompt tokens, so calls of millions of ids stay
    within the default WEKA_ASSETS_MAX_PROMPT_TOKENS (4 Mi) and the trace passes the gate."""
    import numpy as np

    calls = 60
    step = max(1, int(target_bytes / 6.2 / (calls * (calls + 1) / 2)))
    ids = np.arange(step * calls).astype(str)
    joined = ",".join(ids.tolist()).encode()
    ends = np.cumsum(np.char.str_len(ids) + 1) - 1
    head = {"id": trace_id, "models": ["m"], "block_size": 1, "hash_id_scope": "local"}
    parts = [orjson.dumps(head)[:-1], b',"requests":[']
    for k in range(1, calls + 1):
        n = step * k
        call = {"t": 10.0 * k, "type": "n", "model": "m", "in": n, "out": 100}
        parts += [b"," if k > 1 else b"", orjson.dumps(call)[:-1], b',"hash_ids":[']
        parts += [joined[: ends[n - 1]], b"]}"]
    parts.append(b"]}\n")
    return b"".join(parts)


def build(path: Path, gb: float, base: int, size: str, big_mb: int) -> dict:
    """Write the corpus; returns its size, trace count and largest trace (bytes)."""
    from weka_assets.synthetic import iter_corpus

    lines = []
    for t in iter_corpus("semianalysis", base, 0, size):
        t["id"] = "{id}"  # a placeholder, filled per copy
        lines.append(orjson.dumps(t).split(b'"{id}"', 1))
    target = int(gb * 2**30)
    written = traces = largest = 0
    big_at = target // 2 if big_mb else -1
    with open(path, "wb") as fh:
        rep = 0
        while written < target:
            for i, line in enumerate(lines):
                if big_at >= 0 and written >= big_at:
                    big = big_trace(big_mb * MB, f"big-{rep}")
                    fh.write(big)
                    written, traces, largest = (
                        written + len(big),
                        traces + 1,
                        max(largest, len(big)),
                    )
                    big_at = -1
                data = b'"r%d-%d"' % (rep, i)
                data = line[0] + data + line[1] + b"\n"
                fh.write(data)
                written, traces, largest = written + len(data), traces + 1, max(largest, len(data))
                if written >= target:
                    break
            rep += 1
    return {"corpus_bytes": written, "traces": traces, "largest_trace_bytes": largest}


def measure(cmd: list[str]) -> dict:
    """Run `cmd`; wall seconds, peak RSS of its tree (summed) and of its largest process
    (sampled), and its own ru_maxrss (from the kernel)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, *cmd],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    wrapper = psutil.Process(proc.pid)
    tree_peak = single_peak = 0
    while proc.poll() is None:
        try:
            tree = wrapper.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        rss = []
        for p in tree:
            try:
                rss.append(p.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        tree_peak, single_peak = max(tree_peak, sum(rss)), max([single_peak, *rss])
        time.sleep(0.02)
    out, _ = proc.communicate()
    result = json.loads(out.decode().strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed with exit code {result['rc']}")
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "tree_peak_rss_mb": round(tree_peak / MB, 1),
        "largest_process_peak_rss_mb": round(single_peak / MB, 1),
        "command_maxrss_mb": round(result["maxrss"] / MB, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=3.0, help="corpus size in GiB (default 3)")
    ap.add_argument("--base-traces", type=int, default=64, help="distinct traces repeated")
    ap.add_argument("--size", choices=("small", "full"), default="full")
    ap.add_argument("--big-trace-mb", type=int, default=0, help="add one trace this large")
    ap.add_argument("--skip-decode", action="store_true", help="measure validate only")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the corpus and dataset")
    ap.add_argument(
        "--results", type=Path, default=Path(__file__).parent / "results" / "memory.jsonl"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="weka-memory-", dir=args.workdir))
    try:
        corpus = work / "corpus.jsonl"
        print(f"building {args.gb:g} GiB in {corpus} ...", flush=True)
        t0 = time.perf_counter()
        info = build(corpus, args.gb, args.base_traces, args.size, args.big_trace_mb)
        print(
            f"  {info['corpus_bytes'] / MB:,.0f} MiB, {info['traces']:,} traces, largest trace "
            f"{info['largest_trace_bytes'] / MB:.1f} MiB ({time.perf_counter() - t0:.0f} s)"
        )
        runs = {"validate": measure([str(BIN), "validate", str(corpus)])}
        if not args.skip_decode:
            runs["decode"] = measure([str(BIN), "decode", str(corpus), "--out", str(work / "ds")])
        largest = info["largest_trace_bytes"] / MB
        print(
            f"{'command':<10} {'wall s':>8} {'tree MB':>9} {'largest process MB':>19} "
            f"{'maxrss MB':>10} {'/ largest trace':>16}"
        )
        for name, m in runs.items():
            print(
                f"{name:<10} {m['wall_s']:>8.1f} {m['tree_peak_rss_mb']:>9.0f} "
                f"{m['largest_process_peak_rss_mb']:>19.0f} {m['command_maxrss_mb']:>10.0f} "
                f"{m['largest_process_peak_rss_mb'] / largest:>15.1f}x"
            )
        row = {
            "benchmark": "memory",
            **info,
            "size": args.size,
            "big_trace_mb": args.big_trace_mb,
            "workers": os.environ.get("WEKA_ASSETS_WORKERS") or len(os.sched_getaffinity(0)),
            **{f"{name}_{k}": v for name, m in runs.items() for k, v in m.items()},
            "unix": int(time.time()),
        }
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
