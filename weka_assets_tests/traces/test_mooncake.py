"""Mooncake JSONL: a file is one trace whose requests are columns (`traces.requests.RequestTable`):
fields, detection, the format option, strict errors (every bad line, located), the registry's
`format`, and the schedule of a corpus-wide clock (each request a session of its own)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from weka_assets.decoding.dataset import open_dataset
from weka_assets.errors import TraceError
from weka_assets.pipeline import decode_corpus
from weka_assets.replay.schedule import Arrival, arrival_for, call_start_times, trace_offsets
from weka_assets.sources.registry import parse_registry
from weka_assets.traces import requests as request_tables
from weka_assets.traces.reader import CorpusFormat, detect_format, iter_records
from weka_assets.traces.requests import RequestTable
from weka_assets_tests.corpora import synthetic
from weka_assets_tests.mooncake import mooncake_requests, write_mooncake


def _request(table: RequestTable, k: int) -> tuple:
    """Request k of a table as the line wrote it: (timestamp in s, in, out, ids)."""
    ids = table.ids[table.offsets[k] : table.offsets[k + 1]]
    return float(table.t[k]), int(table.tokens_in[k]), int(table.tokens_out[k]), ids.tolist()


@pytest.mark.parametrize(
    "blank_first, chunk",
    [(True, None), (False, None), (False, 300)],
    ids=["blank line (per-line parse)", "whole chunk (typed decoder)", "small chunks"],
)
def test_a_file_is_one_trace_of_requests_in_the_global_scope(
    tmp_path, monkeypatch, blank_first, chunk
):
    if chunk is not None:  # chunks of a few lines: lines are numbered across chunk ends
        monkeypatch.setattr(request_tables, "CHUNK", chunk)
    reqs = mooncake_requests(12)
    path = write_mooncake(tmp_path / "mc.jsonl", reqs, blank_first=blank_first)
    recs = list(iter_records(path))
    assert len(recs) == 1
    r = recs[0]
    assert r.error is None and not r.more_errors and r.declared_scope == "global"
    assert r.line is None and r.file == str(path)
    t = r.trace
    assert isinstance(t, RequestTable)
    assert (t.id, t.file, t.scope, t.block_size) == ("mc.jsonl", str(path), "global", 512)
    assert t.n_requests == len(reqs) and not t.subagents and not t.errors
    first = 2 if blank_first else 1  # a blank line is skipped, its number is not reused
    assert t.line.tolist() == list(range(first, first + len(reqs)))
    for column in (t.line, t.tokens_in, t.tokens_out, t.offsets, t.ids):
        assert column.dtype == np.int64
    assert t.t.dtype == np.float64
    assert t.offsets[0] == 0 and t.offsets[-1] == t.ids.size and t.offsets.size == len(reqs) + 1
    for k, req in enumerate(reqs):
        want = (req["timestamp"] / 1000, req["input_length"], req["output_length"])
        assert _request(t, k) == (*want, req["hash_ids"]), k
        assert t.request_location(k).line == first + k and t.request_location(k).request == k


def test_detection_is_per_corpus_and_a_given_format_wins(tmp_path):
    path = write_mooncake(tmp_path / "mc.jsonl", mooncake_requests(3))
    fmt = detect_format(path)
    assert (fmt.format, fmt.corpus_block_size) == ("mooncake", 512)
    assert "detected from mc.jsonl:1" in fmt.origin
    assert detect_format(synthetic("semianalysis", traces=2)).format == "weka"
    given = detect_format(path, CorpusFormat(None, 64))
    assert (given.format, given.block_size) == ("mooncake", 64)
    assert {r.trace.block_size for r in iter_records(path, given)} == {64}
    # read as Weka on purpose: every line is named as the other format
    errors = [r.error for r in iter_records(path, CorpusFormat("weka"))]
    assert {e.rule for e in errors} == {"format_mismatch"}
    with pytest.raises(ValueError, match="unknown corpus format"):
        CorpusFormat("csv")
    with pytest.raises(ValueError, match="block_size"):
        CorpusFormat("mooncake", 0)


def _bad(line: dict | str) -> str:
    return line if isinstance(line, str) else json.dumps(line)


GOOD = {"timestamp": 10, "input_length": 600, "output_length": 3, "hash_ids": [0, 1]}


@pytest.mark.parametrize(
    "line, rule, field",
    [
        ({k: v for k, v in GOOD.items() if k != "input_length"}, "missing_field", "input_length"),
        ({k: v for k, v in GOOD.items() if k != "timestamp"}, "missing_field", "timestamp"),
        ({**GOOD, "output_length": None}, "missing_field", "output_length"),
        ({**GOOD, "output_length": -1}, "negative_number", "output_length"),
        ({**GOOD, "timestamp": -5}, "negative_number", "timestamp"),
        ({**GOOD, "input_length": "600"}, "schema", "input_length"),
        ({**GOOD, "hash_ids": [0, -1]}, "negative_number", "hash_ids"),
        ({**GOOD, "hash_ids": "0,1"}, "schema", "hash_ids"),
        ({"timestamp": 1, "text_input": "hi", "output_length": 3}, "mooncake_no_hash_ids", "text_input"),
        ({"timestamp": 1, "messages": [], "hash_ids": [0]}, "mooncake_no_hash_ids", "messages"),
        ({"timestamp": 1, "payload": {"prompt": [1, 2]}}, "mooncake_no_hash_ids", "payload"),
        ("[1, 2]", "not_an_object", None),
        ("{not json", "invalid_json", None),
        ({"id": "w", "requests": []}, "format_mismatch", "requests"),
    ],
)  # fmt: skip
def test_bad_lines_give_one_line_each_naming_file_line_request_and_rule(
    tmp_path, line, rule, field
):
    """A bad line makes the file's record an error; every bad line is one located error."""
    path = tmp_path / "mc.jsonl"
    rows = [json.dumps(GOOD), _bad(line), json.dumps(GOOD), _bad(line), json.dumps(GOOD)]
    path.write_text("\n".join(rows) + "\n")
    recs = list(iter_records(path))
    assert len(recs) == 1 and recs[0].trace is None and recs[0].line is None
    errors = [recs[0].error, *recs[0].more_errors]
    assert [(e.location.line, e.location.request) for e in errors] == [(2, 1), (4, 3)]
    for err in errors:
        assert isinstance(err, TraceError) and err.rule == rule
        assert (err.location.file, err.location.trace) == (str(path), "mc.jsonl")
        text = str(err)
        n = err.location.line
        assert "\n" not in text and f"mc.jsonl:{n}" in text and f"[{rule}]" in text
        assert f"trace 'mc.jsonl', request {n - 1}:" in text
        if field:
            assert field in err.message
        if rule == "format_mismatch":
            assert "detected from mc.jsonl:1" in err.message


def test_a_mooncake_line_in_a_weka_corpus_is_named(tmp_path):
    weka = synthetic("semianalysis", traces=2)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(weka.read_bytes() + (json.dumps(GOOD) + "\n").encode())
    recs = list(iter_records(path))
    assert [r.error is None for r in recs] == [True, True, False]
    err = recs[2].error
    assert err.rule == "format_mismatch" and "mixed.jsonl:3" in str(err)
    assert "read as Weka (detected from mixed.jsonl:1)" in err.message


def test_registry_format_and_its_block_size():
    reg = parse_registry(
        "corpora:\n"
        "  - {name: w, source: builtin:sample}\n"
        "  - {name: m, source: builtin:sample, format: mooncake}\n"
        "  - {name: m16, source: builtin:sample, format: mooncake, block_size: 16}\n"
        "  - {name: d32, source: builtin:sample, block_size: 32}\n"
        "  - {name: k, source: builtin:sample, format: weka}\n"
    )
    w, m, m16, d32, k = reg.corpora
    assert (w.format, w.block_size, w.corpus_format()) == (None, 64, CorpusFormat())
    assert (m.format, m.block_size) == ("mooncake", 512)
    assert m.corpus_format() == CorpusFormat("mooncake", 512, " (registry format)")
    assert m16.corpus_format().block_size == 16 and m16.block_size == 16
    assert d32.corpus_format() == CorpusFormat(None, 32)  # Mooncake's, when detected
    assert (k.block_size, k.corpus_format().format) == (64, "weka")
    from weka_assets.sources.errors import RegistryError

    with pytest.raises(RegistryError, match=r"entry 1 \('x'\): format: unknown trace format 'csv'"):
        parse_registry("corpora:\n  - {name: x, source: builtin:sample, format: csv}\n")


def _ds(t_abs):
    """What the schedule reads of a Weka dataset: one call per trace, times, the manifest."""
    n = len(t_abs)
    return SimpleNamespace(
        traces=[{}] * n,
        calls={"trace": np.arange(n), "t_abs": np.asarray(t_abs, dtype=np.float64)},
        manifest={},
    )


def test_schedule_recorded_timestamps_for_mooncake(tmp_path):
    # one file of four requests, out of time order: one trace, stored in time order, each
    # request a session of its own
    ts = [1_700_000_000.0, 1_700_000_000.5, 1_700_000_002.0, 1_700_000_001.0]
    reqs = [{**GOOD, "timestamp": int(t * 1000)} for t in ts]
    path = write_mooncake(tmp_path / "mc.jsonl", reqs)
    mc = open_dataset(decode_corpus(path, tmp_path / "ds", measure_drift=False).path)
    assert len(mc.traces) == 1 and mc.traces[0]["layout"] == "requests"
    request = np.asarray(mc.column("request"), dtype=np.int64)
    assert request.tolist() == [0, 1, 3, 2]  # time order
    session, ids = mc.sessions()
    assert session.tolist() == request.tolist()
    assert ids == [f"mc.jsonl#{k}" for k in range(4)]
    recorded = arrival_for(mc)
    assert recorded.mode == "recorded"
    by_request = np.array([0.0, 0.5, 2.0, 1.0])
    np.testing.assert_allclose(call_start_times(mc, recorded), by_request[request])
    np.testing.assert_allclose(call_start_times(mc, recorded, 0.5), by_request[request] / 2)
    # the arrival models place each request on its own: all at once, or one every interval
    np.testing.assert_allclose(call_start_times(mc, Arrival("together")), 0.0)
    staggered = call_start_times(mc, Arrival("staggered", interval_s=2.0))
    np.testing.assert_allclose(staggered, 2.0 * request)
    poisson = Arrival("poisson", rate_per_s=1.0, seed=3)
    np.testing.assert_allclose(call_start_times(mc, poisson), trace_offsets(4, poisson)[request])
    assert np.unique(call_start_times(mc, poisson)).size == 4
    # Weka traces keep their own clocks: the default is together, unchanged
    weka = _ds([0.0, 3.0, 1.0])
    assert arrival_for(weka).mode == "together" and arrival_for(weka, "poisson").mode == "poisson"
    np.testing.assert_allclose(call_start_times(weka), [0.0, 3.0, 1.0])
    np.testing.assert_allclose(call_start_times(weka, Arrival("recorded")), [0.0, 3.0, 1.0])
    with pytest.raises(ValueError, match="unknown arrival mode"):
        Arrival("sometimes")
