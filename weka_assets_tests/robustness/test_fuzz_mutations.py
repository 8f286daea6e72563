"""Valid traces with one field made bad: the error names the right rule, file, line, trace,
request and inner index, read from a file and given to `parse_trace` directly.

Sources: the real kv-cache-tester traces (read in place from ../shared/real-traces, never
copied) and synthetic traces of both profiles (`weka_assets.synthetic`). Each case takes one
trace, picks a place (the trace, a subagent entry, or a model call of the parent or of a
subagent) and a mutation of that place, then writes the trace among valid ones.
"""

import copy
import gzip
import math
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import orjson
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from weka_assets.errors import Location, TraceError
from weka_assets.pipeline import scope_report
from weka_assets.synthetic import generate_corpus
from weka_assets.traces.reader import iter_records, max_output_tokens, max_prompt_tokens
from weka_assets.traces.schema import INT64_MAX, parse_trace
from weka_assets_tests.conftest import REAL_SAMPLE
from weka_assets_tests.robustness.contract import check_error, check_record
from weka_assets_tests.robustness.fuzzing import bounded, fuzz_settings, tried

pytestmark = pytest.mark.fuzz


@dataclass
class Expect:
    rule: str
    request: int | None = None
    inner: int | None = None
    # "parse": a record error; "read": one of the reader's (a declared size past its limit,
    # which parse_trace alone accepts); "scope": a hard error of the scope report
    stage: str = "parse"
    json: bool = True  # representable in JSON text (NaN and inf are not)


# ---- mutations: (place, draw) -> Expect, or None when the place does not fit -------------

NOT_TYPES = ["x", "N", "", "subagents", "normal"]


def _negative(draw, big: bool = True) -> int:
    return -draw(st.integers(1, 2**63 if big else 10**6))


CALL_MUTATIONS = [
    "drop in", "drop out", "drop t", "drop model", "drop type", "null in", "null t",
    "negative in", "negative out", "negative t", "nan t", "inf t", "inf api_time",
    "string in", "float out", "bool in", "list t", "unknown type", "hash_ids object",
    "too many ids", "hash id negative", "hash id float", "hash id string", "hash id null",
    "in over the limit", "out over the limit",
]  # fmt: skip
SUBAGENT_MUTATIONS = [
    "drop agent_id", "empty agent_id", "drop requests", "requests object", "drop models",
    "negative duration_ms", "nested subagent", "unknown type", "duplicate agent_id",
]  # fmt: skip
TRACE_MUTATIONS = [
    "block_size zero", "block_size negative", "block_size string", "scope unknown",
    "drop id", "empty id", "id number", "drop requests", "requests object",
    "requests null", "drop models", "tool_tokens negative", "not an object",
    "block_size over the limit",
]  # fmt: skip
# the reader's rules: sizes past their limits (WEKA_ASSETS_MAX_PROMPT_TOKENS, ..._OUTPUT_TOKENS)
READ_RULES = ("prompt_too_long", "output_too_long", "block_size_too_large")
ALL_MUTATIONS = (
    [f"call: {m}" for m in CALL_MUTATIONS]
    + [f"subagent: {m}" for m in SUBAGENT_MUTATIONS]
    + [f"trace: {m}" for m in TRACE_MUTATIONS]
)


def mutate_call(c: dict, what: str, draw, inner: bool) -> tuple[str, bool]:
    """Mutate the model call `c` in place; (rule, representable in JSON).

    A parent request's `type` picks between a call and a subagent entry, so a missing or
    unknown one is `unknown_request_type`; a subagent's requests are calls only, where the
    schema reports the same as `missing_field` / `schema`."""
    ids = c.get("hash_ids") or []
    field = what.split()[-1]
    if what.startswith("drop"):
        del c[field]
        return "unknown_request_type" if field == "type" and not inner else "missing_field", True
    if what.startswith("null"):
        c[field] = None  # null-valued keys are dropped: a required one is then missing
        return "missing_field", True
    if what == "negative t":
        c["t"] = -draw(st.floats(min_value=1e-9, max_value=1e300))
        return "negative_number", True
    if what.startswith("negative"):
        c[field] = _negative(draw)
        return "negative_number", True
    if what == "nan t":
        c["t"] = math.nan
        return "not_finite", False
    if what.startswith("inf"):
        c[field] = math.inf
        return "not_finite", False
    if what == "string in":
        c["in"] = str(c["in"])
        return "schema", True
    if what == "float out":
        c["out"] = c["out"] + 0.5
        return "schema", True
    if what == "bool in":
        c["in"] = draw(st.booleans())
        return "schema", True
    if what == "list t":
        c["t"] = [c["t"]]
        return "schema", True
    if what == "unknown type":
        c["type"] = draw(st.sampled_from(NOT_TYPES))
        return ("schema" if inner else "unknown_request_type"), True
    if what == "hash_ids object":
        c["hash_ids"] = {str(i): v for i, v in enumerate(ids)}
        return "schema", True
    if what == "in over the limit":  # one over, or any size up to int64's
        c["in"] = draw(st.sampled_from([max_prompt_tokens() + 1, INT64_MAX]))
        return "prompt_too_long", True
    if what == "out over the limit":
        c["out"] = draw(st.integers(max_output_tokens() + 1, INT64_MAX))
        return "output_too_long", True
    if what == "too many ids":
        # one id more than ceil(in / block_size) allows (block_size 64 in every source)
        c["hash_ids"] = [*ids, (ids[-1] + 1) if ids else 1]
        c["in"] = max(0, (len(c["hash_ids"]) - 1) * 64 - draw(st.integers(1, 64)))
        return "hash_ids_over", True
    k = draw(st.integers(0, len(ids) - 1))
    c["hash_ids"][k] = {
        "hash id negative": _negative(draw),
        "hash id float": ids[k] + 0.5,
        "hash id string": str(ids[k]),
        "hash id null": None,
    }[what]
    return ("negative_number" if what == "hash id negative" else "schema"), True


def mutate_subagent(raw: dict, i: int, what: str, draw) -> tuple[str, int | None]:
    """Mutate the subagent entry at request i in place; (rule, inner index or None)."""
    s = raw["requests"][i]
    if what.startswith("drop"):
        del s[what.split()[-1]]
        return "missing_field", None
    if what == "empty agent_id":
        s["agent_id"] = ""
        return "schema", None
    if what == "requests object":
        s["requests"] = {"0": s["requests"][0]} if s["requests"] else {}
        return "schema", None
    if what == "negative duration_ms":
        s["duration_ms"] = _negative(draw, big=False)
        return "negative_number", None
    if what == "unknown type":
        s["type"] = draw(st.sampled_from(NOT_TYPES))
        return "unknown_request_type", None
    if what == "duplicate agent_id":
        s["agent_id"] = draw(st.sampled_from(_earlier_agents(raw, i)))
        return "duplicate_agent_id", None
    # nested subagent: a subagent inside a subagent's requests
    j = draw(st.integers(0, len(s["requests"])))
    s["requests"].insert(j, copy.deepcopy(s))
    return "nested_subagent", j


def mutate_trace(raw: dict, what: str, draw) -> str:
    """Mutate the trace's own fields in place; the rule."""
    if what == "block_size zero":
        raw["block_size"] = 0
        return "not_positive"
    if what == "block_size negative":
        raw["block_size"] = -64
        return "not_positive"
    if what == "block_size string":
        raw["block_size"] = "64"
        return "schema"
    if what == "scope unknown":
        raw["hash_id_scope"] = draw(st.sampled_from(["galaxy", "session", "Local", ""]))
        return "unknown_scope"
    if what.startswith("drop"):
        del raw[what.split()[-1]]
        return "missing_field"
    if what == "empty id":
        raw["id"] = ""
        return "schema"
    if what == "id number":
        raw["id"] = 7
        return "schema"
    if what == "requests object":
        raw["requests"] = {"0": raw["requests"][0]}
        return "schema"
    if what == "requests null":
        raw["requests"] = None
        return "schema"
    if what == "block_size over the limit":
        raw["block_size"] = draw(st.integers(max_prompt_tokens() + 1, INT64_MAX))
        return "block_size_too_large"
    if what == "tool_tokens negative":
        raw["tool_tokens"] = -1
        return "negative_number"
    return "not_an_object"  # "not an object": the trace wrapped in a list


def _earlier_agents(raw: dict, i: int) -> list[str]:
    return [r["agent_id"] for r in raw["requests"][:i] if r["type"] == "subagent"]


def places_for(raw: dict, name: str) -> list[tuple[int | None, int | None]]:
    """Where in `raw` the named mutation can be made: (request, inner) pairs."""
    kind, what = name.split(": ", 1)
    if kind == "trace":
        return [(None, None)]
    reqs = raw["requests"]
    subs = [i for i, r in enumerate(reqs) if r["type"] == "subagent"]
    if kind == "subagent":
        if what == "duplicate agent_id":
            return [(i, None) for i in subs if _earlier_agents(raw, i)]
        return [(i, None) for i in subs]
    calls = [(i, None) for i, r in enumerate(reqs) if r["type"] != "subagent"]
    calls += [(i, j) for i in subs for j in range(len(reqs[i]["requests"]))]
    if what.startswith("hash id"):
        return [
            (i, j)
            for i, j in calls
            if (reqs[i] if j is None else reqs[i]["requests"][j]).get("hash_ids")
        ]
    return calls


@st.composite
def mutation(draw, raw: dict, name: str | None = None) -> tuple[object, str, Expect]:
    """Mutate `raw` (a valid trace dict, changed in place) with the named mutation (or one
    drawn) at a place drawn among those where it fits; (value to write, name, Expect)."""
    if name is None:
        name = draw(st.sampled_from([m for m in ALL_MUTATIONS if places_for(raw, m)]))
    places = places_for(raw, name)
    assume(places)
    i, j = draw(st.sampled_from(places))
    kind, what = name.split(": ", 1)
    if kind == "trace":
        rule = mutate_trace(raw, what, draw)
        stage = "read" if rule in READ_RULES else "parse"
        return ([raw] if rule == "not_an_object" else raw), name, Expect(rule, stage=stage)
    if kind == "subagent":
        rule, inner = mutate_subagent(raw, i, what, draw)
        return raw, name, Expect(rule, i, inner)
    c = raw["requests"][i] if j is None else raw["requests"][i]["requests"][j]
    rule, representable = mutate_call(c, what, draw, inner=j is not None)
    stage = "scope" if rule == "hash_ids_over" else "read" if rule in READ_RULES else "parse"
    return raw, name, Expect(rule, i, j, stage, representable)


# ---- sources ----------------------------------------------------------------------------


@cache
def real_names() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in REAL_SAMPLE.glob("*.json")))


@cache
def real_bytes(name: str) -> bytes:
    return (REAL_SAMPLE / name).read_bytes()


@cache
def synthetic_bytes(profile: str, seed: int) -> bytes:
    return orjson.dumps(generate_corpus(profile, 1, seed, "small")[0])


@cache
def neighbours() -> tuple[bytes, ...]:
    """Valid traces written around the mutated one (ids unlike any source's)."""
    return tuple(
        orjson.dumps({**t, "id": f"neighbour-{k}"})
        for k, t in enumerate(generate_corpus("kv-cache-tester", 3, 99, "small"))
    )


def write_corpus(
    root: Path, target: bytes, position: int, layout: str
) -> tuple[Path, str, int | None]:
    """The target among valid neighbours; (corpus path, target's file, target's line)."""
    records = list(neighbours())
    records.insert(position, target)
    if layout == "folder":
        folder = root / "corpus"
        folder.mkdir()
        for k, data in enumerate(records):
            (folder / f"{k:02d}.json").write_bytes(data)
        return folder, str(folder / f"{position:02d}.json"), None
    body = b"\n".join(records) + b"\n"
    path = root / f"corpus.{layout}"
    path.write_bytes(gzip.compress(body) if layout.endswith(".gz") else body)
    return path, str(path), position + 1


def check_mutation(source: bytes, data, layout: str, name: str | None = None) -> None:
    raw = orjson.loads(source)
    value, what, expect = data.draw(mutation(raw, name), label="mutation")
    event(f"{expect.rule}: {what}")
    tid = raw.get("id") if isinstance(raw.get("id"), str) else None
    trace_named = tid if expect.rule != "not_an_object" else None
    text = orjson.dumps(value) if expect.json else None  # before parse_trace drops null keys
    shape = value if isinstance(value, dict) else []

    def check(err, file, line):
        check_error(err, file, line, shape)
        got = (err.rule, err.location.trace, err.location.request, err.location.inner)
        want = (expect.rule, trace_named, expect.request, expect.inner)
        assert got == want, f"{what}: got {got}, want {want}: {err}"

    # 1. straight into parse_trace (NaN and inf included)
    with bounded():
        try:
            parse_trace(value, "direct.json", 5)
        except TraceError as exc:
            assert expect.stage == "parse", f"{what}: {exc}"
            check(exc, "direct.json", 5)
        else:
            assert expect.stage in ("scope", "read"), f"{what}: parsed, want [{expect.rule}]"
    if text is None:
        return
    # 2. from a corpus file, among valid traces: the reader and the scope report
    with tempfile.TemporaryDirectory(prefix="weka-mutation-") as tmp:
        position = data.draw(st.integers(0, len(neighbours())), label="position")
        path, file, line = write_corpus(Path(tmp), text, position, layout)
        with bounded():
            recs = list(iter_records(path))
            report = scope_report(path)
    assert len(recs) == len(neighbours()) + 1
    for k, rec in enumerate(recs):
        if k != position:
            assert rec.trace is not None, rec.error
            check_record(rec)
    target = recs[position]
    assert (target.file, target.line) == (file, line)
    check_record(target, shape if expect.rule != "not_an_object" else value)
    if expect.stage in ("parse", "read"):
        assert target.error is not None, f"{what}: parsed, want [{expect.rule}]"
        check(target.error, file, line)
    else:
        assert target.trace is not None, f"{what}: {target.error}"
    # the report holds exactly this one hard error, located the same way
    assert len(report.hard_errors) == 1, (what, report.hard_errors)
    e = report.hard_errors[0]
    check(TraceError(e["rule"], e["message"], Location(**{k: e[k] for k in LOC_KEYS})), file, line)
    assert not report.passed


LOC_KEYS = ("file", "line", "trace", "request", "inner")


LAYOUTS = st.sampled_from(["jsonl", "jsonl.gz", "folder"])


@pytest.fixture(scope="module")
def real_sample_names(real_sample):
    names = real_names()
    assert len(names) == 30
    # the unmutated traces are valid: every error below comes from the mutation
    for name in names[:3]:
        parse_trace(orjson.loads(real_bytes(name)), name)
    return names


@fuzz_settings(40)
@given(data=st.data(), layout=LAYOUTS)
def test_fuzz_mutated_real_traces_name_the_rule_and_place(real_sample_names, data, layout):
    tried()
    name = data.draw(st.sampled_from(real_sample_names), label="real trace")
    check_mutation(real_bytes(name), data, layout)


@cache
def sources_with_subagents() -> tuple[tuple[str, int], ...]:
    """Synthetic (profile, seed) whose one trace has two subagents or more."""
    out = []
    for profile in ("semianalysis", "kv-cache-tester"):
        for seed in range(60):
            reqs = orjson.loads(synthetic_bytes(profile, seed))["requests"]
            if sum(r["type"] == "subagent" for r in reqs) >= 2:
                out.append((profile, seed))
    assert len(out) >= 10
    return tuple(out)


@fuzz_settings(100)
@given(
    data=st.data(),
    profile=st.sampled_from(["semianalysis", "kv-cache-tester"]),
    seed=st.integers(0, 40),
    layout=LAYOUTS,
)
def test_fuzz_mutated_synthetic_traces_name_the_rule_and_place(data, profile, seed, layout):
    tried()
    check_mutation(synthetic_bytes(profile, seed), data, layout)


@pytest.mark.parametrize("name", ALL_MUTATIONS)
@fuzz_settings(3)
@given(data=st.data(), layout=LAYOUTS)
def test_fuzz_every_mutation_names_its_rule_and_place(name, data, layout):
    """Each mutation of the catalog, at places and layouts drawn (so the CI profile covers
    all of them, not only those a random draw happens to pick)."""
    tried()
    profile, seed = data.draw(st.sampled_from(sources_with_subagents()), label="source")
    check_mutation(synthetic_bytes(profile, seed), data, layout, name)
