"""Fuzzing the declared sizes: a call's prompt and output lengths and the block size, in every
format (Weka, Mooncake, Bailian), drawn around and far beyond their limits (0, the limit, one over, 2**31, 2**63 - 1,
past int64, negative, floats, strings, booleans, nulls, lists).

Whatever is drawn, the outcome is a clean located error naming the rule the values call for
(`prompt_too_long`, `output_too_long`, `block_size_too_large`, or the schema's own rules), or
a corpus that passes the gate and goes through the chain (decode, the unbounded replay, the
capacity sweep, the expansion of every call, the live replay's plan and prediction); never a
MemoryError, an OverflowError or another exception; and the memory traced (`tracemalloc`,
which sees numpy's arrays) stays small: nothing near a declared size is ever allocated.

The chain runs under small limits (4,096 prompt and 1,024 output tokens), so that a call at
its limit is cheap to take all the way through; the gate alone runs under the defaults.
"""

import contextlib
import io
import json
import tempfile
import tracemalloc
from pathlib import Path

import orjson
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from weka_assets import cli
from weka_assets.decoding.dataset import open_dataset
from weka_assets.errors import CorpusRejected
from weka_assets.pipeline import decode_corpus, replay, scope_report
from weka_assets.replay.capacity import capacity_curve
from weka_assets.replay.live import PrefixPredictor, build_plan
from weka_assets.traces.reader import (
    MAX_OUTPUT_TOKENS_ENV,
    MAX_PROMPT_TOKENS_ENV,
    CorpusFormat,
    iter_records,
)
from weka_assets.traces.schema import INT64_MAX
from weka_assets_tests.robustness.contract import check_error
from weka_assets_tests.robustness.fuzzing import bounded, fuzz_settings, tried
from weka_assets_tests.robustness.strategies import BYTES

pytestmark = pytest.mark.fuzz

MiB = 1 << 20
DEFAULT = (4 << 20, 1 << 20)  # (prompt, output) limits by default
SMALL = (4096, 1024)
SCHEMA = {"schema", "missing_field", "negative_number", "not_positive", "number_too_large"}
PAST_INT64 = {"number_too_large", "invalid_json", "schema"}  # orjson reads up to 2**64 - 1


def sizes(limit: int):
    """A declared size: anything a hostile or broken file may hold where a count belongs."""
    special = [0, 1, limit - 1, limit, limit + 1, 2 * limit, 2**31 - 1, 2**31, 2**32, 2**53 + 1]
    special += [100_000_000_000, 2**62, INT64_MAX]
    return st.one_of(
        st.sampled_from(special),
        st.integers(limit - 2, limit + 2),
        st.integers(0, INT64_MAX),
        st.integers(-(2**63), -1),
        st.sampled_from([2**63, 2**64 - 1, 2**64, 10**30]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([float(limit), 1e11, 0.5, -0.0]),
        st.sampled_from([str(limit), "1e11", "", "NaN"]),
        st.booleans(),
        st.none(),
        st.just([limit]),
    )


def positive_block_sizes(limit: int):
    """A Mooncake corpus's block size (the registry and --block-size take positive integers
    only): real ones, and ones at and past the limit."""
    return st.sampled_from([1, 16, 64, 512, limit - 1, limit, limit + 1, 2**31, INT64_MAX])


def verdict(value, limit: int, rule: str, *, block: bool = False) -> set[str] | None:
    """The rules one field's value may give (None: acceptable)."""
    if value is None:
        return {"missing_field"}
    if isinstance(value, bool) or not isinstance(value, int):
        return {"schema"}
    if value < 0 or (block and value == 0):
        return {"not_positive" if block else "negative_number", "schema"}
    if value > INT64_MAX:
        return PAST_INT64
    if value > limit:
        return {rule}
    return None


def expected(fields: dict, n_ids: int, limits: tuple[int, int]) -> set[str] | None:
    """The rules the record may fail with, first come first (None: it must pass the gate).
    `fields`: prompt, output, block (the values as written)."""
    prompt, output = limits
    got = {
        "block": verdict(fields["block"], prompt, "block_size_too_large", block=True),
        "prompt": verdict(fields["prompt"], prompt, "prompt_too_long"),
        "output": verdict(fields["output"], output, "output_too_long"),
    }
    schema = set().union(*(v for v in got.values() if v and v & (SCHEMA | PAST_INT64)))
    if schema:  # the schema speaks first (any of the bad fields' rules)
        return schema
    # then the sizes, in the order check_sizes looks at them
    if got["block"]:
        return got["block"]
    if got["prompt"]:
        return got["prompt"]
    bs, n_in = fields["block"], fields["prompt"]
    if n_ids and (n_ids - 1) * bs >= prompt:
        return {"prompt_too_long"}
    if got["output"]:
        return got["output"]
    if n_ids > -(-n_in // bs):  # more ids than the prompt has blocks: the scope analysis
        return {"hash_ids_over"}
    return None


# ---- corpora: a good record, then the fuzzed one ---------------------------------------------


def weka_corpus(folder: Path, fields: dict, n_ids: int, inner: bool) -> tuple[Path, dict]:
    """Two traces; the second's call (its parent's, or inside a subagent) holds the values."""

    def call(n, out, ids):
        return {"type": "n", "t": 0.0, "model": "m", "in": n, "out": out, "hash_ids": ids}

    good = {"id": "good", "models": ["m"], "block_size": 64, "hash_id_scope": "local"}
    good["requests"] = [call(200, 20, [0, 1, 2])]
    bad = {"id": "fuzzed", "models": ["m"], "block_size": fields["block"]}
    bad["hash_id_scope"] = "local"
    if inner:  # the parent mints id 0, the subagent 1.. (its own ids from the base: a reset)
        target = call(fields["prompt"], fields["output"], list(range(1, n_ids + 1)))
        sub = {"type": "subagent", "t": 0.0, "agent_id": "a", "subagent_type": "Explore"}
        sub.update(status="completed", models=["m"], requests=[target])
        bad["requests"] = [call(10, 1, [0]), sub]
    else:
        bad["requests"] = [call(fields["prompt"], fields["output"], list(range(n_ids)))]
    bad = {k: v for k, v in bad.items() if v is not None}  # a null key reads as absent
    path = folder / "traces.jsonl"
    path.write_bytes(b"".join(dumps(t) + b"\n" for t in (good, bad)))
    return path, bad


def mooncake_corpus(folder: Path, fields: dict, n_ids: int) -> tuple[Path, dict]:
    good = GOOD_MOONCAKE
    bad = {"timestamp": 10, "input_length": fields["prompt"], "output_length": fields["output"]}
    bad["hash_ids"] = list(range(1000, 1000 + n_ids))
    path = folder / "mooncake.jsonl"
    path.write_bytes(dumps(good) + b"\n" + dumps(bad) + b"\n")
    return path, bad


# one id: whatever the block size, it claims no more than the prompt
GOOD_MOONCAKE = {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0]}
REQUEST_FORMATS = ("mooncake", "bailian")  # a file is one trace of requests, one record


def bailian_corpus(folder: Path, fields: dict, n_ids: int) -> tuple[Path, dict]:
    """Two sessions of one request each; the second's holds the values."""
    links = {"parent_chat_id": -1, "type": "text", "turn": 1}
    good = {**GOOD_MOONCAKE, "chat_id": 1, **links}
    bad = {"chat_id": 2, **links, "timestamp": 10, "input_length": fields["prompt"]}
    bad |= {"output_length": fields["output"], "hash_ids": list(range(1000, 1000 + n_ids))}
    path = folder / "bailian.jsonl"
    path.write_bytes(dumps(good) + b"\n" + dumps(bad) + b"\n")
    return path, bad


def dumps(obj) -> bytes:
    """JSON text of `obj`; integers past 64 bits written as they are (orjson refuses them)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj).encode()


@st.composite
def cases(draw, limits: tuple[int, int]):
    """(format, the fields' values, ids of the fuzzed call, in a subagent?). Some fields (none,
    one, two or all three) get a hostile value; the others a benign one (at most the limit),
    so that every rule, and success, are drawn often."""
    prompt, output = limits
    fmt = draw(st.sampled_from(["weka", *REQUEST_FORMATS]))
    hostile = {
        "prompt": sizes(prompt),
        "output": sizes(output),
        "block": sizes(prompt) if fmt == "weka" else positive_block_sizes(prompt),
    }
    benign = {
        "prompt": st.one_of(st.integers(0, prompt), st.just(prompt)),
        "output": st.one_of(st.integers(0, output), st.just(output)),
        "block": st.sampled_from([16, 64, 512]),
    }
    chosen = draw(st.sets(st.sampled_from(sorted(hostile)), max_size=3))
    fields = {k: draw(hostile[k] if k in chosen else benign[k]) for k in sorted(hostile)}
    n_ids = draw(st.integers(0, 6))
    inner = fmt == "weka" and draw(st.booleans())
    return fmt, fields, n_ids, inner


def write(root: Path, case) -> tuple[Path, CorpusFormat, dict]:
    fmt, fields, n_ids, inner = case
    if fmt == "weka":
        path, raw = weka_corpus(root, fields, n_ids, inner)
        return path, CorpusFormat("weka"), raw
    corpus = mooncake_corpus if fmt == "mooncake" else bailian_corpus
    path, raw = corpus(root, fields, n_ids)
    return path, CorpusFormat(fmt, fields["block"], " (--format)"), raw


@contextlib.contextmanager
def traced(limit_bytes: int):
    """Fail if the memory traced in the block (numpy's arrays included) peaks above the limit."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit_bytes, f"peak {peak / MiB:.1f} MiB traced (limit {limit_bytes / MiB} MiB)"


def good_line_fails(fmt: CorpusFormat, limits) -> bool:
    """A Mooncake or Bailian corpus's block size is the whole file's: past the limit, the file
    is one error of its own (no line), the good line failing with the fuzzed one."""
    return fmt.format in REQUEST_FORMATS and fmt.block_size > limits[0]


def gate(path: Path, fmt: CorpusFormat, raw: dict, case, limits) -> set[str] | None:
    """Read and report the corpus; check the outcome against what the values call for.
    Returns the rules the corpus may fail with (None: it passed)."""
    _, fields, n_ids, _ = case
    want = {1: None, 2: expected(fields, n_ids, limits)}
    recs = list(iter_records(path, fmt))
    if fmt.format in REQUEST_FORMATS:
        request_records(path, fmt, recs, want, limits)
    else:
        weka_records(path, recs, raw, want)
    report = scope_report(path, fmt=fmt)
    bad = sorted(line for line, rules in want.items() if rules is not None)
    if not bad:
        assert report.passed and not report.hard_errors, report.failure_reasons
        event(f"{fmt.format}: passes the gate")
        return None
    assert not report.passed and report.hard_errors, report.failure_reasons
    if good_line_fails(fmt, limits):  # the file's own error, and nothing else
        (err,) = report.hard_errors
        assert (err["rule"], err["line"], err["request"]) == ("block_size_too_large", None, None)
        assert (err["file"], err["trace"]) == (str(path), path.name), err
        event(f"{fmt.format}: block_size_too_large (the file's)")
        return {"block_size_too_large"}
    assert [e["line"] for e in report.hard_errors] == bad, report.hard_errors
    for err in report.hard_errors:
        assert err["rule"] in want[err["line"]] and err["file"] == str(path), (err, want)
        if fmt.format in REQUEST_FORMATS:  # request k of the file's one trace, on line k + 1
            assert (err["trace"], err["request"]) == (path.name, err["line"] - 1), err
    rules = set().union(*(want[line] for line in bad))
    event(f"{fmt.format}: {' or '.join(sorted(rules))}")
    return rules


SCOPE_ONLY = {"hash_ids_over"}  # the scope analysis's rule, not the reader's


def weka_records(path: Path, recs, raw: dict, want: dict) -> None:
    """A Weka file: one record per line, each a trace or its first error."""
    assert [r.line for r in recs] == [1, 2], recs
    for rec in recs:
        if rec.error is None:
            assert want[rec.line] in (None, SCOPE_ONLY), (rec.line, want)
            continue
        # the Weka trace's id and request indices are checked against what was written
        check_error(rec.error, str(path), rec.line, raw)
        assert want[rec.line] not in (None, SCOPE_ONLY), (rec.error, want)
        assert rec.error.rule in want[rec.line], (rec.error, want)
        if rec.error.rule in ("prompt_too_long", "output_too_long", "block_size_too_large"):
            assert rec.error.location.trace == "fuzzed", rec.error
            if rec.error.rule != "block_size_too_large":
                assert rec.error.location.request is not None, rec.error


def request_records(path: Path, fmt: CorpusFormat, recs, want: dict, limits) -> None:
    """A Mooncake or Bailian file is one trace, one record: a table of its requests, or the errors of its
    bad lines (each at its line, as request line - 1 of the trace named after the file)."""
    assert len(recs) == 1 and recs[0].line is None and recs[0].file == str(path), recs
    rec = recs[0]
    errors = [] if rec.error is None else [rec.error, *rec.more_errors]
    assert (rec.trace is None) == bool(errors), rec
    if good_line_fails(fmt, limits):  # checked before any line is read: no line named
        assert [(e.rule, e.location.line, e.location.request) for e in errors] == [
            ("block_size_too_large", None, None)
        ], errors
        check_error(errors[0], str(path), None, BYTES)
        assert errors[0].location.trace == path.name
        return
    reader_bad = [n for n, rules in want.items() if rules not in (None, SCOPE_ONLY)]
    assert [e.location.line for e in errors] == reader_bad, (errors, want)
    for err in errors:
        line = err.location.line
        check_error(err, str(path), line, BYTES)
        assert err.rule in want[line], (err, want)
        assert (err.location.trace, err.location.request) == (path.name, line - 1), err
    if rec.trace is not None:
        assert rec.trace.n_requests == 2 and rec.trace.line.tolist() == [1, 2]


def at(limits, over: int = 0, fmt: str = "weka", inner: bool = False):
    """A case with the prompt and the output at their limits (plus `over`)."""
    block = 64 if fmt == "weka" else 512
    fields = {"prompt": limits[0] + over, "output": limits[1] + over, "block": block}
    return (fmt, fields, 3, inner)


@fuzz_settings(150)
@given(case=cases(DEFAULT))
@example(case=at(DEFAULT))
@example(case=at(DEFAULT, 1, "mooncake"))
@example(case=at(DEFAULT, 1, "bailian"))
@example(case=("weka", {"prompt": 100_000_000_000, "output": 10, "block": 64}, 2, False))
def test_fuzz_declared_sizes_at_the_gate(case, monkeypatch):
    """Under the default limits: the gate's verdict, as a report and on the command line,
    never more than a few MiB traced, whatever the sizes say."""
    tried()
    for name in (MAX_PROMPT_TOKENS_ENV, MAX_OUTPUT_TOKENS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "1")
    with tempfile.TemporaryDirectory(prefix="weka-sizes-") as tmp, bounded():
        path, fmt, raw = write(Path(tmp), case)
        with traced(32 * MiB):
            want = gate(path, fmt, raw, case, DEFAULT)
        args = ["validate", str(path), "--format", fmt.format]
        if fmt.format in REQUEST_FORMATS:
            args += ["--block-size", str(fmt.block_size)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(args)
        assert "Traceback" not in err.getvalue()
        if want is None or want == {"hash_ids_over"}:  # validate checks the schema only
            assert rc == 0, err.getvalue()
        else:
            lines = [x for x in err.getvalue().splitlines() if x.startswith(str(path))]
            if good_line_fails(fmt, DEFAULT):  # the file's own error: no line
                where = [str(path)]
            elif expected(case[1], case[2], DEFAULT) == {"hash_ids_over"}:
                where = []
            else:
                where = [f"{path}:2"]
            assert rc == 1 and [x.split(",")[0] for x in lines] == where, err.getvalue()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """One dataset root for every example (each corpus has its own decode key); the filler is
    built once, before anything is traced."""
    root = tmp_path_factory.mktemp("fuzz-datasets")
    good = root.parent / "warm.jsonl"
    good.write_bytes(dumps(GOOD_MOONCAKE) + b"\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WEKA_ASSETS_WORKERS", "1")
        decode_corpus(good, root, fmt=CorpusFormat("mooncake"), measure_drift=False)
    return root


def chain(path: Path, fmt: CorpusFormat, root: Path) -> None:
    """Everything after the gate that sizes arrays from a call: decode, the unbounded replay,
    the capacity sweep, every call expanded, the live replay's plan and its prediction."""
    report = scope_report(path, fmt=fmt)
    out = decode_corpus(path, root, report=report, fmt=fmt, measure_drift=False)
    ds = open_dataset(out.path)
    result, _ = replay(ds)
    assert result.calls == ds.n_calls
    capacity_curve(ds, [1, 4])
    plan = build_plan(ds, max_context=SMALL[0] + 16)
    predictor = PrefixPredictor(32)
    for i in range(ds.n_calls):
        tokens = ds.expand_call(i)
        assert tokens.size == int(ds.calls["tokens_in"][i])
        predictor.send(i, tokens)
    assert plan.max_tokens.max(initial=1) <= 16


@fuzz_settings(80)
@given(case=cases(SMALL))
@example(case=at(SMALL))
@example(case=at(SMALL, fmt="mooncake"))
@example(case=at(SMALL, fmt="bailian"))
@example(case=at(SMALL, inner=True))
@example(case=at(SMALL, 1, inner=True))
def test_fuzz_declared_sizes_through_the_chain(case, datasets, monkeypatch):
    """Under small limits: what passes the gate goes through the whole chain in a few MiB;
    what does not is a located error and nothing is decoded."""
    tried()
    monkeypatch.setenv(MAX_PROMPT_TOKENS_ENV, str(SMALL[0]))
    monkeypatch.setenv(MAX_OUTPUT_TOKENS_ENV, str(SMALL[1]))
    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "1")
    with tempfile.TemporaryDirectory(prefix="weka-sizes-") as tmp, bounded():
        path, fmt, raw = write(Path(tmp), case)
        before = sorted(p.name for p in datasets.iterdir())
        with traced(64 * MiB):
            want = gate(path, fmt, raw, case, SMALL)
            if want is None:
                chain(path, fmt, datasets)
            else:
                with pytest.raises(CorpusRejected) as info:
                    decode_corpus(path, datasets, fmt=fmt, measure_drift=False)
                assert info.value.errors and info.value.errors[0]["rule"] in want
        if want is not None:
            assert sorted(p.name for p in datasets.iterdir()) == before


def test_the_expectations_cover_every_rule():
    """The oracle above is not vacuous: each rule is reachable from its fields."""
    base = {"prompt": 100, "output": 10, "block": 64}
    assert expected(base, 2, SMALL) is None
    assert expected({**base, "prompt": SMALL[0] + 1}, 2, SMALL) == {"prompt_too_long"}
    assert expected({**base, "prompt": SMALL[0]}, 2, SMALL) is None
    assert expected({**base, "output": SMALL[1] + 1}, 2, SMALL) == {"output_too_long"}
    assert expected({**base, "block": SMALL[0] + 1}, 2, SMALL) == {"block_size_too_large"}
    assert expected({**base, "block": SMALL[0] // 2, "prompt": 4000}, 3, SMALL) == {
        "prompt_too_long"
    }
    assert expected({**base, "prompt": 10}, 2, SMALL) == {"hash_ids_over"}
    assert expected({**base, "prompt": 1.5}, 2, SMALL) == {"schema"}
    assert "negative_number" in expected({**base, "output": -1}, 2, SMALL)
    assert expected({**base, "output": 2**64}, 2, SMALL) == PAST_INT64
