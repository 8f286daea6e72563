"""The reader's fast path gives exactly what the strict path gives, or declines."""

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weka_assets.traces.fastparse import fast_decode
from weka_assets.traces.reader import RawRecord, iter_raw_records, parse_record
from weka_assets.traces.schema import common_prefix, parse_trace
from weka_assets_tests.corpora import REAL_SAMPLE, synthetic


def strict(data: bytes):
    trace, _ = parse_trace(orjson.loads(data), "f.json")
    return trace


def assert_same(a, b):
    assert len(a.calls) == len(b.calls)
    for x, y in zip(a.calls, b.calls, strict=True):
        assert (x.conv, x.request, x.inner, x.tokens_in) == (
            y.conv,
            y.request,
            y.inner,
            y.tokens_in,
        )
        assert np.array_equal(x.ids, y.ids) and x.ids.dtype == np.int64
        assert x.shared == y.shared


def corpora():
    out = [
        synthetic(p, traces=4, seed=s) for p in ("semianalysis", "kv-cache-tester") for s in (1, 2)
    ]
    if REAL_SAMPLE.is_dir():
        out.append(REAL_SAMPLE)
    return out


@pytest.mark.parametrize("corpus", corpora(), ids=lambda p: p.name)
def test_fast_path_equals_strict_path_on_real_and_synthetic_traces(corpus):
    for raw in iter_raw_records(corpus):
        assert fast_decode(raw.data) is not None  # well-formed: the fast path takes it
        rec = parse_record(raw)
        assert rec.error is None
        assert_same(rec.trace, strict(raw.data))


def test_reformatted_lists_parse_the_same():
    raw = next(iter_raw_records(synthetic("semianalysis", traces=1, seed=3)))
    pretty = orjson.dumps(orjson.loads(raw.data), option=orjson.OPT_INDENT_2)
    fast = parse_record(RawRecord("f.json", None, pretty)).trace
    assert_same(fast, strict(raw.data))


def trace_with(lists: list[list[int]]) -> bytes:
    calls = [
        {
            "type": "n",
            "t": float(k),
            "model": "m",
            "in": 64 * len(ids) + 64,
            "out": 1,
            "hash_ids": ids,
        }
        for k, ids in enumerate(lists)
    ]
    sub = {
        "type": "subagent",
        "t": 0.5,
        "agent_id": "a",
        "subagent_type": "x",
        "status": "completed",
        "models": ["m"],
        "requests": calls[::-1],
    }
    body = {
        "id": "t",
        "models": ["m"],
        "block_size": 64,
        "hash_id_scope": "local",
        "requests": [*calls, sub],
    }
    return orjson.dumps(body)


ID = st.integers(0, 2**62)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["grow", "shrink", "change", "same", "new"]), st.lists(ID, max_size=5)
        ),
        max_size=8,
    )
)
def test_any_sequence_of_lists_parses_exactly(steps):
    """Lists that grow, shrink, change anywhere, repeat or start over: ids and shared prefixes
    are exactly the strict path's."""
    lists, cur = [], []
    for op, extra in steps:
        if op == "grow":
            cur = cur + extra
        elif op == "shrink":
            cur = cur[: len(cur) // 2]
        elif op == "change" and cur:
            cur = cur[:-1] + [cur[-1] + 1] + extra
        elif op == "new":
            cur = list(extra)
        lists.append(list(cur))
    data = trace_with(lists)
    assert fast_decode(data) is not None
    trace = parse_record(RawRecord("f.json", None, data)).trace
    assert_same(trace, strict(data))
    for calls in ([c for c in trace.calls if c.conv == 0], trace.subagents[0].calls):
        for prev, c in zip(calls, calls[1:], strict=False):
            assert c.shared == common_prefix(prev.ids, c.ids)


@pytest.mark.parametrize(
    "bad, rule",
    [
        ("[1, 2.5]", "schema"),
        ("[1, -2]", "negative_number"),
        ('[1, "a"]', "schema"),
        ("null", None),  # a null key is dropped (the ids default to empty)
        ("[1, 99999999999999999999999]", "schema"),
    ],
)
def test_malformed_lists_fall_back_to_the_strict_path(bad, rule):
    good = trace_with([[1, 2], [1, 2, 3]])
    data = good.replace(b"[1,2,3]", bad.encode(), 1)
    assert data != good
    rec = parse_record(RawRecord("f.jsonl", 7, data))
    if rule is None:
        assert rec.error is None and rec.null_keys_dropped == 1
    else:
        assert rec.error is not None and rec.error.rule == rule
        assert rec.error.location.file == "f.jsonl" and rec.error.location.line == 7
