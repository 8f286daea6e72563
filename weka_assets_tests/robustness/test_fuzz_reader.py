"""Hostile and broken corpora: reading yields a trace or a located `TraceError` per record,
never another exception, a hang or a memory blowup; the scope report lists the hard errors.

CI runs the `ci` Hypothesis profile (fixed examples, derandomized); a long run:
`WEKA_FUZZ=long .venv/bin/python -m pytest weka_assets_tests/robustness -k fuzz`.
"""

import contextlib
import gzip
import io
import json
import tempfile
import tracemalloc
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from weka_assets import cli
from weka_assets.errors import Location, TraceError
from weka_assets.pipeline import scope_report
from weka_assets.traces.reader import iter_records
from weka_assets.traces.schema import parse_trace
from weka_assets_tests.robustness.contract import (
    check_error,
    check_record,
    check_report,
    read_and_check,
)
from weka_assets_tests.robustness.fuzzing import PROFILE, bounded, fuzz_settings, tried
from weka_assets_tests.robustness.strategies import (
    BYTES,
    corpus,
    deep_values,
    hostile_values,
    to_bytes,
    trace_like,
    valid_trace,
)

pytestmark = pytest.mark.fuzz


@contextlib.contextmanager
def workdir():
    with tempfile.TemporaryDirectory(prefix="weka-fuzz-") as tmp:
        yield Path(tmp)


@fuzz_settings(120)
@given(data=st.data())
def test_fuzz_hostile_corpora_read_as_traces_or_located_errors(data):
    """jsonl, jsonl.gz (cut short, bit-flipped, trailing junk) and folders of *.json holding
    wrong types, NaN/inf, huge and negative numbers, empty and enormous lists, deep nesting,
    unknown keys, non-UTF-8 bytes, long and unicode ids, broken lines, odd file names."""
    tried()
    with workdir() as root:
        c = data.draw(corpus(root))
        with bounded():
            read_and_check(c)


@fuzz_settings(60)
@given(data=st.data(), policy=st.sampled_from(["fail", "exclude"]))
def test_fuzz_scope_report_lists_hard_errors_instead_of_crashing(data, policy):
    tried()
    with workdir() as root:
        c = data.draw(corpus(root))
        with bounded():
            recs = list(iter_records(c.path))
            check_report(scope_report(c.path, policy), recs)
            # the command line: exit 0 or 1 with the report written, never a traceback
            out = root / "report.json"
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                rc = cli.main(["scope-report", str(c.path), "--policy", policy, "--json", str(out)])
        assert rc in (0, 1), err.getvalue()
        report = orjson.loads(out.read_bytes())
        assert report["traces"] == len(recs) and rc == (0 if report["passed"] else 1)
        assert "Traceback" not in err.getvalue()
        # each hard error (the first 20 are printed) is one whole line of its own
        lines = set(err.getvalue().splitlines())
        for e in report["hard_errors"][:20]:
            where = Location(*(e[k] for k in ("file", "line", "trace", "request", "inner")))
            assert f"{where.describe()}: [{e['rule']}] {e['message']}" in lines, e


@fuzz_settings(200)
@given(raw=st.one_of(trace_like, hostile_values, deep_values))
def test_fuzz_parse_trace_raises_only_located_trace_errors(raw):
    """Python values straight into `parse_trace` (NaN, inf, ints past 2**64, lone surrogates
    are all possible here, unlike in JSON text)."""
    tried()
    with bounded():
        try:
            trace, dropped = parse_trace(raw, "in-memory.jsonl", 3)
        except TraceError as exc:
            check_error(exc, "in-memory.jsonl", 3, raw, stored=False)
            return
    assert isinstance(raw, dict) and trace.id == raw["id"] and dropped >= 0


@fuzz_settings(100)
@given(raw=st.one_of(trace_like, valid_trace()), style=st.sampled_from(["orjson", "python"]))
def test_fuzz_one_nearly_valid_trace_is_reported_not_crashed_on(raw, style):
    """A trace with a few fields gone wrong, alone in a .jsonl: whatever the schema lets
    through reaches the scope analysis, which must report on it (or reject it with a located
    TraceError), never crash: e.g. numbers the schema accepts."""
    tried()
    data = to_bytes(raw, style)
    try:
        written = json.loads(data)  # what the line holds (NaN, big ints and all)
    except ValueError:
        written = BYTES
    with workdir() as root:
        path = root / "one.jsonl"
        path.write_bytes(data.replace(b"\n", b" ") + b"\n")
        with bounded():
            recs = list(iter_records(path))
            assert len(recs) == 1
            check_record(recs[0], written if b"\n" not in data else BYTES)
            report = scope_report(path)
        check_report(report, recs)
        for e in report.hard_errors:
            assert (e["file"], e["line"]) == (str(path), 1), e


@pytest.mark.parametrize("depth", [1_000, 1_100, 200_000])
@pytest.mark.parametrize(
    "shape",
    [
        "{{}}",  # the whole record
        '{{"id": "x", "unknown": {}}}',  # an ignored key
        '{{"id": "x", "models": ["m"], "block_size": 64, "hash_id_scope": "local", '
        '"requests": [{{"t": 0, "type": "n", "model": "m", "in": 0, "out": 0, "x": {}}}]}}',
    ],
)
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deeply_nested_json_is_a_located_error_not_a_crash(tmp_path, depth, shape, kind):
    """Deep nesting anywhere in a record (past the JSON parsers' limits of about 1000 levels):
    that record is a TraceError at its line, the records around it are read, nothing raises."""
    nested = (
        ("[" * depth + "]" * depth) if kind == "list" else ('{"k":' * depth + "0" + "}" * depth)
    )
    body = shape.format(nested) if shape != "{{}}" else nested
    path = tmp_path / "c.jsonl"
    path.write_bytes(_small_trace("a") + b"\n" + body.encode() + b"\n" + _small_trace("b") + b"\n")
    recs = list(iter_records(path))
    assert [r.line for r in recs] == [1, 2, 3]
    assert recs[0].trace.id == "a" and recs[2].trace.id == "b"
    check_record(recs[1])
    if depth > 1024:  # past orjson's limit too: no parser reads it
        check_error(recs[1].error, str(path), 2)
    check_report(scope_report(path), recs)


@pytest.mark.parametrize(
    "line",
    [
        b'{"id": "\xff"}',
        b'{"id": "x\xc3\x28", "models": ["m"]}',
        b'{"id":"x","models":["m\x80"],"block_size":64,"hash_id_scope":"local","requests":[]}',
        b'{"id":"x","models":["m"],"block_size":64,"hash_id_scope":"local",'
        b'"requests":[{"t":0,"type":"n","model":"\xed\xa0\x80","in":0,"out":0}]}',
        b'{"id": "\\ud800"}',  # an escaped lone surrogate: valid JSON syntax, not UTF-8
        b"\xef\xbb\xbf{}",  # a byte-order mark
        b"\x80",
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_non_utf8_bytes_are_a_located_error_not_a_crash(tmp_path, line, gz):
    """Bytes that are not UTF-8, inside a string or anywhere: that record is a TraceError at
    its line; the records around it are read."""
    body = _small_trace("a") + b"\n" + line + b"\n" + _small_trace("b") + b"\n"
    path = tmp_path / ("c.jsonl.gz" if gz else "c.jsonl")
    path.write_bytes(gzip.compress(body) if gz else body)
    recs = list(iter_records(path))
    assert [r.line for r in recs] == [1, 2, 3]
    assert recs[0].trace.id == "a" and recs[2].trace.id == "b"
    check_error(recs[1].error, str(path), 2)
    check_report(scope_report(path), recs)


@pytest.mark.parametrize("content", [b"", b"  \n", b"\n\n", b"\x00"])
def test_a_folders_empty_or_blank_json_file_is_a_located_error(tmp_path, content):
    """Every *.json file of a folder is one record: an empty or blank one is an error naming
    it (a corpus that silently loses a file reports the wrong trace count)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.json").write_bytes(_small_trace("a"))
    (folder / "b.json").write_bytes(content)
    (folder / "c.json").write_bytes(_small_trace("c"))
    recs = list(iter_records(folder))
    assert [Path(r.file).name for r in recs] == ["a.json", "b.json", "c.json"], recs
    assert recs[0].trace.id == "a" and recs[2].trace.id == "c"
    check_error(recs[1].error, str(folder / "b.json"), None)
    check_report(scope_report(folder), recs)


def _small_trace(tid: str) -> bytes:
    call = {"t": 0.0, "type": "n", "model": "m", "in": 130, "out": 1, "hash_ids": [1, 2]}
    return orjson.dumps(
        {"id": tid, "models": ["m"], "block_size": 64, "hash_id_scope": "local", "requests": [call]}
    )


def _enormous(kind: str, n: int) -> tuple[bytes, str | None]:
    """One enormous record and the rule expected (None: it parses). One-token blocks: a call
    of n ids (up to 3 million) claims n tokens, within WEKA_ASSETS_MAX_PROMPT_TOKENS."""
    call = {"t": 0.0, "type": "n", "model": "m", "in": n, "out": 1, "hash_ids": []}
    base = {"id": "big", "models": ["m"], "block_size": 1, "hash_id_scope": "local"}
    if kind == "hash_ids":
        call["hash_ids"] = list(range(1, n + 1))
        return orjson.dumps({**base, "requests": [call]}), None
    if kind == "hash_ids_one_bad":
        call["hash_ids"] = list(range(1, n + 1))
        call["hash_ids"][n // 2] = -5
        return orjson.dumps({**base, "requests": [call]}), "negative_number"
    if kind == "requests":
        small = {**call, "in": 1, "hash_ids": [1]}
        return orjson.dumps({**base, "requests": [small] * (n // 10)}), None
    if kind == "id":
        return orjson.dumps({**base, "id": "é" * n, "requests": [call]}), None
    if kind == "unknown_keys":
        extra = {f"k{i}": [i] for i in range(n // 10)}
        return orjson.dumps({**base, **extra, "requests": [call]}), None
    if kind == "models":
        return orjson.dumps({**base, "models": ["m"] * n, "requests": [call]}), None
    # kind == "depth": nesting far past any parser's limit, in an unknown key
    return b'{"id":"big","x":' + b"[" * n + b"]" * n + b"}", "invalid_json"


# sizes of the enormous record: items (ids, keys, characters, nesting levels)
ENORMOUS = [100_000, 250_000] if PROFILE == "ci" else [100_000, 1_000_000, 3_000_000]


@fuzz_settings(6)
@given(
    kind=st.sampled_from(
        ["hash_ids", "hash_ids_one_bad", "requests", "id", "unknown_keys", "models", "depth"]
    ),
    n=st.sampled_from(ENORMOUS),
    gz=st.booleans(),
)
def test_fuzz_enormous_records_are_read_in_bounded_memory(kind, n, gz):
    """A record of millions of ids, keys or characters between two small ones: read in memory
    bounded by a small multiple of its size (Python objects included), nothing lost around it."""
    tried()
    big, rule = _enormous(kind, n)
    body = b"\n".join([_small_trace("a"), big, _small_trace("b")]) + b"\n"
    with workdir() as root:
        path = root / ("c.jsonl.gz" if gz else "c.jsonl")
        path.write_bytes(gzip.compress(body, compresslevel=1) if gz else body)
        tracemalloc.start()
        try:
            with bounded():
                recs = [
                    (r.line, r.trace.id if r.trace else None, r.error) for r in iter_records(path)
                ]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    middle = None if rule else ("é" * n if kind == "id" else "big")
    assert [(line, tid) for line, tid, _ in recs] == [(1, "a"), (2, middle), (3, "b")]
    err = recs[1][2]
    if rule is None:
        assert err is None, err
    else:
        assert err is not None and err.rule == rule and err.location.line == 2, err
    limit = 64 * 2**20 + 40 * len(big)
    assert peak <= limit, f"peak {peak / 2**20:.0f} MiB for a {len(big) / 2**20:.1f} MiB record"


@pytest.mark.parametrize(
    "where",
    ["parent in", "inner in", "block_size", "parent out", "tool_tokens", "duration_ms"],
)
@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_numbers_past_int64_are_reported_not_crashes(tmp_path, where, value):
    """JSON integers in [2**63, 2**64) are valid JSON (orjson reads them as Python ints), and
    the schema only asks for `int >= 0`: the scope report must still come back (a hard error
    naming the place, or a report), never an OverflowError."""
    call = {"t": 0.0, "type": "n", "model": "m", "in": 130, "out": 1, "hash_ids": [1, 2]}
    inner = {**call, "t": 0.5}
    sub = {
        "t": 1.0, "type": "subagent", "agent_id": "a1", "subagent_type": "Explore",
        "status": "completed", "models": ["m"], "requests": [inner], "duration_ms": 5,
    }  # fmt: skip
    trace = {"id": "t", "models": ["m"], "block_size": 64, "hash_id_scope": "local"}
    trace["requests"] = [call, sub, {**call, "t": 2.0, "hash_ids": [1, 2, 3], "in": 200}]
    target, field = {
        "parent in": (call, "in"),
        "inner in": (inner, "in"),
        "block_size": (trace, "block_size"),
        "parent out": (call, "out"),
        "tool_tokens": (trace, "tool_tokens"),
        "duration_ms": (sub, "duration_ms"),
    }[where]
    target[field] = value
    path = tmp_path / "c.jsonl"
    path.write_bytes(to_bytes(trace, "orjson") + b"\n")
    recs = list(iter_records(path))
    assert len(recs) == 1
    report = scope_report(path)  # must not raise
    check_report(report, recs)
    for e in report.hard_errors:
        assert (e["file"], e["line"], e["trace"]) == (str(path), 1, "t")
