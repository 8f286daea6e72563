"""Limits that protect the machine, with real files and processes.

- A 50 MB single trace (long hash-id lists) is read by `weka-assets validate` in a process
  whose peak RSS (ru_maxrss, from the kernel) stays below ten times the trace's size.
- With `WEKA_ASSETS_MAX_TRACE_BYTES` below a line's length, that line becomes a
  `trace_too_large` error naming its file and line, the other traces are still read, and the
  overlong line is skipped in chunks: reading it costs no more memory than a tiny corpus.
- With `WEKA_ASSETS_MAX_IDS_PER_CALL` below a call's id count, that trace becomes a
  `too_many_ids` error naming file, line, trace, request and inner index.

The several-GB version of the first check is too slow for CI: `benchmarks/memory.py` (see
docs/reliability.md).
"""

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from weka_assets.synthetic import iter_corpus
from weka_assets.traces.reader import (
    MAX_IDS_PER_CALL_ENV,
    MAX_TRACE_BYTES_ENV,
    iter_records,
)
from weka_assets_tests.robustness.faults import Group, child_env, weka_cmd

MB = 1 << 20
# Runs a command and prints its exit code, output and peak RSS: RUSAGE_CHILDREN of this small
# wrapper covers exactly that one command (pytest's own would hold every earlier child's).
PEAK_RSS = r"""
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
print(json.dumps({"rc": p.returncode, "out": p.stdout.decode(errors="replace"), "peak": peak}))
"""


def big_trace(target_bytes: int, trace_id: str = "big-0") -> bytes:
    """One trace of growing calls (each extends the last: ids 0..n-1), about `target_bytes`
    of JSON on one line; built from slices of one id string, so it takes well under a second."""
    calls = 60
    per_id = 6.2  # bytes of "123456," on average over these lists
    step = int(target_bytes / per_id / (calls * (calls + 1) / 2))
    n_max = step * calls
    ids = np.arange(n_max).astype(str)
    joined = ",".join(ids.tolist()).encode()
    ends = np.cumsum(np.char.str_len(ids) + 1) - 1  # byte offset after each id
    # 8-token blocks: its longest calls (about 280k ids) stay within the default prompt limit
    head = {"id": trace_id, "models": ["m"], "block_size": 8, "hash_id_scope": "local"}
    parts = [orjson.dumps(head)[:-1], b',"requests":[']
    t = 0.0
    for k in range(1, calls + 1):
        n = step * k
        call = {"t": t, "type": "n", "model": "m", "in": n * 8, "out": 100}
        parts += [b"," if k > 1 else b"", orjson.dumps(call)[:-1], b',"hash_ids":[']
        parts += [joined[: ends[n - 1]], b"]}"]
        t += 10.0
    parts.append(b"]}\n")
    return b"".join(parts)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    work = tmp_path_factory.mktemp("limits")
    big = big_trace(50 * MB)
    small = [orjson.dumps(t) + b"\n" for t in iter_corpus("semianalysis", 2, 3, "small")]
    out = {
        "script": work / "peak_rss.py",
        "big": work / "big.jsonl",  # one 50 MB trace
        "tiny": work / "tiny.jsonl",  # the baseline: two small traces
        "mixed": work / "mixed.jsonl",  # small, big, small
    }
    out["script"].write_text(PEAK_RSS)
    out["big"].write_bytes(big)
    out["tiny"].write_bytes(b"".join(small))
    out["mixed"].write_bytes(small[0] + big + small[1])
    return out


def peak_rss(script: Path, cmd: list[str], tmp_path: Path, **env) -> dict:
    """Run `cmd` (one process: no worker processes) under the wrapper; its rc, output, peak."""
    log = tmp_path / f"rss-{len(list(tmp_path.glob('rss-*')))}.log"
    with Group(
        [sys.executable, str(script), *cmd], child_env(WEKA_ASSETS_WORKERS="1", **env), log
    ) as g:
        assert g.wait(300) == 0, g.output()
        return json.loads(g.output().strip().splitlines()[-1])


def test_a_50_mb_trace_reads_in_bounded_memory(files, tmp_path, record_property):
    size = files["big"].stat().st_size
    assert 45 * MB < size < 60 * MB
    base = peak_rss(files["script"], weka_cmd("validate", files["tiny"]), tmp_path)
    big = peak_rss(files["script"], weka_cmd("validate", files["big"]), tmp_path)
    assert base["rc"] == 0 and big["rc"] == 0, big["out"]
    assert "1 valid trace(s), 60 calls" in big["out"]
    record_property("trace_mb", round(size / MB, 1))
    record_property("peak_rss_mb", round(big["peak"] / MB, 1))
    record_property("baseline_rss_mb", round(base["peak"] / MB, 1))
    assert big["peak"] < 10 * size, (
        f"peak RSS {big['peak'] / MB:.0f} MB for a {size / MB:.0f} MB trace"
    )


def test_an_overlong_line_is_one_located_error_and_is_never_held(files, tmp_path, monkeypatch):
    limit = 4 * MB
    # in process: the other traces are read, the long one is one error with its line number
    monkeypatch.setenv(MAX_TRACE_BYTES_ENV, str(limit))
    gz = tmp_path / "mixed.jsonl.gz"
    lines = files["mixed"].read_bytes().splitlines(keepends=True)
    gz.write_bytes(gzip.compress(b"".join(lines[:1] + [lines[1][: 6 * MB] + b"\n"] + lines[2:]), 1))
    for path in (files["mixed"], gz):
        recs = list(iter_records(path))
        assert [r.line for r in recs] == [1, 2, 3]
        assert recs[0].trace is not None and recs[2].trace is not None
        err = recs[1].error
        assert err is not None and err.rule == "trace_too_large"
        assert (err.location.file, err.location.line) == (str(path), 2)
        assert f"{MAX_TRACE_BYTES_ENV}={limit}" in err.message
    monkeypatch.delenv(MAX_TRACE_BYTES_ENV)

    # the command line: one error line naming file and line, exit 1; and skipping the 50 MB
    # line costs about what reading two small traces does (held whole, it would be 50 MB more)
    env = {MAX_TRACE_BYTES_ENV: str(limit)}
    base = peak_rss(files["script"], weka_cmd("validate", files["tiny"]), tmp_path, **env)
    mixed = peak_rss(files["script"], weka_cmd("validate", files["mixed"]), tmp_path, **env)
    assert mixed["rc"] == 1, mixed["out"]
    assert f"{files['mixed']}:2" in mixed["out"] and "[trace_too_large]" in mixed["out"]
    assert "2 valid trace(s)" in mixed["out"] and "1 hard error(s)" in mixed["out"]
    assert mixed["peak"] - base["peak"] < 20 * MB, (mixed["peak"] / MB, base["peak"] / MB)


def _with_a_long_subagent_call(path: Path) -> tuple[dict, int, int, int, int]:
    """A small corpus whose trace with subagents has one inner call made longer than any other
    call of the corpus. Returns that trace, its line, the request and inner index of the long
    call, and the longest other call's id count."""
    traces = list(iter_corpus("semianalysis", 12, 1, "small"))
    longest = max(len(c["hash_ids"]) for t in traces for c in _calls(t))
    k = next(i for i, t in enumerate(traces) if any(r["type"] == "subagent" for r in t["requests"]))
    trace = traces[k]
    request = next(i for i, r in enumerate(trace["requests"]) if r["type"] == "subagent")
    inner = 2
    call = trace["requests"][request]["requests"][inner]
    top = max(max(c["hash_ids"]) for c in _calls(trace)) + 1
    call["hash_ids"] += list(range(top, top + longest + 5 - len(call["hash_ids"])))
    call["in"] = 64 * len(call["hash_ids"])
    path.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in traces))
    return trace, k + 1, request, inner, longest


def _calls(trace: dict):
    for r in trace["requests"]:
        if r["type"] == "subagent":
            yield from r["requests"]
        else:
            yield r


def test_too_many_ids_in_one_call_names_request_and_inner(tmp_path, monkeypatch):
    path = tmp_path / "long-call.jsonl"
    trace, line, request, inner, longest = _with_a_long_subagent_call(path)
    monkeypatch.setenv(MAX_IDS_PER_CALL_ENV, str(longest))
    recs = list(iter_records(path))
    errors = [r.error for r in recs if r.error is not None]
    assert len(recs) == 12 and len(errors) == 1, [e.as_dict() for e in errors]
    err = errors[0]
    assert err.rule == "too_many_ids"
    assert err.as_dict() | {"message": None} == {
        "file": str(path),
        "line": line,
        "trace": trace["id"],
        "request": request,
        "inner": inner,
        "rule": "too_many_ids",
        "message": None,
    }
    assert f"{MAX_IDS_PER_CALL_ENV}={longest}" in err.message
    # a parent call over the limit names its request and no inner index
    monkeypatch.setenv(MAX_IDS_PER_CALL_ENV, "3")
    first = next(r.error for r in iter_records(path) if r.error is not None)
    assert first.rule == "too_many_ids" and first.location.line == 1
    assert (first.location.request, first.location.inner) == (0, None)
