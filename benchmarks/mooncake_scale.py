"""A production-size Mooncake (or Bailian) trace through the chain, at 1x, 8x and 80x, beside
aiperf.

The base trace is `weka_assets.synthetic.mooncake` (12,000 requests, the shape of Mooncake's
published conversation trace, about 2.7 MB); 8x and 80x are that many copies with disjoint ids
on the same clock (96,000 and 960,000 requests, 26 MB and 286 MB). For each scale, each stage
runs as its own command line, as a user would, measured on its whole process tree
(`chain.measure`: wall seconds, peak RSS):
- `scope-report`;
- `decode` (its scope gate included);
- `replay --capacity auto --capacity-max-blocks 8000000` (the capacity asset's budget);
- the chain a user runs, `decode` then that replay, in one shell (from an empty store);
- `aiperf analyze-trace FILE --block-size 512` (aiperf 0.13.0, the cached install the tests
  use), and whether its `cache_hit_rate` equals our `aiperf_analyze_trace_hit_rate`.
`--format bailian` writes the same conversations as Bailian lines instead
(`synthetic.mooncake.iter_bailian_lines`: sessions linked by `parent_chat_id`, 16-token
blocks), and aiperf reads them with `--block-size 16`.
`--weka CORPUS` also runs `scope-report` and `decode` on a Weka corpus (the 391-trace
benchmark corpus) for the per-byte comparison.

Results are printed and appended, one JSON object per run, to
benchmarks/results/mooncake_scale.jsonl.

    .venv/bin/python benchmarks/mooncake_scale.py                  # 1x, 8x, 80x
    .venv/bin/python benchmarks/mooncake_scale.py --scales 1,8 --no-aiperf
    .venv/bin/python benchmarks/mooncake_scale.py --format bailian
    .venv/bin/python benchmarks/mooncake_scale.py --weka ~/.cache/weka-assets/bench/semianalysis-full-391.jsonl
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain import BIN, ROOT, machine, measure  # noqa: E402

from weka_assets.synthetic.mooncake import write_bailian_trace, write_mooncake_trace  # noqa: E402

WRITERS = {"mooncake": (write_mooncake_trace, 512), "bailian": (write_bailian_trace, 16)}

AIPERF = Path.home() / ".cache" / "weka-assets" / "aiperf" / "venv" / "bin" / "aiperf"
BUDGET = 8_000_000  # capacity_curve's default capacity_max_blocks


def _mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / 2**20 / seconds


def one_scale(work: Path, copies: int, aiperf: bool, fmt: str = "mooncake") -> dict:
    write, block = WRITERS[fmt]
    trace = work / f"{fmt}-x{copies}.jsonl"
    if not trace.exists():
        write(trace, copies=copies)
    size = trace.stat().st_size
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    out: dict = {"format": fmt, "copies": copies, "bytes": size}
    stages = {}
    stages["scope-report"] = measure(
        [str(BIN), "scope-report", str(trace), "--json", str(work / "scope.json")], pss=False
    )
    dec = measure([str(BIN), "decode", str(trace), "--out", str(store)], pss=False)
    stages["decode"] = dec
    dataset = Path(dec["stdout"].strip().splitlines()[-1])
    replay = [str(BIN), "replay", str(dataset), "--json", str(work / "replay.json")]
    sweep = ["--capacity", "auto", "--capacity-max-blocks", str(BUDGET)]
    stages["replay + capacity sweep"] = measure(replay + sweep, pss=False)
    ours = json.loads((work / "replay.json").read_text())
    manifest = json.loads((dataset / "manifest.json").read_text())
    shutil.rmtree(store, ignore_errors=True)
    chain = (
        f"{BIN} decode {trace} --out {store} > {work / 'path.txt'} && "
        f"{BIN} replay $(cat {work / 'path.txt'}) --json {work / 'chain.json'} "
        f"--capacity auto --capacity-max-blocks {BUDGET}"
    )
    stages["CHAIN: decode (scope gate) + replay + sweep"] = measure(
        ["bash", "-c", chain], pss=False
    )
    if aiperf and AIPERF.exists():
        report = work / "aiperf.json"
        cmd = [str(AIPERF), "analyze-trace", str(trace), "--block-size", str(block)]
        stages["aiperf analyze-trace"] = measure(cmd + ["--output-file", str(report)], pss=False)
        theirs = json.loads(report.read_text())
        out["aiperf_cache_hit_rate"] = theirs.get("cache_hit_rate")
        out["aiperf_equal"] = theirs.get("cache_hit_rate") == ours["aiperf_analyze_trace_hit_rate"]
    for s in stages.values():
        s.pop("stdout", None)
        s.pop("peak_tree", None)
        s["mb_per_s"] = _mb_s(size, s["wall_s"])
    out["stages"] = stages
    out["requests"] = manifest["calls"]
    out["distinct_blocks_stored"] = manifest["blocks"]
    out["block_accesses"] = manifest["ids"]
    out["corpus_wide_theoretical_hit_rate"] = ours["corpus_wide_theoretical_hit_rate"]
    out["aiperf_analyze_trace_hit_rate"] = ours["aiperf_analyze_trace_hit_rate"]
    out["sweep_calls"] = ours["capacity_curve"]["calls"]
    out["per_trace_rows"] = len(ours["per_trace"])  # Bailian: a row per session
    out["dataset_bytes"] = sum(p.stat().st_size for p in dataset.parent.rglob("*") if p.is_file())
    return out


def weka(work: Path, corpus: Path) -> dict:
    size = corpus.stat().st_size
    store = work / "weka-store"
    shutil.rmtree(store, ignore_errors=True)
    stages = {
        "scope-report": measure(
            [str(BIN), "scope-report", str(corpus), "--json", str(work / "w.json")], pss=False
        ),
        "decode": measure([str(BIN), "decode", str(corpus), "--out", str(store)], pss=False),
    }
    shutil.rmtree(store, ignore_errors=True)
    for s in stages.values():
        s.pop("stdout", None)
        s.pop("peak_tree", None)
        s["mb_per_s"] = _mb_s(size, s["wall_s"])
    return {"corpus": corpus.name, "bytes": size, "stages": stages}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="1,8,80", help="copies of the base trace, e.g. 1,8,80")
    ap.add_argument("--no-aiperf", action="store_true", help="skip aiperf analyze-trace")
    ap.add_argument("--format", choices=sorted(WRITERS), default="mooncake")
    ap.add_argument("--weka", type=Path, help="a Weka corpus for the per-byte comparison")
    ap.add_argument("--work", type=Path, help="where the traces are kept (default: a temp dir)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="weka-mooncake-"))
    work.mkdir(parents=True, exist_ok=True)
    run = {"machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "scales": []}
    for copies in [int(x) for x in args.scales.split(",")]:
        r = one_scale(work, copies, not args.no_aiperf, args.format)
        run["scales"].append(r)
        print(f"\n{args.format} {copies}x: {r['requests']:,} requests, "
              f"{r['per_trace_rows']:,} per-trace rows, {r['bytes'] / 2**20:.1f} MiB, "
              f"{r['block_accesses']:,} block accesses, {r['distinct_blocks_stored']:,} "
              f"distinct blocks stored, sweep over {r['sweep_calls']:,} calls")  # fmt: skip
        for name, s in r["stages"].items():
            print(f"  {name:45s} {s['wall_s']:7.2f} s  {s['peak_rss_mb']:7.0f} MB peak RSS  "
                  f"{s['mb_per_s']:6.1f} MiB/s")  # fmt: skip
        if "aiperf_equal" in r:
            print(f"  aiperf cache_hit_rate {r['aiperf_cache_hit_rate']!r} equal to ours: "
                  f"{r['aiperf_equal']}")  # fmt: skip
    if args.weka:
        w = weka(work, args.weka.expanduser())
        run["weka"] = w
        print(f"\nWeka {w['corpus']}: {w['bytes'] / 2**20:.1f} MiB")
        for name, s in w["stages"].items():
            print(f"  {name:45s} {s['wall_s']:7.2f} s  {s['peak_rss_mb']:7.0f} MB peak RSS  "
                  f"{s['mb_per_s']:6.1f} MiB/s")  # fmt: skip
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "mooncake_scale.jsonl", "a") as fh:
        fh.write(json.dumps(run) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
