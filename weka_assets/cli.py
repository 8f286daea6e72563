"""The `weka-assets` command line: the chain's plain functions (weka_assets.pipeline), one
subcommand each.

Exit codes: 0 success; 1 a failed check or bad input (every `WekaError`, printed as one line,
no traceback); 2 a usage error (argparse's own, or a corpus/dataset PATH that does not exist).
Unexpected exceptions keep their traceback: they are bugs.

Adding a subcommand: write `_add_NAME(parser)` (its arguments) and `cmd_NAME(args) -> int`
(what it does; import heavy modules inside it), then add one `Subcommand` row to
`SUBCOMMANDS`. Nothing at module level imports numpy, pyarrow or Dagster, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROG = "weka-assets"
MAX_PROBLEM_LINES = 20
PATH_HELP = "corpus: a folder of *.json traces, a .json trace, a .jsonl[.gz] file, or builtin:NAME"


class UsageError(Exception):
    """A bad command-line value found after parsing (e.g. a PATH that does not exist): exit 2."""


def _write_json(obj, path: Path) -> Path:
    """`pipeline.write_json`, with an unwritable OUT as one error line (exit 1), not a traceback."""
    from weka_assets.errors import WekaError
    from weka_assets.pipeline import write_json

    try:
        return write_json(obj, path)
    except OSError as exc:
        raise WekaError(f"{path}: cannot write ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------- helpers


def _err(line: str = "") -> None:
    print(line, file=sys.stderr, flush=True)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def _seed(text: str) -> int:
    value = _non_negative_int(text)
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"must be < 2**64, got {value}")
    return value


def cache_dir() -> Path:
    """Where `builtin:NAME` corpora are generated: $WEKA_ASSETS_CACHE or ~/.cache/weka-assets."""
    from weka_assets import env

    return env.cache_dir()


REMOTE_SCHEMES = ("hf://", "s3://")


def corpus_path(uri: str) -> Path:
    """A corpus argument (path, builtin:NAME, hf://..., s3://...) -> a local corpus path.

    Remote sources are fetched (revision-pinned, verified) into the cache first. A local path
    that is missing is a usage error (exit 2); a remote failure is a WekaError (exit 1).
    """
    from weka_assets.errors import SourceError
    from weka_assets.sources import fetch, resolve_source
    from weka_assets.traces.reader import corpus_files

    if uri.startswith(REMOTE_SCHEMES):
        got = fetch(uri, cache_dir() / "fetched")
        _err(f"fetched {uri} at {got.revision} -> {got.path}")
        return got.path
    try:
        path = resolve_source(uri, cache_dir())
        corpus_files(path)  # the layout check: folder of *.json, .json, .jsonl[.gz]
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    return path


def _problem_lines(
    hard_errors: Sequence[dict], per_trace: Sequence[dict] = (), excluded: Sequence[str] = ()
) -> list[str]:
    """One line per hard error, then one per reset/ambiguous trace that is not excluded."""
    from weka_assets.errors import Location

    lines = []
    for e in hard_errors:
        loc = Location(
            e.get("file"), e.get("line"), e.get("trace"), e.get("request"), e.get("inner")
        )
        lines.append(f"{loc.describe()}: [{e.get('rule')}] {e.get('message')}")
    skip = set(excluded)
    for row in per_trace:
        if row["verdict"] == "shared" or row["trace"] in skip:
            continue
        if row["verdict"] == "reset":
            why = f"{row['reset_subagents']} subagent(s) number their blocks from the base on their own"
        else:
            why = (
                "no walk mints its ids in order "
                f"(fresh-below: document {row['fresh_below_document']}, parent_first {row['fresh_below_parent_first']})"
            )
        lines.append(f"{_printable(row['file'])}, trace {row['trace']!r}: [{row['verdict']}] {why}")
    return lines


def _printable(text: str) -> str:
    """`text` on one line: a name holding a newline or control character is escaped."""
    return text if text.isprintable() else repr(text)[1:-1]


def _print_capped(lines: list[str]) -> None:
    for line in lines[:MAX_PROBLEM_LINES]:
        _err(line)
    if len(lines) > MAX_PROBLEM_LINES:
        _err(f"... and {len(lines) - MAX_PROBLEM_LINES} more")


# --------------------------------------------------------------------------- synth


def _add_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        required=True,
        choices=("semianalysis", "kv-cache-tester"),
        help="which published convention the traces follow",
    )
    p.add_argument(
        "--traces", required=True, type=_positive_int, metavar="N", help="number of traces"
    )
    p.add_argument(
        "--seed", default=0, type=_non_negative_int, metavar="S", help="random seed (default: 0)"
    )
    p.add_argument(
        "--size",
        choices=("small", "full"),
        default="small",
        help="small (fast, for tests) or full (realistic context sizes); default: small",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="PATH",
        help="output: a .jsonl, a .jsonl.gz, or a folder (one <id>.json per trace)",
    )


def cmd_synth(args: argparse.Namespace) -> int:
    from weka_assets.synthetic import iter_corpus, write_corpus

    if str(args.out).startswith("s3:/"):
        return _synth_to_s3(args)
    name = args.out.name
    if not name.endswith((".jsonl", ".jsonl.gz")) and args.out.exists() and not args.out.is_dir():
        raise UsageError(
            f"{args.out}: exists and is not a folder (use .jsonl or .jsonl.gz for a file)"
        )
    out = write_corpus(iter_corpus(args.profile, args.traces, args.seed, args.size), args.out)
    _err(f"wrote {args.traces} {args.profile} trace(s) (size {args.size}, seed {args.seed})")
    print(out)
    return 0


def _synth_to_s3(args: argparse.Namespace) -> int:
    """Write the corpus locally, then upload it (one object, or one per trace for a prefix)."""
    import tempfile

    from weka_assets.store import Store
    from weka_assets.synthetic import iter_corpus, write_corpus

    uri = (
        str(args.out).replace("s3:/", "s3://", 1)
        if not str(args.out).startswith("s3://")
        else str(args.out)
    )
    bucket_and_key = uri.removeprefix("s3://")
    if "/" not in bucket_and_key:
        raise UsageError(f"{uri}: expected s3://BUCKET/KEY.jsonl[.gz] or s3://BUCKET/PREFIX/")
    base, name = uri.rstrip("/").rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="weka-synth-") as tmp:
        store = Store(base, cache_dir=tmp)
        written = write_corpus(
            iter_corpus(args.profile, args.traces, args.seed, args.size), store.local(name)
        )
        store.push(name)
    _err(f"wrote {args.traces} {args.profile} trace(s) to {uri} ({written.name})")
    print(uri)
    return 0


# --------------------------------------------------------------------------- fetch


def _add_fetch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "uri",
        metavar="SOURCE_URI",
        help="hf://datasets/ORG/NAME[@REV][/PATH], s3://BUCKET/KEY or PREFIX/, a path, or builtin:NAME",
    )
    p.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="snapshots go to DIR/<sha256>/"
    )


def cmd_fetch(args: argparse.Namespace) -> int:
    import json

    from weka_assets.sources import fetch

    got = fetch(args.uri, args.out)
    print(json.dumps(got.as_json(), sort_keys=True))
    return 0


# --------------------------------------------------------------------------- scope-report


def _add_format(p: argparse.ArgumentParser) -> None:
    """--format and --block-size: how a corpus is read (see traces.reader.CorpusFormat)."""
    from weka_assets.traces import formats

    p.add_argument(
        "--format",
        choices=formats.names(),
        default=None,
        help="corpus format (default: detected from the first record)",
    )
    p.add_argument(
        "--block-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="tokens per hash-id block of a corpus whose traces state none (default: the "
        "format's own: 512 for mooncake, 16 for bailian); Weka traces state theirs",
    )


def _corpus_format(args: argparse.Namespace):
    from weka_assets.traces.reader import CorpusFormat

    return CorpusFormat(args.format, args.block_size, " (--format)" if args.format else "")


def _add_scope_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help=PATH_HELP)
    _add_format(p)
    p.add_argument(
        "--policy",
        choices=("fail", "exclude"),
        default="fail",
        help="reset/ambiguous traces: fail the corpus (default) or exclude and list them",
    )
    p.add_argument(
        "--json", required=True, type=Path, metavar="OUT", help="write the full report here"
    )


def cmd_scope_report(args: argparse.Namespace) -> int:
    from weka_assets.pipeline import scope_report
    from weka_assets.progress import cli_progress

    path = corpus_path(args.path)
    with cli_progress() as progress:
        report = scope_report(path, args.policy, progress, _corpus_format(args))
    _write_json(report, args.json)
    print(report.summary(), flush=True)
    if report.excluded_traces:
        _err(
            f"excluded {len(report.excluded_traces)} trace(s) under policy 'exclude': "
            + ", ".join(map(_printable, report.excluded_traces[:MAX_PROBLEM_LINES]))
            + (" ..." if len(report.excluded_traces) > MAX_PROBLEM_LINES else "")
        )
    if report.passed:
        return 0
    _print_capped(_problem_lines(report.hard_errors, report.per_trace, report.excluded_traces))
    for reason in report.failure_reasons:
        _err(f"{PROG}: failed: {reason}")
    return 1


# --------------------------------------------------------------------------- decode


def _add_decode(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help=PATH_HELP)
    _add_format(p)
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="ROOT",
        help="datasets root; the dataset goes to ROOT/<decode key>/ (reused if complete)",
    )
    p.add_argument(
        "--tokenizer",
        metavar="NAME_OR_PATH",
        default=None,
        help="built-in name (default: deepseek), local folder, or Hugging Face id",
    )
    p.add_argument(
        "--scope-policy",
        choices=("trace", "session"),
        default="trace",
        help="hash-id scope: trace (correct, default) or session (the historic bug)",
    )
    p.add_argument("--seed", type=_seed, default=0, metavar="N", help="decode seed (default: 0)")
    p.add_argument(
        "--policy",
        choices=("fail", "exclude"),
        default="fail",
        help="reset/ambiguous traces: fail the corpus (default) or exclude them",
    )


def cmd_decode(args: argparse.Namespace) -> int:
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import nullcontext

    from weka_assets.decoding.settings import DecodeSettings
    from weka_assets.pipeline import HeldTable, decode_corpus, scope_report
    from weka_assets.progress import cli_progress
    from weka_assets.traces.parsed import keep_parse
    from weka_assets.traces.reader import corpus_digest, detect_format, file_digests

    path = corpus_path(args.path)
    fields = {"scope_policy": args.scope_policy, "seed": args.seed}
    if args.tokenizer is not None:
        fields["tokenizer"] = args.tokenizer
    settings = DecodeSettings(**fields)
    with (
        cli_progress() as progress,
        ThreadPoolExecutor(1) as hashing,
        tempfile.TemporaryDirectory(prefix="weka-assets-parse-") as tmp,
    ):
        # the report first, so the decode stage knows how many traces it will read; what it
        # parsed is what the decode reads: a one-file Mooncake or Bailian corpus's columns
        # held in memory, else the traces kept in a file (`keep_parse`, a few % of the JSON;
        # 0.5 s more for the scope pass, 1.3 s less for the decode on the benchmark corpus)
        fmt = detect_format(path, _corpus_format(args))
        digest = hashing.submit(lambda: corpus_digest(file_digests(path)))
        held, kept_path = HeldTable(), Path(tmp) / "corpus.parsed"
        holds = held.holds_for(path, fmt)
        keeping = nullcontext() if holds else keep_parse(kept_path, digest.result, fmt)
        with keeping as kept:
            report = scope_report(path, args.policy, progress, fmt, keep=kept, hold=held)
        progress.finish()
        progress.expect("decode", report.traces)
        outcome = decode_corpus(
            path,
            args.out,
            settings,
            report=report,
            policy=args.policy,
            progress=progress,
            fmt=fmt,
            digest=digest.result(),
            held=held,
            parsed=kept_path if kept is not None and kept.written else None,
        )
    m = outcome.manifest
    excluded = outcome.material.get("excluded_traces") or []
    if excluded:
        _err(
            f"excluded {len(excluded)} trace(s) under policy 'exclude': "
            + ", ".join(map(_printable, excluded))
        )
    if outcome.reused:
        _err(f"reused existing dataset {outcome.path}")
    else:
        _err(
            f"decoded {m.get('traces')} traces, {m.get('calls')} calls -> {outcome.path} "
            f"({outcome.seconds:.1f} s)"
        )
    print(outcome.path)
    return 0


# --------------------------------------------------------------------------- replay


# replay.schedule.ARRIVAL_MODES, spelled here so that --help imports no numpy (a test keeps
# the two equal)
ARRIVAL_MODES = ("together", "staggered", "poisson", "recorded")


def _add_timeline(p: argparse.ArgumentParser) -> None:
    """The options of the shared timeline, one definition for `replay` and `replay-live`."""
    p.add_argument(
        "--arrival",
        choices=ARRIVAL_MODES,
        default=None,
        help="how sessions (traces; a Mooncake file's requests) start on the shared timeline "
        "(default: recorded for a Mooncake or Bailian dataset, every request at its timestamp; "
        "together otherwise)",
    )
    p.add_argument(
        "--time-scale",
        type=_positive_float,
        default=1.0,
        metavar="X",
        help="multiply recorded times by X (0.5: twice as fast); default 1",
    )


def _add_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset", metavar="DATASET", help="a decoded dataset folder (printed by decode)"
    )
    p.add_argument(
        "--json", required=True, type=Path, metavar="OUT", help="write the full result here"
    )
    p.add_argument(
        "--capacity",
        metavar="LIST",
        default=None,
        help="also a shared-LRU capacity sweep: 'auto' or comma-separated sizes in blocks "
        "(5000, 5000blocks) or bytes (16GiB, 512MB; needs --kv-model)",
    )
    p.add_argument(
        "--capacity-max-blocks",
        type=int,
        default=0,
        metavar="N",
        help="sweep the leading traces up to N block accesses (about 45 bytes each at the "
        "peak; capacity_curve's default is 8000000); 0: every trace",
    )
    p.add_argument(
        "--kv-model",
        metavar="NAME",
        default=None,
        help="the model's KV geometry, for sizes in bytes and --tiers: a preset (e.g. "
        "llama-3.1-8b), a folder or config.json of the model (GQA, MLA, sliding window), or a "
        "Hugging Face repo id with --kv-model-revision",
    )
    p.add_argument(
        "--kv-model-revision",
        metavar="REV",
        default=None,
        help="the pinned revision (commit) of a Hugging Face repo id given to --kv-model",
    )
    p.add_argument(
        "--policy",
        metavar="LIST",
        default="lru",
        help="eviction policies of the capacity sweep, comma-separated: lru (default), vllm "
        "(vLLM's own block pool), opt (Belady's bound), ttl (expiry after --ttl-s)",
    )
    p.add_argument(
        "--ttl-s", type=float, default=300.0, metavar="S", help="ttl: seconds after a last use"
    )
    p.add_argument(
        "--prefill-tps",
        type=float,
        default=None,
        metavar="N",
        help="vllm: prefill throughput of one call, uncached tokens/s (default 10000)",
    )
    p.add_argument(
        "--decode-tps",
        type=float,
        default=None,
        metavar="N",
        help="vllm: decoding speed of one call, output tokens/s (default 50)",
    )
    p.add_argument(
        "--tiers",
        metavar="SPEC",
        default=None,
        help="tiers of a tiered KV cache, fastest first, e.g. gpu=80GiB,host=1TiB (needs "
        "--kv-model): per tier hits, bytes served and read bandwidth",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="a fleet of N replicas, each with a cache of the swept size (default 1)",
    )
    p.add_argument(
        "--routing",
        choices=("round_robin", "session", "prefix"),
        default="session",
        help="how the fleet routes calls: session (a trace and its subagents on one replica, "
        "default), round_robin, prefix (where the longest prefix was sent)",
    )
    _add_timeline(p)
    p.add_argument(
        "--plot", type=Path, metavar="PNG", default=None, help="write the curve as a PNG"
    )


def _rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def cmd_replay(args: argparse.Namespace) -> int:
    from weka_assets.pipeline import replay
    from weka_assets.progress import cli_progress

    dataset = Path(args.dataset).expanduser()
    if not dataset.exists():
        raise UsageError(f"{args.dataset}: no such dataset folder")
    if not args.capacity and (args.policy != "lru" or args.tiers or args.replicas != 1):
        raise UsageError("--policy, --tiers and --replicas need --capacity (e.g. --capacity auto)")
    with cli_progress() as progress:
        result, _ = replay(dataset, progress)
    out = result.model_dump(mode="json")
    if args.capacity:
        report = _capacity(dataset, args)
        curve = report.curve("lru") or report.curves[0]
        out["capacity_curve"] = curve.model_dump(mode="json")
        if len(report.curves) > 1 or curve.policy != "lru":
            out["capacity_policies"] = [c.model_dump(mode="json") for c in report.curves]
        for key in ("tiers", "fleet"):
            if getattr(report, key) is not None:
                out[f"capacity_{key}"] = getattr(report, key)
        _print_capacity(report)
    _write_json(out, args.json)
    _print_rates(result)
    return 0


def _capacity(dataset: Path, args: argparse.Namespace):
    from pydantic import ValidationError

    from weka_assets.decoding.dataset import open_dataset
    from weka_assets.replay import capacity as cap
    from weka_assets.replay.block_pool import ServiceModel
    from weka_assets.replay.sizing import SizingOptions, parse_policies, sized_report

    if args.capacity_max_blocks < 0:
        raise UsageError("--capacity-max-blocks: 0 or more")
    if args.replicas < 1:
        raise UsageError(f"--replicas: 1 or more, got {args.replicas}")
    try:
        service = ServiceModel(
            **{
                k: v
                for k, v in (
                    ("prefill_tokens_per_s", args.prefill_tps),
                    ("decode_tokens_per_s", args.decode_tps),
                )
                if v is not None
            }
        )
        options = SizingOptions(
            policies=parse_policies(args.policy),
            ttl_s=args.ttl_s,
            service=service,
            tiers=args.tiers,
            replicas=args.replicas,
            routing=args.routing,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        option = {"prefill_tokens_per_s": "prefill-tps", "decode_tokens_per_s": "decode-tps"}
        name = str(err["loc"][-1])
        raise UsageError(f"--{option.get(name, name.replace('_', '-'))}: {err['msg']}") from None
    except ValueError as exc:
        raise UsageError(f"--policy: {exc}") from None
    if args.kv_model and args.kv_model not in cap.KV_PRESETS and not Path(args.kv_model).exists():
        if not args.kv_model_revision:
            raise UsageError(
                f"unknown --kv-model {args.kv_model!r}: a preset ({', '.join(cap.KV_PRESETS)}), "
                "a model folder or config.json, or a Hugging Face repo id with "
                "--kv-model-revision"
            )
    try:
        report, _ = sized_report(
            open_dataset(dataset),
            max_blocks=args.capacity_max_blocks,
            capacities=args.capacity,
            arrival_mode=args.arrival,
            time_scale=args.time_scale,
            kv_model=args.kv_model,
            kv_model_revision=args.kv_model_revision,
            options=options,
        )
    except ValueError as exc:  # it names the option's value: capacity '...', tier '...'
        raise UsageError(str(exc)) from None
    if args.plot:
        from weka_assets.replay.sizing import plot_png

        args.plot.write_bytes(plot_png(report))
    return report


def _print_capacity(report) -> None:
    curves = report.curves
    policies = "".join(f" {c.policy:>9}" for c in curves)
    print(f"{'capacity (blocks)':>18}{policies} {'parent':>8} {'subagent':>9}")
    for k, pt in enumerate(curves[0].points):
        cap = "unbounded" if pt.capacity_blocks is None else str(pt.capacity_blocks)
        rates = "".join(f" {_rate(c.points[k].hit_rate):>9}" for c in curves)
        roles = [pt.per_role[r].hit_rate for r in ("parent", "subagent")]
        print(f"{cap:>18}{rates} {_rate(roles[0]):>8} {_rate(roles[1]):>9}")
    if len(curves) > 1:
        print(
            f"(hit rate: hit blocks / full blocks of all calls; parent, subagent: {curves[0].policy})"
        )
    if report.tiers is not None:
        t = report.tiers
        print(f"tiers ({t['geometry'].get('name')}, {t['bytes_per_block']} bytes per block):")
        print(
            f"{'tier':<10} {'GiB':>10} {'hit rate':>9} {'GiB served':>11} {'p99 GB/s':>9} {'max GB/s':>9}"
        )
        for row in [*t["tiers"], t["total"], t["miss"]]:
            size = "" if row["capacity_bytes"] is None else f"{row['capacity_bytes'] / 2**30:.1f}"
            bw = [row[k] for k in ("bytes_per_s_p99", "bytes_per_s_max")]
            bw = ["n/a" if v is None else f"{v / 1e9:.3f}" for v in bw]
            print(
                f"{row['name']:<10} {size:>10} {_rate(row['rate']):>9} "
                f"{row['bytes'] / 2**30:>11.3f} {bw[0]:>9} {bw[1]:>9}"
            )
    if report.fleet is not None:
        f = report.fleet
        print(f"fleet: {f['replicas']} replicas, {f['routing']} routing (capacity per replica)")
        for pt in f["points"]:
            cap = "unbounded" if pt["capacity_blocks"] is None else str(pt["capacity_blocks"])
            print(f"{cap:>18} {_rate(pt['hit_rate']):>9}")


def _print_rates(result) -> None:
    name, value, definition = result.headline_figure()
    print(f"{name}: {_rate(value)} ({definition})")
    if result.namespace == "corpus":  # the table's figures are per trace: say so
        print(
            "per trace below (each trace against its own earlier calls; one-call traces count 0):"
        )
    rows = [("all", result), *result.per_role.items()]
    print(
        f"{'role':<9} {'calls':>7} {'blocks':>10} {'theoretical':>11} {'full-block':>10} "
        f"{'token':>7} {'mismatched':>10}"
    )
    for name, f in rows:
        print(
            f"{name:<9} {f.calls:>7} {f.blocks:>10} {_rate(f.theoretical_hit_rate):>11} "
            f"{_rate(f.theoretical_full_block_hit_rate):>10} {_rate(f.token_replay_hit_rate):>7} "
            f"{f.fidelity_mismatched_calls:>10}"
        )


# --------------------------------------------------------------------------- replay-live


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _add_replay_live(p: argparse.ArgumentParser) -> None:
    # every option but DATASET and --json is a field of replay.live_options.LiveOptions, of the
    # same name and default (a test checks them; `_live_options` builds it)
    p.add_argument(
        "dataset", metavar="DATASET", help="a decoded dataset folder (printed by decode)"
    )
    p.add_argument(
        "--url", required=True, metavar="URL", help="server base URL, e.g. http://127.0.0.1:8000"
    )
    p.add_argument("--model", required=True, metavar="NAME", help="the served model name")
    p.add_argument(
        "--concurrency", type=_positive_int, default=4, metavar="N", help="requests in flight"
    )
    _add_timeline(p)
    p.add_argument(
        "--interval-s", type=float, default=60.0, metavar="S", help="staggered: gap between traces"
    )
    p.add_argument(
        "--rate-per-s", type=_positive_float, default=0.05, metavar="R", help="poisson: rate"
    )
    p.add_argument("--arrival-seed", type=_non_negative_int, default=0, metavar="N")
    p.add_argument(
        "--max-context",
        type=_positive_int,
        default=None,
        metavar="N",
        help="drop calls whose tokens_in + max_tokens exceed N (default: the model's "
        "max_model_len as the server's /v1/models states it; none when it states none)",
    )
    p.add_argument(
        "--drop",
        choices=("calls", "traces"),
        default="calls",
        help="over --max-context: drop the call alone (default) or its whole trace",
    )
    p.add_argument(
        "--max-tokens-cap",
        type=_positive_int,
        default=16,
        metavar="N",
        help="max_tokens = min(recorded output tokens, N); default 16",
    )
    p.add_argument(
        "--block-size",
        type=_positive_int,
        default=32,
        metavar="B",
        help="the server's KV-cache block size, for the prediction (default 32)",
    )
    p.add_argument(
        "--kv-blocks",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="the server's KV cache in blocks (vLLM's null block included), to predict with "
        "vLLM's own eviction (default: num_gpu_blocks from the server's /metrics; 0: an "
        "unbounded cache)",
    )
    p.add_argument(
        "--timeout-s", type=_positive_float, default=120.0, metavar="S", help="per request"
    )
    p.add_argument(
        "--no-reset-cache",
        action="store_true",
        help="do not POST /reset_prefix_cache before the run",
    )
    p.add_argument(
        "--json",
        required=True,
        type=Path,
        metavar="OUT",
        help="write the result here (also when the run fails: the part done)",
    )


def _live_options(args: argparse.Namespace):
    """The `LiveOptions` of a `replay-live` command line (options not given: its defaults)."""
    from weka_assets.replay.live_options import LiveOptions

    given = {k: v for k, v in vars(args).items() if k in LiveOptions.model_fields}
    given["arrival"] = args.arrival or ""
    given["reset_cache"] = not args.no_reset_cache
    return LiveOptions(**{k: v for k, v in given.items() if v is not None})


def cmd_replay_live(args: argparse.Namespace) -> int:
    from weka_assets.decoding.dataset import open_dataset
    from weka_assets.progress import cli_progress
    from weka_assets.replay.live import answered_calls, run_live_replay

    dataset = Path(args.dataset).expanduser()
    if not dataset.exists():
        raise UsageError(f"{args.dataset}: no such dataset folder")
    ds = open_dataset(dataset)
    try:
        options = _live_options(args)
        options.arrival_for(ds)  # an out-of-range arrival option is a usage error
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    reporter = cli_progress()
    progress = answered_calls(reporter, ds, options.max_context)

    try:
        with reporter:
            result = run_live_replay(ds, options, out_path=args.json, progress=progress)
    except KeyboardInterrupt as exc:
        written = getattr(exc, "partial_result", None)
        _err(
            f"partial result written to {written}"
            if written is not None
            else f"interrupted before the replay started: nothing written to {args.json}"
        )
        raise
    print(result.summary())
    t = result.totals
    for name, p in (("latency_s", t.latency_s), ("ttft_s", t.ttft_s)):
        if p.count:
            print(
                f"{name:<10} p50 {p.p50:.4f}  p90 {p.p90:.4f}  p99 {p.p99:.4f}  ({p.count} calls)"
            )
    if result.prediction == "vllm_block_pool":
        print(
            f"predicted with vLLM's block pool of {result.settings.kv_blocks} blocks "
            f"({result.settings.kv_blocks_source}); an unbounded cache: "
            f"{t.unbounded_predicted_cached_tokens} tokens, {t.calls_evicted} calls lose hits "
            f"to eviction; the server's counters: {t.server_prefix_cache_hits} hits of "
            f"{t.server_prefix_cache_queries} queried tokens"
        )
    if result.capacity_curve:
        curve = result.capacity_curve
        print("this run at other pool sizes (vLLM's eviction, the measured timings):")
        print(f"{'kv blocks':>12} {'cached tokens':>14} {'hit rate':>9}")
        for p in curve["points"]:
            size = "unbounded" if p["kv_blocks"] is None else str(p["kv_blocks"])
            print(f"{size:>12} {p['cached_tokens']:>14} {_rate(p['hit_rate']):>9}")
    for reason, n in sorted(t.mismatches_by_explanation.items()):
        _err(f"{n} call(s) differ from the prediction: {reason}: {result.explanations[reason]}")
    if result.cache_reset is False:
        _err("the server's prefix cache was not reset (no POST /reset_prefix_cache)")
    return 0


# --------------------------------------------------------------------------- materialize


def _add_materialize(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus",
        required=True,
        metavar="NAME",
        help="corpus partition (a catalog name, e.g. sample)",
    )
    p.add_argument(
        "--tokenizer",
        action="append",
        metavar="NAME",
        help="tokenizer partition(s) to decode with (repeatable; default: all configured)",
    )
    p.add_argument(
        "--store",
        metavar="PATH",
        default="",
        help="data folder (default: $WEKA_ASSETS_STORE or ./.weka-store)",
    )


def dagster_home() -> Path:
    """$DAGSTER_HOME, or ./.dagster-home (created with the project's dagster.yaml) when unset."""
    home = os.environ.get("DAGSTER_HOME")
    if home:
        path = Path(home).expanduser().resolve()
        if not path.is_dir():
            raise UsageError(f"DAGSTER_HOME={home} is not a folder")
        return path
    path = Path(".dagster-home").resolve()
    if not path.is_dir():
        path.mkdir(parents=True)
        (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        _err(f"DAGSTER_HOME is not set: using {path}")
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def cmd_materialize(args: argparse.Namespace) -> int:
    dagster_home()
    import dagster as dg

    from weka_assets.definitions import build_defs, resources
    from weka_assets.instance.materialize import check_compute_log_bucket, materialize_corpus

    try:
        with dg.DagsterInstance.get() as instance:
            defs = build_defs(resource_defs=resources(args.store))
            defs.resources["store"].check()  # a missing bucket: one line, before any run
            check_compute_log_bucket(instance)
            steps = materialize_corpus(args.corpus, instance, defs, args.tokenizer)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    store = defs.resources["store"]
    ok = True
    for step in steps:
        ok &= step.success
        _err(f"{'ok    ' if step.success else 'FAILED'} {step.partition}")
        for line in step.failures + [f"failed check: {c}" for c in step.failed_checks]:
            _err(f"  {line}")
        gate = step.outputs.get("trace_scope")
        if gate is not None:
            from weka_assets.defs.assets.scope import report_markdown
            from weka_assets.store_chain import read_scope_report

            report = read_scope_report(store, gate.report_key)
            print(f"{step.partition}: scope report ({store.url(gate.report_key)})")
            print(report_markdown(report).replace("**", ""))
        ref = step.outputs.get("replay_benchmark")
        if ref is not None:
            from weka_assets.store_chain import read_replay_result

            result = read_replay_result(store, ref.result_key)
            print(f"{step.partition}: dataset {ref.decode_key}")
            _print_rates(result)
    return 0 if ok else 1


# --------------------------------------------------------------------------- validate / expand


def _add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help=PATH_HELP)
    _add_format(p)


def cmd_validate(args: argparse.Namespace) -> int:
    from weka_assets.parallel import ordered_map
    from weka_assets.progress import cli_progress
    from weka_assets.traces import formats
    from weka_assets.traces.reader import detect_format, iter_raw_records, validate_record

    path = corpus_path(args.path)
    traces = calls = ids = sessions = 0
    errors = []
    with cli_progress() as progress:
        fmt = detect_format(path, _corpus_format(args))
        records = iter_raw_records(path, lazy=True, fmt=fmt)
        for v in ordered_map(validate_record, records, formats.record_workers(fmt.format)):
            if v.error is not None:
                errors.extend(e.as_dict() for e in (v.error, *v.more_errors))
            else:
                traces, calls, ids = traces + 1, calls + v.calls, ids + v.ids
                sessions += v.sessions
            progress("read", v.done, v.total, "bytes")
    _print_capped(_problem_lines(errors))
    within = f" ({sessions} sessions)" if sessions else ""
    print(
        f"{traces} valid trace(s){within}, {calls} calls, {ids} hash ids; "
        f"{len(errors)} hard error(s)"
    )
    return 1 if errors else 0


def _add_expand(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="a decoded dataset folder")


def cmd_expand(args: argparse.Namespace) -> int:
    from weka_assets.decoding.expand import expand_dataset
    from weka_assets.progress import cli_progress

    dataset = Path(args.dataset).expanduser()
    if not dataset.exists():
        raise UsageError(f"{args.dataset}: no such dataset folder")
    with cli_progress() as progress:
        e = expand_dataset(dataset, progress)
    print(f"{e.calls} calls, {e.tokens} tokens, checksum {e.checksum:016x}")
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="a decoded dataset folder")
    p.add_argument(
        "--format",
        required=True,
        choices=("mooncake", "aiperf-payload", "text"),
        help="mooncake: hash_ids lines; aiperf-payload: token-id /v1/completions bodies; "
        "text: decoded prompts",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="PATH",
        help="the JSONL file (sidecar: PATH.meta.json)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="NAME_OR_PATH",
        help="text: the tokenizer when the manifest names a local folder (checked by its hash)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="aiperf-payload: a model name put in every body",
    )


def cmd_export(args: argparse.Namespace) -> int:
    import orjson

    from weka_assets.decoding.dataset import open_dataset
    from weka_assets.errors import DecodeError, WekaError
    from weka_assets.exports import ExportError, export_dataset
    from weka_assets.progress import cli_progress

    dataset = Path(args.dataset).expanduser()
    if not dataset.exists():
        raise UsageError(f"{args.dataset}: no such dataset folder")
    try:
        ds = open_dataset(dataset)
        with cli_progress() as progress:
            summary = export_dataset(
                ds, args.format, args.out, tokenizer=args.tokenizer, model=args.model,
                progress=progress,
            )  # fmt: skip
    except (DecodeError, ExportError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise WekaError(f"{args.out}: cannot write ({exc.strerror or exc})") from None
    print(orjson.dumps(summary.as_dict()).decode())
    return 0


# --------------------------------------------------------------------------- stale / backfill-stale


def _add_stale(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help='print {"stale": [{"asset", "partition", "causes"}]}'
    )
    p.add_argument(
        "--store",
        metavar="PATH",
        default="",
        help="data folder (default: $WEKA_ASSETS_STORE or ./.weka-store)",
    )


def _stale(store: str):
    import dagster as dg

    from weka_assets.definitions import build_defs, resources
    from weka_assets.instance.staleness import stale_partitions

    defs = build_defs(resource_defs=resources(store))
    instance = dg.DagsterInstance.get()
    return defs, instance, stale_partitions(defs, instance)


def cmd_stale(args: argparse.Namespace) -> int:
    dagster_home()
    _, instance, stale = _stale(args.store)
    instance.dispose()
    if args.json:
        import json

        print(json.dumps({"stale": [s.as_dict() for s in stale]}, indent=2))
        return 0
    if not stale:
        print("nothing is stale")
    for s in stale:
        print(f"{s.asset:<24} {s.partition:<32} {'; '.join(s.causes)}")
    return 0


def _add_backfill_stale(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        metavar="URL",
        default=None,
        help="webserver to launch one backfill through (default: $WEKA_ASSETS_WEBSERVER or "
        "http://127.0.0.1:3000 if it answers; otherwise the runs happen in process)",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for the backfill; exit 1 if any partition failed"
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the partitions here even if a webserver answers",
    )
    p.add_argument("--store", metavar="PATH", default="", help="data folder for in-process runs")


def cmd_backfill_stale(args: argparse.Namespace) -> int:
    dagster_home()
    from weka_assets import env
    from weka_assets.instance import staleness

    defs, instance, stale = _stale(args.store)
    try:
        if not stale:
            print("nothing is stale")
            return 0
        _err(
            f"{len(stale)} stale partition(s): "
            + ", ".join(f"{s.asset}[{s.partition}]" for s in stale)
        )
        url = None if args.in_process else (args.url or env.get("WEKA_ASSETS_WEBSERVER"))
        if (
            url is None
            and not args.in_process
            and staleness.webserver_reachable(staleness.DEFAULT_WEBSERVER)
        ):
            url = staleness.DEFAULT_WEBSERVER
        if url:
            from weka_assets.instance.launch import launch_by_corpus

            try:  # one backfill per corpus: its runs carry the corpus's tag (the run limit's)
                backfills = launch_by_corpus(url, stale)
            except (staleness.WebserverError, OSError) as exc:
                raise UsageError(f"cannot launch a backfill through {url}: {exc}") from None
            for backfill_id in backfills.values():
                print(f"backfill {backfill_id}")
            if not args.wait:
                return 0
            failed = False
            for corpus, backfill_id in backfills.items():
                status = staleness.wait_backfill(url, backfill_id)
                _err(f"backfill {backfill_id} ({corpus}): {status['status']}")
                failed |= staleness.backfill_failed(status)
            return 1 if failed else 0
        from weka_assets.instance.materialize import check_compute_log_bucket

        check_compute_log_bucket(instance)
        outcomes = staleness.backfill_in_process(defs, instance, stale)
        for o in outcomes:
            print(f"run {o.run_id} {o.partition} {'ok' if o.success else 'FAILED'}")
            for line in o.failures:
                _err(f"  {line}")
        return 0 if all(o.success for o in outcomes) else 1
    finally:
        instance.dispose()


# --------------------------------------------------------------------------- launch


def _add_launch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus", required=True, metavar="NAME", help="corpus partition (registry name)"
    )
    p.add_argument(
        "--tokenizer",
        metavar="NAME",
        default=None,
        help="tokenizer partition (default: the first configured, $WEKA_ASSETS_TOKENIZERS)",
    )
    p.add_argument(
        "--url",
        required=True,
        metavar="URL",
        help="the deployment's webserver, e.g. http://127.0.0.1:3000",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for every run; exit 1 unless all succeeded"
    )
    p.add_argument(
        "--timeout", type=_positive_int, default=3600, metavar="S", help="for --wait (3600)"
    )


def cmd_launch(args: argparse.Namespace) -> int:
    import json

    import httpx

    from weka_assets.defs.partitions import configured_tokenizers
    from weka_assets.instance.launch import launch
    from weka_assets.instance.staleness import WebserverError

    tokenizer = args.tokenizer or configured_tokenizers()[0]
    try:
        summary, ok = launch(args.url, args.corpus, tokenizer, args.wait, args.timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except (WebserverError, httpx.HTTPError, OSError) as exc:
        raise UsageError(f"cannot launch through {args.url}: {exc}") from None
    print(json.dumps(summary, indent=2))
    if not ok:
        _err(f"{PROG} launch: backfill {summary['backfill_id']} did not succeed")
    return 0 if ok else 1


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Subcommand:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {
    "synth": Subcommand(
        "write a deterministic synthetic corpus; prints its path", _add_synth, cmd_synth
    ),
    "fetch": Subcommand(
        "download and verify one corpus source at a pinned revision; prints a JSON line",
        _add_fetch,
        cmd_fetch,
    ),
    "scope-report": Subcommand(
        "check a corpus against the hash-id scope contract; exit 1 if it fails",
        _add_scope_report,
        cmd_scope_report,
    ),
    "decode": Subcommand(
        "decode a corpus into a token dataset (scope-gated); prints its path",
        _add_decode,
        cmd_decode,
    ),
    "replay": Subcommand(
        "unbounded prefix-cache replay of a decoded dataset", _add_replay, cmd_replay
    ),
    "validate": Subcommand(
        "read every trace and check the schema (no scope analysis); exit 1 on any hard error",
        _add_validate,
        cmd_validate,
    ),
    "expand": Subcommand(
        "expand every call of a decoded dataset into its token ids once, streamed; prints a "
        "checksum",
        _add_expand,
        cmd_expand,
    ),
    "export": Subcommand(
        "export a decoded dataset for other benchmark tools (mooncake, aiperf-payload, text); "
        "prints a JSON line",
        _add_export,
        cmd_export,
    ),
    "replay-live": Subcommand(
        "replay a decoded dataset against a real OpenAI-compatible server (prefix cache vs "
        "prediction, latency, time to first token)",
        _add_replay_live,
        cmd_replay_live,
    ),
    "stale": Subcommand(
        "list stale partitions (Dagster's own staleness) in the instance at $DAGSTER_HOME",
        _add_stale,
        cmd_stale,
    ),
    "backfill-stale": Subcommand(
        "launch a backfill of every stale partition, one per corpus (webserver, or in process)",
        _add_backfill_stale,
        cmd_backfill_stale,
    ),
    "launch": Subcommand(
        "submit a corpus's whole chain to a running deployment (its webserver's GraphQL API); "
        "prints a JSON summary",
        _add_launch,
        cmd_launch,
    ),
    "materialize": Subcommand(
        "materialize the whole chain for one corpus in the Dagster instance at $DAGSTER_HOME",
        _add_materialize,
        cmd_materialize,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Weka agentic-coding traces: scope proof, decoding, prefix-cache replay.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, spec in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=spec.help, description=spec.help)
        spec.configure(p)
        p.set_defaults(_run=spec.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse already printed
        return exc.code if isinstance(exc.code, int) else 2

    from weka_assets.errors import CorpusRejected, WekaError

    try:
        return args._run(args)
    except UsageError as exc:
        _err(f"{PROG} {args.command}: error: {exc}")
        return 2
    except CorpusRejected as exc:
        _print_capped(_problem_lines(exc.errors))
        _err(f"{PROG}: error: corpus rejected: {exc}")
        return 1
    except WekaError as exc:
        _err(f"{PROG}: error: {exc}")
        return 1
    except KeyboardInterrupt:
        _err(f"{PROG}: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
