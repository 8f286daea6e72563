"""The `weka-assets` command line: in-process `main([...])` calls, plus one run of the installed
console script. Real data: the 30 kv-cache-tester traces (conftest.real_sample); broken corpora
are built in tmp_path from copies of them, never by touching ../shared."""

import argparse
import copy
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from weka_assets.cli import SUBCOMMANDS, main

os.environ.setdefault("HF_HUB_OFFLINE", "1")

THEORETICAL_HIT_RATE = 0.9513143509888292
BLOCKS = 2853880
SMALL = "trace_0460.json"  # 12 calls, no subagents, 12 KB
WITH_SUBAGENTS = "trace_0277.json"  # 4 subagents, 200 KB
OTHER = "trace_0130.json"  # 4 calls, no subagents, 18 KB


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def last(self) -> str:
        lines = self.out.strip().splitlines()
        return lines[-1] if lines else ""


def cli(*argv) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return Run(rc, out.getvalue(), err.getvalue())


def load(real_sample: Path, name: str) -> dict:
    return json.loads((real_sample / name).read_text())


def write_dir(folder: Path, files: dict[str, dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, trace in files.items():
        (folder / name).write_text(json.dumps(trace))
    return folder


def report_of(path: Path, tmp_path: Path, *extra) -> tuple[Run, dict]:
    out = tmp_path / "report.json"
    run = cli("scope-report", path, "--json", out, *extra)
    return run, json.loads(out.read_text())


# --------------------------------------------------------------------------- 1. scope-report


def test_scope_report_real_sample_reproduces_the_contract(real_sample, tmp_path):
    run, r = report_of(real_sample, tmp_path)
    assert run.rc == 0, run.err
    assert run.last.startswith("PASS: 30/30 shared")
    assert r["passed"] is True and r["failure_reasons"] == [] and r["hard_errors"] == []
    assert r["traces"] == 30 and r["declared_scope"] == {"local": 30}
    assert r["verdict"] == {"shared": 30, "reset": 0, "ambiguous": 0}
    assert r["minting_order"] == {"document": 22, "parent_first": 8, "none": 0}
    assert r["perfect_traces"] == 28 and r["holes_traces"] == 2
    assert r["base"] == {"1": 30}
    assert r["hashing"]["floor"] == r["calls"] > 0
    assert (r["hashing"]["ceil"], r["hashing"]["truncated"], r["hashing"]["over"]) == (0, 0, 0)
    assert r["inner_time"] == {"absolute": 0, "relative": 24, "mixed": 0}
    assert r["traces_with_subagents"] == 8 and r["subagents"] == 24
    assert r["parent_share"]["traces_affected"] == 0 and r["parent_share"]["mean"] == 0
    assert r["sibling_share"]["mean"] == pytest.approx(0.145, abs=5e-4)
    assert r["sibling_share"]["median"] == pytest.approx(0.139, abs=5e-4)
    assert r["excluded_traces"] == [] and r["policy"] == "fail"


def test_scope_report_builtin_corpus_uses_the_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WEKA_ASSETS_CACHE", str(tmp_path / "cache"))
    run, r = report_of("builtin:sample-kvt", tmp_path)
    assert run.rc == 0, run.err
    assert r["traces"] == 12 and r["conventions"] == {"kv-cache-tester": 12}
    assert list((tmp_path / "cache").glob("sample-kvt-*/traces.jsonl"))


# --------------------------------------------------------------------------- 2./3. decode + replay


@pytest.fixture(scope="module")
def decoded(real_sample, tmp_path_factory):
    """The real sample decoded once under each scope policy, and replayed."""
    root = tmp_path_factory.mktemp("datasets")
    out = {"root": root}
    for policy in ("trace", "session"):
        run = cli("decode", real_sample, "--out", root, "--scope-policy", policy)
        assert run.rc == 0, run.err
        assert "decoded 30 traces, 1950 calls -> " in run.err
        dataset = Path(run.last)
        assert dataset.parent == root and (dataset / "manifest.json").is_file()
        rep = root / f"replay-{policy}.json"
        replayed = cli("replay", dataset, "--json", rep)
        assert replayed.rc == 0, replayed.err
        out[policy] = {
            "dataset": dataset,
            "decode": run,
            "replay_run": replayed,
            "replay": json.loads(rep.read_text()),
        }
    return out


def test_decode_and_replay_real_sample(decoded):
    rep = decoded["trace"]["replay"]
    assert rep["theoretical_hit_rate"] == THEORETICAL_HIT_RATE
    assert rep["blocks"] == BLOCKS
    assert rep["fidelity_mismatched_calls"] == 0
    assert rep["calls"] == 1950
    assert rep["token_replay_hit_rate"] == pytest.approx(THEORETICAL_HIT_RATE)
    # one namespace per trace: the per-trace theoretical rate is the headline, printed first
    assert rep["namespace"] == "trace"
    first = decoded["trace"]["replay_run"].out.splitlines()[0]
    assert first.startswith(f"theoretical hit rate: {THEORETICAL_HIT_RATE:.4f} (")
    assert "one seen-set per trace" in first
    assert rep["theoretical_full_block_hit_rate"] == pytest.approx(THEORETICAL_HIT_RATE)
    assert set(rep["per_role"]) == {"parent", "subagent"}
    assert rep["per_role"]["parent"]["calls"] + rep["per_role"]["subagent"]["calls"] == 1950
    summary = decoded["trace"]["replay_run"].out
    assert "parent" in summary and "subagent" in summary and "0.9513" in summary


def test_decode_again_reuses_the_dataset(decoded, real_sample):
    run = cli("decode", real_sample, "--out", decoded["root"])
    assert run.rc == 0, run.err
    assert Path(run.last) == decoded["trace"]["dataset"]
    assert f"reused existing dataset {decoded['trace']['dataset']}" in run.err


def test_session_scope_reproduces_the_historic_bug(decoded):
    trace, session = decoded["trace"]["replay"], decoded["session"]["replay"]
    assert decoded["session"]["dataset"] != decoded["trace"]["dataset"]
    assert session["fidelity_mismatched_calls"] > 0
    assert session["per_role"]["parent"]["fidelity_mismatched_calls"] == 0
    assert (
        session["per_role"]["subagent"]["fidelity_mismatched_calls"]
        == session["fidelity_mismatched_calls"]
    )
    assert session["token_replay_hit_rate"] < trace["token_replay_hit_rate"]
    assert session["theoretical_hit_rate"] == trace["theoretical_hit_rate"]  # ids are unchanged


# --------------------------------------------------------------------------- 4. broken corpora


def _reset(real_sample, folder):
    t = load(real_sample, WITH_SUBAGENTS)
    sub = next(r for r in t["requests"] if r["type"] == "subagent" and r["requests"])
    renumber: dict[int, int] = {}
    for call in sub["requests"]:
        call["hash_ids"] = [renumber.setdefault(x, 1 + len(renumber)) for x in call["hash_ids"]]
    return write_dir(folder, {WITH_SUBAGENTS: t, SMALL: load(real_sample, SMALL)})


def _ambiguous(real_sample, folder):
    t = load(real_sample, SMALL)
    ids = t["requests"][0]["hash_ids"]
    ids[0], ids[1] = ids[1], ids[0]
    return write_dir(folder, {SMALL: t})


def _scope_unknown(real_sample, folder):
    t = load(real_sample, SMALL)
    t["hash_id_scope"] = "galaxy"
    return write_dir(folder, {SMALL: t, OTHER: load(real_sample, OTHER)})


def _cut_jsonl(real_sample, folder):
    folder.mkdir()
    a = json.dumps(load(real_sample, SMALL))
    b = json.dumps(load(real_sample, OTHER))
    out = folder / "traces.jsonl"
    out.write_text(a + "\n" + b[: len(b) // 2] + "\n")
    return out


def _missing_in(real_sample, folder):
    t = load(real_sample, SMALL)
    del t["requests"][3]["in"]
    return write_dir(folder, {SMALL: t})


def _duplicate_id(real_sample, folder):
    other = load(real_sample, OTHER)
    other["id"] = "trace_0460"
    return write_dir(folder, {SMALL: load(real_sample, SMALL), OTHER: other})


def _nested(real_sample, folder):
    t = load(real_sample, WITH_SUBAGENTS)
    subs = [i for i, r in enumerate(t["requests"]) if r["type"] == "subagent"]
    host = t["requests"][subs[0]]
    host["requests"].append(copy.deepcopy(t["requests"][subs[1]]))
    return write_dir(folder, {WITH_SUBAGENTS: t})


# name: (builder, expected hard error (rule, trace, request, inner) or verdict, stderr fragments)
BROKEN = {
    "reset": (
        _reset,
        {"verdict": "reset", "trace": "trace_0277"},
        [WITH_SUBAGENTS, "trace 'trace_0277'", "[reset]"],
    ),
    "ambiguous": (
        _ambiguous,
        {"verdict": "ambiguous", "trace": "trace_0460"},
        [SMALL, "trace 'trace_0460'", "[ambiguous]"],
    ),
    "scope_unknown": (
        _scope_unknown,
        {"rule": "unknown_scope", "trace": "trace_0460"},
        [SMALL, "trace 'trace_0460'", "[unknown_scope]", "'galaxy'"],
    ),
    "cut_jsonl": (
        _cut_jsonl,
        {"rule": "invalid_json", "line": 2},
        ["traces.jsonl:2", "[invalid_json]"],
    ),
    "missing_in": (
        _missing_in,
        {"rule": "missing_field", "trace": "trace_0460", "request": 3},
        [SMALL, "trace 'trace_0460', request 3", "[missing_field]", "in"],
    ),
    "duplicate_id": (
        _duplicate_id,
        {"rule": "duplicate_trace_id", "trace": "trace_0460"},
        ["trace 'trace_0460'", "[duplicate_trace_id]", "already used"],
    ),
    "nested": (
        _nested,
        {"rule": "nested_subagent", "trace": "trace_0277", "request": 1, "inner": 4},
        [WITH_SUBAGENTS, "trace 'trace_0277', request 1, inner 4", "[nested_subagent]"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_scope_report_broken_corpus(case, real_sample, tmp_path):
    build, expect, fragments = BROKEN[case]
    corpus = build(real_sample, tmp_path / "corpus")
    run, r = report_of(corpus, tmp_path)
    assert run.rc == 1, run.err
    assert "Traceback" not in run.err
    assert run.last.startswith("FAIL:")
    assert r["passed"] is False and r["failure_reasons"]
    if "verdict" in expect:
        assert r["hard_errors"] == []
        assert r["verdict"][expect["verdict"]] == 1
        bad = [row for row in r["per_trace"] if row["verdict"] != "shared"]
        assert [row["trace"] for row in bad] == [expect["trace"]]
    else:
        assert len(r["hard_errors"]) == 1
        err = r["hard_errors"][0]
        for key, value in expect.items():
            assert err[key] == value, (key, err)
    for fragment in fragments:
        assert fragment in run.err, (fragment, run.err)


def test_hard_error_lines_are_capped(real_sample, tmp_path):
    t = load(real_sample, SMALL)
    t["hash_id_scope"] = "galaxy"
    folder = tmp_path / "corpus"
    write_dir(folder, {f"t{i:02d}.json": {**t, "id": f"t{i:02d}"} for i in range(25)})
    run, r = report_of(folder, tmp_path)
    assert run.rc == 1 and len(r["hard_errors"]) == 25
    assert run.err.count("[unknown_scope]") == 20 + 1  # 20 lines + the first, in the reason
    assert "... and 5 more" in run.err


def test_policy_exclude_lists_the_reset_trace(real_sample, tmp_path):
    corpus = _reset(real_sample, tmp_path / "corpus")
    run, r = report_of(corpus, tmp_path, "--policy", "exclude")
    assert run.rc == 0, run.err
    assert r["passed"] is True and r["policy"] == "exclude"
    assert r["excluded_traces"] == ["trace_0277"]
    assert r["verdict"]["reset"] == 1
    assert "trace_0277" in run.err


def test_decode_policy_exclude_leaves_the_reset_trace_out(decoded, real_sample, tmp_path):
    corpus = _reset(real_sample, tmp_path / "corpus")
    run = cli("decode", corpus, "--out", decoded["root"], "--policy", "exclude")
    assert run.rc == 0, run.err
    assert "excluded 1 trace(s) under policy 'exclude': trace_0277" in run.err
    manifest = json.loads((Path(run.last) / "manifest.json").read_text())
    assert manifest["traces"] == 1 and manifest["key_material"]["excluded_traces"] == ["trace_0277"]


@pytest.mark.parametrize("case", ["reset", "scope_unknown"])
def test_decode_rejects_a_failing_corpus(case, real_sample, tmp_path):
    build, _, fragments = BROKEN[case]
    corpus = build(real_sample, tmp_path / "corpus")
    run = cli("decode", corpus, "--out", tmp_path / "datasets")
    assert run.rc == 1
    assert run.out == ""
    assert "weka-assets: error: corpus rejected:" in run.err
    assert "Traceback" not in run.err
    assert fragments[1] in run.err
    assert not any((tmp_path / "datasets").glob("*/manifest.json"))


# --------------------------------------------------------------------------- 5. synth


@pytest.mark.parametrize(
    ("profile", "name"), [("semianalysis", "c.jsonl"), ("kv-cache-tester", "c.jsonl.gz")]
)
def test_synth_is_deterministic_and_passes_the_scope_report(profile, name, tmp_path):
    args = ["synth", "--profile", profile, "--traces", 6, "--seed", 5, "--size", "small"]
    first = cli(*args, "--out", tmp_path / "a" / name)
    second = cli(*args, "--out", tmp_path / "b" / name)
    assert first.rc == second.rc == 0, first.err
    assert Path(first.last) == tmp_path / "a" / name
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    run, r = report_of(Path(first.last), tmp_path)
    assert run.rc == 0, run.err
    assert r["traces"] == 6 and r["conventions"] == {profile: 6}
    assert r["traces_with_subagents"] > 0


def test_synth_folder_output(tmp_path):
    run = cli(
        "synth",
        "--profile",
        "kv-cache-tester",
        "--traces",
        2,
        "--seed",
        1,
        "--out",
        tmp_path / "corpus",
    )
    assert run.rc == 0, run.err
    assert len(list(Path(run.last).glob("*.json"))) == 2


# --------------------------------------------------------------------------- 6. usage errors


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["scope-report"],
        ["scope-report", "{real}"],  # --json missing
        ["scope-report", "{real}", "--json", "{tmp}/r.json", "--policy", "maybe"],
        ["decode", "{real}"],  # --out missing
        ["decode", "{real}", "--out", "{tmp}", "--seed", "-1"],
        ["decode", "{real}", "--out", "{tmp}", "--scope-policy", "global"],
        ["replay", "{tmp}"],  # --json missing
        ["synth", "--profile", "other", "--traces", "1", "--seed", "1", "--out", "{tmp}/c.jsonl"],
        [
            "synth",
            "--profile",
            "semianalysis",
            "--traces",
            "0",
            "--seed",
            "1",
            "--out",
            "{tmp}/c.jsonl",
        ],
        ["synth", "--profile", "semianalysis", "--seed", "1", "--out", "{tmp}/c.jsonl"],
    ],
)
def test_usage_errors_exit_2(argv, real_sample, tmp_path):
    run = cli(*(a.format(real=real_sample, tmp=tmp_path) for a in argv))
    assert run.rc == 2
    assert "usage: weka-assets" in run.err and "Traceback" not in run.err


@pytest.mark.parametrize(
    "argv",
    [
        ["scope-report", "{tmp}/nope", "--json", "{tmp}/r.json"],
        ["scope-report", "builtin:nope", "--json", "{tmp}/r.json"],
        ["scope-report", "{tmp}", "--json", "{tmp}/r.json"],  # a folder without *.json
        ["decode", "{tmp}/nope.jsonl", "--out", "{tmp}/d"],
        ["replay", "{tmp}/nope", "--json", "{tmp}/r.json"],
    ],
)
def test_bad_path_exits_2_with_one_line(argv, tmp_path):
    run = cli(*(a.format(tmp=tmp_path) for a in argv))
    assert run.rc == 2
    assert run.out == ""
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"weka-assets {argv[0]}: error: "), run.err
    assert not (tmp_path / "r.json").exists()


def test_bad_input_is_one_error_line(real_sample, tmp_path):
    (tmp_path / "not-a-dataset").mkdir()
    cases = [
        (["replay", tmp_path / "not-a-dataset", "--json", tmp_path / "r.json"], "manifest.json"),
        (
            ["scope-report", real_sample / SMALL, "--json", tmp_path],
            "cannot write",
        ),  # OUT is a folder
        (
            [
                "decode",
                real_sample / SMALL,
                "--out",
                tmp_path / "d",
                "--tokenizer",
                "no-such-tokenizer",
            ],
            "unknown tokenizer",
        ),
    ]
    for argv, fragment in cases:
        run = cli(*argv)
        assert run.rc == 1, (argv, run.err)
        assert run.err.strip().splitlines() == [run.err.strip()], run.err
        assert run.err.startswith("weka-assets: error: ") and fragment in run.err


def test_synth_refuses_to_replace_a_file_with_a_folder(tmp_path):
    (tmp_path / "taken").write_text("keep me")
    run = cli(
        "synth",
        "--profile",
        "semianalysis",
        "--traces",
        1,
        "--seed",
        1,
        "--out",
        tmp_path / "taken",
    )
    assert run.rc == 2 and "exists and is not a folder" in run.err
    assert (tmp_path / "taken").read_text() == "keep me"


def test_help_exits_0():
    assert cli("--help").rc == 0
    for name in SUBCOMMANDS:
        run = cli(name, "--help")
        assert run.rc == 0 and f"usage: weka-assets {name}" in run.out


# --------------------------------------------------------------------------- console script


def test_console_script_entry_point(real_sample, tmp_path):
    script = Path(sys.executable).with_name("weka-assets")
    script = str(script) if script.exists() else shutil.which("weka-assets")
    if script is None:
        pytest.skip("the weka-assets console script is not installed")
    corpus = _scope_unknown(real_sample, tmp_path / "corpus")
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [script, "scope-report", str(corpus), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.strip().startswith("FAIL: 1/1 shared")
    assert "[unknown_scope]" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(out.read_text())["hard_errors"][0]["rule"] == "unknown_scope"


def test_replay_capacity_sweep_with_a_block_budget(decoded, tmp_path):
    """--capacity-max-blocks bounds the sweep to the leading traces, as capacity_curve does."""
    from weka_assets.decoding.dataset import open_dataset
    from weka_assets.replay.capacity import capacity_traces

    dataset = decoded["trace"]["dataset"]
    ds = open_dataset(dataset)
    budget = int((ds.column("tokens_in") // ds.column("block_size"))[ds.trace_slices()[0]].sum())
    out = tmp_path / "r.json"
    run = cli(
        "replay", dataset, "--json", out, "--capacity", "auto", "--capacity-max-blocks", budget
    )
    assert run.rc == 0, run.err
    curve = json.loads(out.read_text())["capacity_curve"]
    n = capacity_traces(ds, budget)
    assert n == 1 and curve["calls"] == ds.head(n).n_calls < ds.n_calls
    assert (
        cli("replay", dataset, "--json", out, "--capacity", "auto", "--capacity-max-blocks", -1).rc
        == 2
    )


def test_replay_and_replay_live_share_one_definition_of_their_common_options():
    """`--arrival` and `--time-scale` are defined once (issue 27: the two spellings' help texts
    had drifted apart), and the command line's arrival modes are the schedule's."""
    from weka_assets import cli
    from weka_assets.replay.schedule import ARRIVAL_MODES

    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    replay, live = subs.choices["replay"], subs.choices["replay-live"]

    def option(p, name):
        a = next(a for a in p._actions if name in a.option_strings)
        return (a.choices, a.type, a.default, a.help, a.metavar)

    for name in ("--arrival", "--time-scale"):
        assert option(replay, name) == option(live, name), name
    assert tuple(cli.ARRIVAL_MODES) == ARRIVAL_MODES


def test_the_capacity_asset_and_the_command_line_compute_one_curve(tmp_path):
    """`capacity_curve`'s figures and `weka-assets replay --capacity auto` are one function
    (`sizing.sized_report`): the same curve for the same dataset and budget."""
    from weka_assets.decoding.dataset import open_dataset
    from weka_assets.defs.resources import ReplayOptions
    from weka_assets.pipeline import decode_corpus
    from weka_assets.store_chain import capacity_figures
    from weka_assets_tests.corpora import synthetic

    ds_path = decode_corpus(synthetic("semianalysis", traces=6, seed=4), tmp_path / "ds").path
    options = ReplayOptions(capacity_max_blocks=5000)
    curve, _, _ = capacity_figures(open_dataset(ds_path), options)
    out = tmp_path / "r.json"
    assert main(["replay", str(ds_path), "--json", str(out), "--capacity", "auto",
                 "--capacity-max-blocks", "5000", "--kv-model", options.kv_model]) == 0  # fmt: skip
    assert json.loads(out.read_text())["capacity_curve"] == curve.model_dump(mode="json")
