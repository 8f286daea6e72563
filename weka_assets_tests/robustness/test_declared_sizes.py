"""Declared sizes are checked at the gate, before anything is sized from them.

A trace's `in` / `out` (Mooncake's `input_length` / `output_length`) and its block size are
numbers nothing in the file backs: `in: 100000000000` is 13 bytes of JSON, and decoding it
used to die allocating 373 GiB for the call's tokens (an out-of-memory kill in a Celery
worker or a pod). Now, in every format, a size over its limit (`WEKA_ASSETS_MAX_PROMPT_TOKENS`,
`WEKA_ASSETS_MAX_OUTPUT_TOKENS`) is one hard error at the reader, naming file, line, trace,
request (and inner index) and the rule; the scope report fails, nothing is decoded, the
dataset root stays as it was, and the command line prints one line per problem, exit 1.
The limits only reject: they are in no decode key.
"""

import contextlib
import hashlib
import io
import json
import resource
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from weka_assets import cli
from weka_assets.decoding.dataset import open_dataset
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.env import SettingError
from weka_assets.errors import CorpusRejected, TraceError
from weka_assets.pipeline import decode_corpus, scope_report
from weka_assets.traces.reader import (
    MAX_OUTPUT_TOKENS_ENV,
    MAX_PROMPT_TOKENS_ENV,
    CorpusFormat,
    SizeLimits,
    iter_records,
    max_output_tokens,
    max_prompt_tokens,
)
from weka_assets_tests.bailian import bailian_requests, write_bailian
from weka_assets_tests.mooncake import mooncake_requests, write_mooncake
from weka_assets_tests.robustness.faults import child_env, weka_cmd

PROMPT = 4 << 20  # the defaults (operator's guide, "Settings")
OUTPUT = 1 << 20
HUGE = 100_000_000_000  # the prompt of the issue: 373 GiB of int32 tokens
NO_DRIFT = {"measure_drift": False}  # no tokenizer round trip: not what is tested here


def _call(t: float, n: int, out: int, ids: list[int]) -> dict:
    return {"type": "n", "t": t, "model": "m", "in": n, "out": out, "hash_ids": ids}


def weka_trace(tid: str) -> dict:
    """A valid trace: parent calls at requests 0 and 2, a subagent (request 1) of two calls."""
    sub = {
        "type": "subagent",
        "t": 1.0,
        "agent_id": "a1",
        "subagent_type": "Explore",
        "status": "completed",
        "models": ["m"],
        "requests": [_call(1.5, 130, 10, [0, 1, 3]), _call(2.0, 260, 10, [0, 1, 3, 4])],
    }
    return {
        "id": tid,
        "models": ["m"],
        "block_size": 64,
        "hash_id_scope": "local",
        "requests": [_call(0.0, 200, 20, [0, 1, 2]), sub, _call(3.0, 330, 20, [0, 1, 2, 5, 6])],
    }


def write_weka(path: Path, traces: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(t) + "\n" for t in traces))
    return path


# ---- the cases: (corpus writer, CorpusFormat, expected error) ---------------------------------


def _weka(mutate):
    def build(folder: Path):
        traces = [weka_trace(f"t{i}") for i in range(3)]
        mutate(traces[1])  # line 2
        return write_weka(folder / "traces.jsonl", traces), CorpusFormat()

    return build


def _mooncake(mutate, block_size=None):
    def build(folder: Path):
        reqs = mooncake_requests(6, seed=3)
        mutate(reqs[3])  # line 4: request 3 of the file's one trace
        path = write_mooncake(folder / "mooncake.jsonl", reqs)
        return path, CorpusFormat("mooncake", block_size, " (--format)")

    return build


def _bailian(mutate, block_size=None):
    def build(folder: Path):
        reqs = bailian_requests(3, turns=(2, 3), seed=3)
        mutate(reqs[3])  # line 4: request 3 of the file's one trace
        path = write_bailian(folder / "bailian.jsonl", reqs)
        return path, CorpusFormat("bailian", block_size, " (--format)")

    return build


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def mutate(obj):
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value

    return mutate


# name: (builder, (line, trace, request, inner, rule), fragment of the message)
CASES = {
    "weka: the issue's prompt": (
        _weka(_set("requests", 0, "in", HUGE)),
        (2, "t1", 0, None, "prompt_too_long"),
        f"in={HUGE} prompt tokens: more than {MAX_PROMPT_TOKENS_ENV}={PROMPT}",
    ),
    "weka: a subagent call's prompt one over": (
        _weka(_set("requests", 1, "requests", 1, "in", PROMPT + 1)),
        (2, "t1", 1, 1, "prompt_too_long"),
        f"in={PROMPT + 1} prompt tokens",
    ),
    "weka: an output one over": (
        _weka(_set("requests", 2, "out", OUTPUT + 1)),
        (2, "t1", 2, None, "output_too_long"),
        f"out={OUTPUT + 1} output tokens: more than {MAX_OUTPUT_TOKENS_ENV}={OUTPUT}",
    ),
    "weka: a block longer than any prompt": (
        _weka(_set("block_size", PROMPT + 1)),
        (2, "t1", None, None, "block_size_too_large"),
        f"block_size={PROMPT + 1}",
    ),
    "weka: ids x block size past the limit": (
        _weka(_set("block_size", PROMPT // 2)),  # request 0: 3 ids of 2 Mi tokens
        (2, "t1", 0, None, "prompt_too_long"),
        f"hash_ids: 3 blocks of {PROMPT // 2} tokens are a prompt of at least {PROMPT + 1} tokens",
    ),
    "mooncake: the issue's input_length": (
        _mooncake(_set("input_length", HUGE)),
        (4, "mooncake.jsonl", 3, None, "prompt_too_long"),
        f"input_length={HUGE} prompt tokens",
    ),
    "mooncake: an output_length one over": (
        _mooncake(_set("output_length", OUTPUT + 1)),
        (4, "mooncake.jsonl", 3, None, "output_too_long"),
        f"output_length={OUTPUT + 1} output tokens",
    ),
    "mooncake: ids x block size past the limit": (
        _mooncake(_set("hash_ids", list(range(10_000, 10_000 + PROMPT // 512 + 1)))),
        (4, "mooncake.jsonl", 3, None, "prompt_too_long"),
        f"hash_ids: {PROMPT // 512 + 1} blocks of 512 tokens",
    ),
    "bailian: the issue's input_length": (
        _bailian(_set("input_length", HUGE)),
        (4, "bailian.jsonl", 3, None, "prompt_too_long"),
        f"input_length={HUGE} prompt tokens",
    ),
    "bailian: an output_length one over": (
        _bailian(_set("output_length", OUTPUT + 1)),
        (4, "bailian.jsonl", 3, None, "output_too_long"),
        f"output_length={OUTPUT + 1} output tokens",
    ),
    "bailian: a block size past the limit (--block-size)": (
        _bailian(lambda r: None, block_size=PROMPT + 1),
        (None, "bailian.jsonl", None, None, "block_size_too_large"),
        f"the corpus's block size (registry or --block-size)={PROMPT + 1}",
    ),
    "mooncake: a block size past the limit (--block-size)": (
        _mooncake(lambda r: None, block_size=PROMPT + 1),
        (None, "mooncake.jsonl", None, None, "block_size_too_large"),  # the whole file's
        f"the corpus's block size (registry or --block-size)={PROMPT + 1}",
    ),
}


def located(err: dict | TraceError) -> tuple:
    e = err.as_dict() if isinstance(err, TraceError) else err
    return (e["line"], e["trace"], e["request"], e["inner"], e["rule"])


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones too) with its sha256: what 'unchanged' means."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.fixture(autouse=True)
def _defaults(monkeypatch):
    for name in (MAX_PROMPT_TOKENS_ENV, MAX_OUTPUT_TOKENS_ENV, "WEKA_ASSETS_MAX_IDS_PER_CALL"):
        monkeypatch.delenv(name, raising=False)


def test_the_defaults_are_the_documented_ones():
    assert (max_prompt_tokens(), max_output_tokens()) == (PROMPT, OUTPUT)
    guide = (Path(__file__).resolve().parents[2] / "docs" / "operators-guide.md").read_text()
    for name, value in ((MAX_PROMPT_TOKENS_ENV, PROMPT), (MAX_OUTPUT_TOKENS_ENV, OUTPUT)):
        assert f"| `{name}` | `{value}`" in guide


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A dataset root holding the good corpora's datasets: a rejected decode must leave it as
    it is."""
    work = tmp_path_factory.mktemp("good")
    weka = write_weka(work / "weka" / "traces.jsonl", [weka_trace(f"t{i}") for i in range(3)])
    moon = write_mooncake(work / "moon" / "mooncake.jsonl", mooncake_requests(6, seed=3))
    root = work / "datasets"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WEKA_ASSETS_WORKERS", "1")
        keys = {
            "weka": decode_corpus(weka, root, **NO_DRIFT).key,
            "mooncake": decode_corpus(moon, root, fmt=CorpusFormat("mooncake"), **NO_DRIFT).key,
        }
    return {"weka": weka, "mooncake": moon, "root": root, "keys": keys}


@pytest.mark.parametrize("case", list(CASES))
def test_a_size_over_its_limit_is_one_located_error_at_the_gate(case, good, tmp_path, monkeypatch):
    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "1")
    build, where, fragment = CASES[case]
    path, fmt = build(tmp_path / "corpus")
    # the reader: one error, and only one (Weka: one record of three; Mooncake, Bailian: the
    # file is one record, which reports every bad request: the others are good)
    recs = list(iter_records(path, fmt))
    errors = [e for r in recs if r.error is not None for e in (r.error, *r.more_errors)]
    if fmt.format in ("mooncake", "bailian"):
        assert len(recs) == 1 and recs[0].trace is None and recs[0].line is None
    else:
        assert len(recs) == 3 and [r.error is None for r in recs] == [True, False, True]
    assert len(errors) == 1, [e.as_dict() for e in errors]
    err = errors[0]
    assert located(err) == where and err.location.file == str(path)
    assert fragment in err.message, err.message
    line = str(err)
    assert "\n" not in line and f"[{where[-1]}]" in line
    if where[0] is None:  # the file's own error: no line
        assert line.startswith(f"{path}, trace {where[1]!r}: [{where[-1]}]"), line
    else:
        assert f"{path}:{where[0]}, " in line
    assert f"trace {where[1]!r}" in line
    if where[2] is not None:
        assert f"request {where[2]}" in line
    # the scope report: the gate fails on it
    report = scope_report(path, fmt=fmt)
    assert not report.passed and located(report.hard_errors[0]) == where
    assert where[-1] in report.failure_reasons[0]
    # nothing is decoded, in one pass or after the report; the dataset root is as it was
    before = tree(good["root"])
    with pytest.raises(CorpusRejected) as one_pass:
        decode_corpus(path, good["root"], fmt=fmt, **NO_DRIFT)
    assert located(one_pass.value.errors[0]) == where
    with pytest.raises(CorpusRejected):
        decode_corpus(path, good["root"], report=report, fmt=fmt, **NO_DRIFT)
    assert tree(good["root"]) == before
    assert not [p for p in good["root"].iterdir() if p.name.startswith(".tmp")]


def cli_run(*argv) -> tuple[int, list[str], list[str]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue().splitlines(), err.getvalue().splitlines()


@pytest.mark.parametrize(
    "case",
    [
        "weka: a subagent call's prompt one over",
        "mooncake: the issue's input_length",
        "bailian: an output_length one over",
    ],
)
def test_the_command_line_prints_one_line_per_problem(case, good, tmp_path, monkeypatch):
    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "1")
    build, where, _ = CASES[case]
    path, fmt = build(tmp_path / "corpus")
    problem = str(next(r.error for r in iter_records(path, fmt) if r.error is not None))
    fmt_args = ["--format", fmt.format] if fmt.format in ("mooncake", "bailian") else []
    before = tree(good["root"])
    for argv in (
        ["validate", path, *fmt_args],
        ["scope-report", path, *fmt_args, "--json", tmp_path / "report.json"],
        ["decode", path, *fmt_args, "--out", good["root"]],
    ):
        rc, out, err = cli_run(*argv)
        assert rc == 1, (argv, err)
        assert not any("Traceback" in x for x in err), err
        assert [x for x in err if x.startswith(str(path))] == [problem], err
        if argv[0] == "decode":
            assert out == [] and err[-1] == (
                f"weka-assets: error: corpus rejected: 1 hard error(s), first: {problem}"
            )
    assert tree(good["root"]) == before


def _limited(limit: int):
    """Run the child under an address-space limit: a 373 GiB allocation, or any past it,
    fails at once instead of being left for the kernel's OOM killer."""

    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def test_the_issues_trace_exits_1_with_one_line_not_a_traceback(tmp_path):
    """The reproduction of the issue, as a user runs it: the console script's module in a
    process of its own, with 4 GiB of address space."""
    trace = weka_trace("big")
    trace["requests"][0]["in"] = HUGE
    path = tmp_path / "big.json"
    path.write_text(json.dumps(trace))
    mooncake = write_mooncake(
        tmp_path / "m.jsonl", [{**mooncake_requests(1)[0], "input_length": HUGE}]
    )
    for corpus, rule_line in (
        (path, f"{path}, trace 'big', request 0: [prompt_too_long] in={HUGE} prompt tokens"),
        (mooncake, f"{mooncake}:1, trace 'm.jsonl', request 0: [prompt_too_long] input_length="),
    ):
        proc = subprocess.run(
            weka_cmd("decode", corpus, "--out", tmp_path / "datasets"),
            capture_output=True,
            text=True,
            timeout=300,
            env=child_env(WEKA_ASSETS_WORKERS="1"),
            preexec_fn=_limited(4 << 30),
        )
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
        lines = [x for x in proc.stderr.splitlines() if "[prompt_too_long]" in x]
        assert len(lines) == 2 and lines[0].startswith(rule_line), proc.stderr
        assert lines[1].startswith("weka-assets: error: corpus rejected:")
        assert proc.stdout == ""
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())


def test_a_size_at_its_limit_passes_and_raising_a_limit_lets_the_corpus_through(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "1")
    at_limit = _weka(_set("requests", 1, "requests", 0, "in", PROMPT))
    path, fmt = at_limit(tmp_path / "at")
    assert scope_report(path, fmt=fmt).passed
    path, fmt = CASES["weka: an output one over"][0](tmp_path / "over")
    assert not scope_report(path, fmt=fmt).passed
    monkeypatch.setenv(MAX_OUTPUT_TOKENS_ENV, str(OUTPUT + 1))
    assert scope_report(path, fmt=fmt).passed
    monkeypatch.setenv(MAX_OUTPUT_TOKENS_ENV, "0")  # a bad setting: one line naming it
    with pytest.raises(SettingError, match=f"{MAX_OUTPUT_TOKENS_ENV}='0' must be 1 or more"):
        scope_report(path, fmt=fmt)


def test_the_limits_are_in_no_decode_key(good, tmp_path, monkeypatch):
    """Only rejecting: the same corpus decoded under other limits is the same dataset, at the
    same key, byte for byte."""
    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "1")
    monkeypatch.setenv(MAX_PROMPT_TOKENS_ENV, str(PROMPT * 4))
    monkeypatch.setenv(MAX_OUTPUT_TOKENS_ENV, "1000")  # every call's out is at most 40
    assert SizeLimits.read()[1:] == (PROMPT * 4, 1000)
    for fmt_name, fmt in (("weka", None), ("mooncake", CorpusFormat("mooncake"))):
        other = decode_corpus(
            good[fmt_name], tmp_path / "other", DecodeSettings(), fmt=fmt, **NO_DRIFT
        )
        assert other.key == good["keys"][fmt_name]
        assert tree(other.path) == tree(good["root"] / other.key)


def test_a_call_at_the_limit_expands_exactly_in_its_own_size(tmp_path, monkeypatch):
    """A prompt of 4 Mi tokens and no ids: its tail wraps around the filler, token for token as
    decoder.md defines it (filler[(tail_offset + k) % size]), in the 16 MiB of its tokens
    and nothing like an index array of 8 bytes a token beside them."""
    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "1")
    trace = {**weka_trace("at-limit"), "requests": [_call(0.0, PROMPT, OUTPUT, [])]}
    path = write_weka(tmp_path / "c" / "traces.jsonl", [trace])
    ds = open_dataset(decode_corpus(path, tmp_path / "d", **NO_DRIFT).path)
    i = next(k for k in range(ds.n_calls) if int(ds.calls["tokens_in"][k]) == PROMPT)
    assert int(ds.calls["tail_len"][i]) == PROMPT and PROMPT > ds.filler.size  # it wraps
    offset = int(ds.calls["tail_offset"][i])
    want = np.asarray(ds.filler)[(offset + np.arange(PROMPT, dtype=np.int64)) % ds.filler.size]
    tracemalloc.start()
    try:
        got = ds.expand_call(i)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(got, want)
    assert peak < 4 * PROMPT + (1 << 20), peak
    streamed = dict((k, t.copy()) for k, t in ds.expand_all() if k == i)
    assert np.array_equal(streamed[i], want)
