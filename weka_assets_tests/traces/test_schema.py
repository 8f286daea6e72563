"""Strict parsing: every hard error names the file, line, trace, request, inner index and rule."""

import gzip

import orjson
import pytest

from weka_assets.errors import TraceError
from weka_assets.traces.reader import iter_records
from weka_assets.traces.schema import parse_trace


def call(ids, n=None, t=0.0, **kw):
    n = len(ids) * 64 if n is None else n
    return {"t": t, "type": "n", "model": "m", "in": n, "out": 1, "hash_ids": ids, **kw}


def trace(requests, tid="tr", **kw):
    return {
        "id": tid,
        "models": ["m"],
        "block_size": 64,
        "hash_id_scope": "local",
        "requests": requests,
        **kw,
    }


def subagent(agent_id="a1"):
    return {
        "t": 5.0,
        "type": "subagent",
        "agent_id": agent_id,
        "subagent_type": "Explore",
        "status": "completed",
        "models": ["m"],
        "requests": [call([0, 1], t=6.0), call([0, 1, 2], t=7.0)],
    }


def error_of(raw) -> TraceError:
    with pytest.raises(TraceError) as info:
        parse_trace(raw, "f.jsonl", 7)
    return info.value


def test_valid_trace_builds_calls_in_document_order():
    sub = subagent()
    tr, dropped = parse_trace(trace([call([0]), sub, call([0, 3], t=9.0)]), "f", None)
    assert dropped == 0
    assert [(c.conv, c.request, c.inner) for c in tr.calls] == [
        (0, 0, -1),
        (1, 1, 0),
        (1, 1, 1),
        (0, 2, -1),
    ]
    assert [c.doc_index for c in tr.calls] == [0, 1, 2, 3]
    assert tr.calls[2].ids.tolist() == [0, 1, 2]
    assert [c.request for c in tr.parent_first_calls()] == [0, 2, 1, 1]


@pytest.mark.parametrize(
    "mutate, rule, req, inner",
    [
        (lambda t: t["requests"][1].pop("in"), "missing_field", 1, None),
        (lambda t: t["requests"][1].__setitem__("out", -3), "negative_number", 1, None),
        (lambda t: t["requests"][1].__setitem__("hash_ids", [1, -2]), "negative_number", 1, None),
        (lambda t: t["requests"][1].__setitem__("hash_ids", [1, 2.5]), "schema", 1, None),
        (lambda t: t["requests"][1].__setitem__("in", "12"), "schema", 1, None),
        (lambda t: t["requests"][1].__setitem__("t", float("nan")), "not_finite", 1, None),
        (lambda t: t["requests"][1].__setitem__("type", "x"), "unknown_request_type", 1, None),
        (lambda t: t["requests"][2]["requests"][1].pop("in"), "missing_field", 2, 1),
        (lambda t: t.__setitem__("block_size", 0), "not_positive", None, None),
        (lambda t: t.__setitem__("hash_id_scope", "galaxy"), "unknown_scope", None, None),
        (
            lambda t: t["requests"][2]["requests"].append(dict(t["requests"][2])),
            "nested_subagent",
            2,
            2,
        ),
        (lambda t: t["requests"].append(dict(t["requests"][2])), "duplicate_agent_id", 3, None),
    ],
)
def test_hard_errors_name_location_and_rule(mutate, rule, req, inner):
    sub = subagent()
    raw = trace([call([0]), call([0, 1], t=1.0), sub])
    mutate(raw)
    err = error_of(raw)
    assert err.rule == rule
    assert (err.location.file, err.location.line, err.location.trace) == ("f.jsonl", 7, "tr")
    assert (err.location.request, err.location.inner) == (req, inner)
    text = str(err)
    assert "f.jsonl:7" in text and "trace 'tr'" in text and f"[{rule}]" in text


def test_null_keys_are_dropped_and_counted():
    c = call([0, 1], api_time=None, ttft=None)
    tr, dropped = parse_trace(trace([c]), "f", 1)
    assert dropped == 2 and tr.calls[0].tokens_in == 128


def test_null_required_key_is_missing():
    c = call([0, 1])
    c["in"] = None
    assert error_of(trace([c])).rule == "missing_field"


def test_reader_reports_every_bad_line_and_keeps_going(tmp_path):
    good = orjson.dumps(trace([call([0, 1])], tid="a"))
    cut = orjson.dumps(trace([call([0, 1])], tid="b"))[:20]
    other = orjson.dumps(trace([call([0, 1])], tid="c"))
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress(good + b"\n\n" + cut + b"\n" + other + b"\n"))
    recs = list(iter_records(path))
    assert [r.line for r in recs] == [1, 3, 4]
    assert recs[1].error.rule == "invalid_json" and recs[1].error.location.line == 3
    assert recs[0].trace.id == "a" and recs[2].trace.id == "c"


def test_gzip_cut_short_is_an_error_not_a_crash(tmp_path):
    body = gzip.compress(
        b"\n".join(orjson.dumps(trace([call([0, 1])], tid=str(i))) for i in range(50))
    )
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(body[: len(body) // 2])
    recs = list(iter_records(path))
    assert recs[-1].error is not None and recs[-1].error.rule in ("truncated_file", "invalid_json")
