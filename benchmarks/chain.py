"""The whole chain on a realistic corpus, stage by stage: wall, CPU, peak RSS, throughput.

Builds the corpus with `weka-assets synth --profile semianalysis --traces N --size full` (and
SCALE times as many traces for the scaling check), then runs each stage as its own command
line, as a user would, and measures the whole process tree (the command and its worker
processes): wall seconds, CPU seconds (each process's own user + system time, last sampled
value), peak RSS (the sum over the tree, sampled every 10 ms; pages the processes share, such
as a memory-mapped dataset, count once per process) and peak PSS (shared pages split between
the processes that map them: the memory actually used),
and throughput in calls, hash ids and prompt tokens per second. Then the same corpus through
a Dagster materialization (in process, a fresh instance): every asset's step time from the
event log, the whole process from its start to the end of its two runs (loading included), and
the re-materialization of the unchanged `decoded_dataset` partition; the same work through the
core in one process, as the assets do it, without Dagster; and the two runs as `execute_job` runs
them with the code location's own executor, as a run launched from the UI does
(`WEKA_ASSETS_EXECUTOR`: `in_process` by default; `multiprocess` for a process per step).

Results are printed and appended, one JSON object per run, to benchmarks/results/chain.jsonl.

    .venv/bin/python benchmarks/chain.py                # 391 traces, then 4 x 391
    .venv/bin/python benchmarks/chain.py --scales 1     # 1x only
    .venv/bin/python benchmarks/chain.py --scales 1 --pairs 5   # and 5 (chain, Dagster) pairs
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "weka-assets"


def measure(cmd: list[str], env: dict | None = None, pss: bool = True) -> dict:
    """Run `cmd`; wall and CPU seconds and peak RSS (and PSS) of its whole process tree.

    RSS is read every 10 ms from /proc/PID/statm (cheap); PSS every 100 ms from smaps_rollup,
    for which the kernel walks every page of every process of the tree: read every 10 ms, it
    made the measured command itself 10-25 % slower here (the CLI chain 6.0-7.1 s against
    5.2-5.9 s unsampled). `pss=False` (the timed pairs) never reads it.

    A child of the measured process with its very command line is one between fork and exec
    (Dagster starts its log tailers so at each run): for a few milliseconds it maps the
    parent's pages, and counting them again gave three peaks of 655-658 MB in 23 pairs (the
    one whose processes were recorded: two 294 MB copies of the run's process). The measured
    process never forks a child that stays without exec (its workers are the fork server's),
    so such a child is skipped."""
    start, start_mono = time.perf_counter(), time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True
    )
    root = psutil.Process(proc.pid)
    root_command = None
    cpu: dict[int, float] = {}
    peak = peak_pss = 0
    peak_tree: list = []  # the processes at the RSS peak: (RSS MB, the end of its command line)
    tick = 0
    while proc.poll() is None:
        rss = pss_now = 0
        tree_now = []
        with_pss = pss and tick % 10 == 0
        tick += 1
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                if p.pid == root.pid and root_command is None:
                    root_command = p.cmdline()
                elif p.ppid() == root.pid and p.cmdline() == root_command:
                    continue  # forked, not yet exec'd: the parent's pages (see the docstring)
                with p.oneshot():
                    if with_pss:
                        mem = p.memory_full_info()
                        pss_now += getattr(mem, "pss", mem.rss)
                    else:
                        mem = p.memory_info()
                    rss += mem.rss
                    tree_now.append((mem.rss, p))
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system  # every process is sampled itself
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if rss > peak:  # who holds it (command lines read only at a new peak)
            peak, peak_tree = rss, [(round(m / 2**20), _command(p)) for m, p in tree_now]
        peak_pss = max(peak_pss, pss_now)
        time.sleep(0.01)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {
        "wall_s": wall,
        "cpu_s": sum(cpu.values()),
        "peak_rss_mb": peak / 2**20,
        "peak_pss_mb": peak_pss / 2**20 if pss else None,
        "peak_tree": peak_tree,
        "stdout": out,
        "start_monotonic": start_mono,  # CLOCK_MONOTONIC: one clock for every process here
    }


def _command(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[-60:]
    except psutil.Error:
        return "(gone)"


def machine() -> dict:
    info = {
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        pass
    return info


def corpus(workdir: Path, traces: int) -> Path:
    path = workdir / f"semianalysis-full-{traces}.jsonl"
    if not path.exists():
        print(f"building {path.name} (weka-assets synth, not timed) ...", flush=True)
        subprocess.run(
            [str(BIN), "synth", "--profile", "semianalysis", "--traces", str(traces)]
            + ["--size", "full", "--out", str(path)],
            check=True,
            capture_output=True,
        )
    return path


def cli_stages(path: Path, work: Path) -> tuple[dict, dict]:
    """Each stage alone, then the chain end to end; returns (stages, dataset manifest)."""
    stages = {}
    root = work / "datasets"
    stages["read+validate"] = measure([str(BIN), "validate", str(path)])
    stages["scope report"] = measure(
        [str(BIN), "scope-report", str(path), "--json", str(work / "scope.json")]
    )
    shutil.rmtree(root, ignore_errors=True)
    dec = measure([str(BIN), "decode", str(path), "--out", str(root)])
    stages["decode (with its scope gate)"] = dec
    dataset = Path(dec["stdout"].strip().splitlines()[-1])
    stages["replay (theoretical + token, fidelity)"] = measure(
        [str(BIN), "replay", str(dataset), "--json", str(work / "replay.json")]
    )
    stages["expand every call (streamed)"] = measure([str(BIN), "expand", str(dataset)])
    manifest = json.loads((dataset / "manifest.json").read_text())
    shutil.rmtree(root, ignore_errors=True)
    stages[FULL_CHAIN] = measure(["bash", "-c", chain_command(path, work)])
    # what the Dagster graph computes, as CLI commands: both decodes, both replays, the capacity
    # sweep with the asset's default budget
    shutil.rmtree(root, ignore_errors=True)
    same = (
        f"{BIN} decode {path} --out {root} > {work / 'p1.txt'} && "
        f"{BIN} decode {path} --out {root} --scope-policy session > {work / 'p2.txt'} && "
        f"{BIN} replay $(tail -1 {work / 'p1.txt'}) --json {work / 'r1.json'} --capacity auto "
        f"--capacity-max-blocks 8000000 --kv-model llama-3.1-8b && "
        f"{BIN} replay $(tail -1 {work / 'p2.txt'}) --json {work / 'r2.json'}"
    )
    stages[SAME_WORK] = measure(["bash", "-c", same])
    return stages, manifest


SAME_WORK = "CLI, the graph's work: both decodes, replays, sweep"
FULL_CHAIN = "FULL CHAIN: validate, scope, decode, replay"


def chain_command(path: Path, work: Path) -> str:
    """The plain CLI chain: decode (validation and the scope gate included), then replay."""
    root = work / "datasets"
    return (
        f"{BIN} decode {path} --out {root} > {work / 'path.txt'} && "
        f"{BIN} replay $(cat {work / 'path.txt'}) --json {work / 'replay.json'}"
    )


def paired_ratios(path: Path, work: Path, pairs: int) -> list[dict]:
    """The plain CLI chain and right after it the Dagster materialization of the whole graph
    (each from scratch: a fresh dataset root, instance and store), `pairs` times: this VM's
    speed drifts by up to 20 % within minutes, so a ratio is taken between neighbours."""
    out = []
    for i in range(pairs):
        pair = work / f"pair-{i}"
        pair.mkdir()
        chain = measure(["bash", "-c", chain_command(path, pair)], pss=False)
        dag = dagster_stages(path, pair, pss=False)
        runs_s = sum(v for k, v in dag["steps_s"].items() if k.startswith("run "))
        rss = dag["whole process"]["peak_rss_mb"]
        whole_s = dag["whole process"]["to_end_of_runs_s"]
        out.append(
            {
                "chain_s": chain["wall_s"],
                "dagster_runs_s": runs_s,
                "ratio": runs_s / chain["wall_s"],
                "dagster_whole_s": whole_s,
                "whole_ratio": whole_s / chain["wall_s"],
                "chain_peak_rss_mb": chain["peak_rss_mb"],
                "dagster_peak_rss_mb": rss,
                "dagster_peak_tree": dag["whole process"]["peak_tree"],
                "dagster_steps_s": dag["steps_s"],
            }
        )
        print(
            f"  pair {i + 1}: CLI chain {chain['wall_s']:.2f} s ({chain['peak_rss_mb']:.0f} MB), "
            f"Dagster runs {runs_s:.2f} s, {runs_s / chain['wall_s']:.2f} x; whole process "
            f"{whole_s:.2f} s, {whole_s / chain['wall_s']:.2f} x ({rss:.0f} MB)"
        )
        if rss > 600:  # over the target: who held it
            for mb, command in dag["whole process"]["peak_tree"]:
                print(f"    {mb:5d} MB  {command}")
        shutil.rmtree(pair, ignore_errors=True)
    return out


# The children import weka_assets and dagster under their main guard: a forkserver worker
# imports the parent's main script (as `__mp_main__`), so top-level imports there ran again in
# both workers of every step (dagster: about 1 s of CPU each; the whole graph measured 20.6 s
# instead of 14.0 s). A real run, `python -m dagster api execute_run`, names its main as a
# module, which workers never import: the guard measures what a user's run costs.
DAGSTER_CHILD = """
import sys, time, json

def steps(instance, run_id):
    out = {}
    for rec in instance.all_logs(run_id):
        ev = rec.dagster_event
        if ev is not None and ev.event_type_value == "STEP_SUCCESS":
            out[ev.step_key] = ev.event_specific_data.duration_ms / 1000
    return out

if __name__ == "__main__":
    import dagster as dg
    from weka_assets.definitions import build_defs, resources
    from weka_assets.instance.materialize import CORPUS_ASSETS, decode_assets, run_selection
    from weka_assets.defs.partitions import multi_key
    from weka_assets.defs.resources import CorpusCatalog

    corpus, store = sys.argv[1], sys.argv[2]
    res = dict(resources(store), catalog=CorpusCatalog(corpora={"bench": corpus}))
    defs = build_defs(resource_defs=res)
    times = {}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("corpus", ["bench"])
        key = multi_key("bench", "deepseek")
        for sel, part in ((CORPUS_ASSETS, "bench"), (decode_assets(defs), key)):
            t = time.perf_counter()
            r = run_selection(defs, instance, sel, part, "WARNING")
            assert r.success, r.failures
            times["run " + "+".join(sel)] = time.perf_counter() - t
            times.update(steps(instance, r.run_id))
        times["runs_end_monotonic"] = time.monotonic()  # what a user waits for ends here
        t = time.perf_counter()
        r = run_selection(defs, instance, ["decoded_dataset"], key, "WARNING")
        assert r.success and r.outputs["decoded_dataset"].reused, r.failures
        times["re-materialize decoded_dataset (run)"] = time.perf_counter() - t
        times["re-materialize decoded_dataset (step)"] = steps(instance, r.run_id)["decoded_datasets"]
    print(json.dumps(times))
"""


# The chain as a run launched from the UI executes it: `execute_job` of the two jobs with the
# code location's own executor (WEKA_ASSETS_EXECUTOR; with `multiprocess`, step processes
# rebuild the jobs: module-level functions, reconstructable). The corpus and store come from
# the environment.
UI_CHILD = """
import json, os, sys, time


def _job(name):
    from weka_assets.definitions import build_defs, resources
    from weka_assets.defs.resources import CorpusCatalog

    catalog = CorpusCatalog(corpora={"bench": os.environ["BENCH_CORPUS"]})
    res = dict(resources(os.environ["BENCH_STORE"]), catalog=catalog)
    return build_defs(resource_defs=res).resolve_job_def(name)


def scope_job():
    return _job("scope_job")


def decode_job():
    return _job("decode_job")


if __name__ == "__main__":
    import dagster as dg

    times = {}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("corpus", ["bench"])
        multi = {"dagster/partition": "bench|deepseek", "dagster/partition/corpus": "bench",
                 "dagster/partition/tokenizer": "deepseek"}
        for fn, tags in ((scope_job, {"dagster/partition": "bench"}), (decode_job, multi)):
            t = time.perf_counter()
            r = dg.execute_job(dg.reconstructable(fn), instance=instance, tags=tags)
            assert r.success, fn.__name__
            times["run " + fn.__name__] = time.perf_counter() - t
            for rec in instance.all_logs(r.run_id):
                ev = rec.dagster_event
                if ev is not None and ev.event_type_value == "STEP_SUCCESS":
                    times[ev.step_key] = ev.event_specific_data.duration_ms / 1000
    print(json.dumps(times))
"""


CORE_CHILD = """
import json, shutil, sys, time
from pathlib import Path

if __name__ == "__main__":
    from weka_assets.decoding.dataset import open_dataset
    from weka_assets.decoding.settings import DecodeSettings
    from weka_assets.pipeline import Variant, decode_variants, replay, scope_report
    from weka_assets.replay.blast_radius import blast_radius, blast_radius_png
    from weka_assets.replay.block_pool import ServiceModel
    from weka_assets.replay.capacity import plot_png
    from weka_assets.replay.sizing import SizingOptions, plot_png as sizing_png, sized_report
    from weka_assets.replay.sizing import sized_report_at
    from weka_assets.parallel import in_worker
    from weka_assets.traces.parsed import keep_parse
    from weka_assets.traces.reader import CorpusFormat, corpus_digest, detect_format, file_digests

    corpus, work = Path(sys.argv[1]), Path(sys.argv[2])
    times, t = {}, time.perf_counter()
    def step(name):
        global t
        now = time.perf_counter()
        times[name] = now - t
        t = now
    snap = work / "raw" / corpus.name
    snap.parent.mkdir(parents=True)
    shutil.copyfile(corpus, snap)
    digest = corpus_digest(file_digests(snap))
    step("raw_traces")
    fmt = detect_format(snap, CorpusFormat(None, 64))  # as the registry's entry reads it
    with keep_parse(work / "kept.parsed", digest, fmt) as kept:
        report = scope_report(snap, fmt=fmt, keep=kept)
    step("trace_scope")
    out, legacy = decode_variants(
        snap, work / "datasets",
        [Variant(DecodeSettings()), Variant(DecodeSettings(scope_policy="session"), False)],
        report, digest=digest, fmt=CorpusFormat("weka", None), parsed=work / "kept.parsed",
    )
    assert out.from_parse
    step("decoded_datasets")
    ds = open_dataset(out.path, verify=True)
    kw = dict(arrival_mode="", time_scale=1.0, kv_model="llama-3.1-8b", kv_model_revision=None,
              points=12)
    policies = SizingOptions(policies=["lru", "opt", "vllm"], service=ServiceModel())
    sized, _ = in_worker(sized_report_at, str(ds.path), dict(kw, max_blocks=500_000, options=policies))
    lru, _ = sized_report(ds, max_blocks=8_000_000, **kw)
    plot_png(lru.curve("lru"))
    sizing_png(sized)
    step("capacity_curve")
    replay(open_dataset(legacy.path, verify=True))
    step("legacy_scope_replay")
    replayed = replay(ds)  # (result, per-call figures)
    step("replay_benchmark")
    br, _ = blast_radius(ds, None, current_replay=replayed)
    blast_radius_png(br)
    step("manifest_blast_radius")
    print(json.dumps(times))
"""


def core_stages(path: Path, work: Path) -> dict:
    """The graph's work through the core in one process (no Dagster), as the assets do it (the
    scope pass keeps its parse and the decodes read it; the policy sweep in a worker; the
    plots): what each asset costs without the orchestration around it."""
    script = work / "core_child.py"
    script.write_text(CORE_CHILD)
    (work / "core").mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    whole = measure([sys.executable, str(script), str(path), str(work / "core")], env)
    steps = json.loads(whole.pop("stdout").strip().splitlines()[-1])
    return {"whole process": whole, "steps_s": steps}


def dagster_stages(path: Path, work: Path, pss: bool = True) -> dict:
    script = work / "dagster_child.py"
    script.write_text(DAGSTER_CHILD)
    env = dict(os.environ, DAGSTER_HOME=str(work / "dagster-home"), PYTHONPATH=str(ROOT))
    (work / "dagster-home").mkdir(exist_ok=True)
    whole = measure([sys.executable, str(script), str(path), str(work / "store")], env, pss)
    steps = json.loads(whole.pop("stdout").strip().splitlines()[-1])
    # the process from its start to the end of its two runs: the interpreter, `import dagster`,
    # loading the code location, the instance and both runs (not the re-materialization check)
    whole["to_end_of_runs_s"] = steps.pop("runs_end_monotonic") - whole["start_monotonic"]
    return {"whole process": whole, "steps_s": steps}


def ui_stages(path: Path, work: Path) -> dict:
    """The two runs as the UI launches them (the code location's executor)."""
    script = work / "ui_child.py"
    script.write_text(UI_CHILD)
    home = work / "dagster-home-ui"
    home.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        PYTHONPATH=str(ROOT),
        BENCH_CORPUS=str(path),
        BENCH_STORE=str(work / "store-ui"),
    )
    whole = measure([sys.executable, str(script)], env)
    steps = json.loads(whole.pop("stdout").strip().splitlines()[-1])
    return {"whole process": whole, "steps_s": steps}


def rates(stage: dict, manifest: dict) -> dict:
    w = stage["wall_s"]
    return {
        "calls_per_s": manifest["calls"] / w,
        "ids_per_s": manifest["ids"] / w,
        "tokens_per_s": manifest["prompt_tokens"] / w,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=391)
    ap.add_argument("--scales", default="1,4", help="corpus sizes, in multiples of --traces")
    ap.add_argument("--no-dagster", action="store_true", help="skip the Dagster materialization")
    ap.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="then this many (CLI chain, Dagster) pairs, each ratio between neighbours",
    )
    ap.add_argument(
        "--corpus-dir",
        type=Path,
        default=Path.home() / ".cache" / "weka-assets" / "bench",
        help="where the synthetic corpora are kept between runs",
    )
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "chain.jsonl")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.corpus_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {info}")
    runs = []
    for scale in (int(x) for x in args.scales.split(",")):
        n = args.traces * scale
        path = corpus(args.corpus_dir, n)
        with tempfile.TemporaryDirectory(prefix="weka-bench-") as tmp:
            work = Path(tmp)
            stages, manifest = cli_stages(path, work)
            dag = None if args.no_dagster else dagster_stages(path, work)
            core = None if args.no_dagster else core_stages(path, work)
            ui = None if args.no_dagster else ui_stages(path, work)
            if args.pairs and not args.no_dagster:
                print(f"\n{args.pairs} pairs: the CLI chain, then Dagster, {n} traces")
                pairs = paired_ratios(path, work, args.pairs)
                peak = max(p["dagster_peak_rss_mb"] for p in pairs)
                for what, key in (("the runs", "ratio"), ("the whole process", "whole_ratio")):
                    ratios = sorted(p[key] for p in pairs)
                    print(
                        f"  Dagster ({what}) against the CLI chain, pair by pair: median "
                        f"{ratios[len(ratios) // 2]:.2f} x, best {ratios[0]:.2f} x, worst "
                        f"{ratios[-1]:.2f} x"
                    )
                print(f"  Dagster's peak RSS at most {peak:.0f} MB")
            else:
                pairs = []
        size = {k: manifest[k] for k in ("traces", "calls", "ids", "prompt_tokens")}
        size["corpus_mb"] = round(path.stat().st_size / 2**20, 1)
        print(f"\n== {n} traces: {size}")
        print(
            f"{'stage':<46} {'wall s':>7} {'cpu s':>7} {'RSS MB':>7} {'PSS MB':>7} "
            f"{'calls/s':>9} {'Mids/s':>8} {'Mtok/s':>9}"
        )
        for name, st in stages.items():
            st.pop("stdout", None)
            st.update(rates(st, manifest))
            print(
                f"{name:<46} {st['wall_s']:7.2f} {st['cpu_s']:7.2f} {st['peak_rss_mb']:7.0f} "
                f"{st['peak_pss_mb']:7.0f} "
                f"{st['calls_per_s']:9.0f} {st['ids_per_s'] / 1e6:8.2f} {st['tokens_per_s'] / 1e6:9.0f}"
            )
        if dag is not None:
            w, c = dag["whole process"], core["whole process"]
            print(
                f"Dagster materialization (in process): {w['wall_s']:.2f} s wall, {w['cpu_s']:.2f} s CPU, "
                f"peak RSS {w['peak_rss_mb']:.0f} MB, PSS {w['peak_pss_mb']:.0f} MB; from its start "
                f"to the end of the two runs {w['to_end_of_runs_s']:.2f} s = "
                f"{w['to_end_of_runs_s'] / stages[FULL_CHAIN]['wall_s']:.2f} x the CLI chain"
            )
            print(
                f"The same work through the core (one process, no Dagster): {c['wall_s']:.2f} s wall, "
                f"peak RSS {c['peak_rss_mb']:.0f} MB, PSS {c['peak_pss_mb']:.0f} MB"
            )
            print(f"  {'step':<26} {'Dagster s':>10} {'core s':>8} {'ratio':>6}")
            total_d = total_c = 0.0
            for step, secs in core["steps_s"].items():
                d = dag["steps_s"].get(step, float("nan"))
                total_d, total_c = total_d + d, total_c + secs
                print(f"  {step:<26} {d:10.2f} {secs:8.2f} {d / secs:6.2f}")
            runs_s = sum(v for k, v in dag["steps_s"].items() if k.startswith("run "))
            cli = stages[FULL_CHAIN]["wall_s"]
            same = stages[SAME_WORK]["wall_s"]
            print(f"  {'all steps':<26} {total_d:10.2f} {total_c:8.2f} {total_d / total_c:6.2f}")
            print(
                f"  the two runs (what a user waits for): {runs_s:.2f} s = {runs_s / same:.2f} x the "
                f"CLI doing the graph's work ({same:.2f} s), {runs_s / total_c:.2f} x the core in "
                f"one process, {runs_s / cli:.2f} x the CLI chain (which does less: no legacy "
                "decode and replay, no capacity sweep)"
            )
            for step, secs in dag["steps_s"].items():
                if step.startswith(("run ", "re-materialize")):
                    print(f"  {step:<58} {secs:7.2f} s")
            u = ui["whole process"]
            ui_runs = sum(v for k, v in ui["steps_s"].items() if k.startswith("run "))
            print(
                f"As a UI run ({os.environ.get('WEKA_ASSETS_EXECUTOR', 'in_process')} executor): the two runs "
                f"{ui_runs:.2f} s = {ui_runs / cli:.2f} x the CLI chain; whole process "
                f"{u['wall_s']:.2f} s, peak RSS {u['peak_rss_mb']:.0f} MB, PSS {u['peak_pss_mb']:.0f} MB"
            )
            for step, secs in ui["steps_s"].items():
                print(f"  {step:<26} {secs:7.2f} s")
        runs.append(
            {
                "traces": n,
                "size": size,
                "stages": stages,
                "dagster": dag,
                "core": core,
                "ui": ui,
                "pairs": pairs,
            }
        )
    if len(runs) >= 2:
        a, b = runs[0], runs[-1]
        key = FULL_CHAIN
        k = b["traces"] / a["traces"]
        ids = b["size"]["ids"] / a["size"]["ids"]
        t = b["stages"][key]["wall_s"] / a["stages"][key]["wall_s"]
        m = b["stages"][key]["peak_rss_mb"] / a["stages"][key]["peak_rss_mb"]
        mp = b["stages"][key]["peak_pss_mb"] / a["stages"][key]["peak_pss_mb"]
        print(
            f"\nscaling {k:.0f}x traces ({ids:.2f}x hash ids): full chain time x{t:.2f} "
            f"(x{t / ids:.2f} per hash id), peak RSS x{m:.2f}, peak PSS x{mp:.2f}"
        )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as fh:
        fh.write(json.dumps({"unix": int(time.time()), "machine": info, "runs": runs}) + "\n")
    print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
