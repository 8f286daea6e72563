"""Mooncake JSONL read as one-call traces: fields, detection, the format option, strict errors,
the registry's `format`, and the schedule of a corpus-wide clock."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from weka_assets.errors import TraceError
from weka_assets.replay.schedule import Arrival, arrival_for, call_start_times
from weka_assets.sources.registry import parse_registry
from weka_assets.traces.reader import CorpusFormat, detect_format, iter_records
from weka_assets_tests.corpora import synthetic
from weka_assets_tests.mooncake import mooncake_requests, write_mooncake


def test_each_line_is_one_call_trace_in_the_global_scope(tmp_path):
    reqs = mooncake_requests(12)
    path = write_mooncake(tmp_path / "mc.jsonl", reqs, blank_first=True)
    recs = list(iter_records(path))
    assert [r.line for r in recs] == list(range(2, 14))  # the blank first line is skipped
    for r, req in zip(recs, reqs, strict=True):
        assert r.error is None and r.declared_scope == "global"
        t = r.trace
        assert t.id == f"mc.jsonl:{r.line}" and t.scope == "global" and t.block_size == 512
        assert not t.subagents and t.calls == t.parent_calls and len(t.calls) == 1
        c = t.calls[0]
        assert c.t == req["timestamp"] / 1000
        assert (c.tokens_in, c.tokens_out) == (req["input_length"], req["output_length"])
        assert c.ids.dtype == np.int64 and c.ids.tolist() == req["hash_ids"]
    assert len({r.trace.id for r in recs}) == len(recs)


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
def test_bad_lines_give_one_line_naming_file_line_and_rule(tmp_path, line, rule, field):
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + _bad(line) + "\n" + json.dumps(GOOD) + "\n")
    recs = list(iter_records(path))
    assert recs[0].error is None and recs[2].error is None
    err = recs[1].error
    assert isinstance(err, TraceError) and err.rule == rule
    text = str(err)
    assert "\n" not in text and "mc.jsonl:2" in text and f"[{rule}]" in text
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


def _ds(t_abs, mooncake: bool):
    """What the schedule reads of a dataset: one call per trace, times, the manifest."""
    n = len(t_abs)
    return SimpleNamespace(
        traces=[{}] * n,
        calls={"trace": np.arange(n), "t_abs": np.asarray(t_abs, dtype=np.float64)},
        manifest={"corpus_format": "mooncake"} if mooncake else {},
    )


def test_schedule_recorded_timestamps_for_mooncake():
    ts = [1_700_000_000.0, 1_700_000_000.5, 1_700_000_002.0, 1_700_000_001.0]
    mc = _ds(ts, mooncake=True)
    recorded = arrival_for(mc)
    assert recorded.mode == "recorded"
    np.testing.assert_allclose(call_start_times(mc, recorded), [0.0, 0.5, 2.0, 1.0])
    np.testing.assert_allclose(call_start_times(mc, recorded, 0.5), [0.0, 0.25, 1.0, 0.5])
    # the arrival models place each request on its own: all at once, or one every interval
    np.testing.assert_allclose(call_start_times(mc, Arrival("together")), 0.0)
    staggered = call_start_times(mc, Arrival("staggered", interval_s=2.0))
    np.testing.assert_allclose(staggered, [0.0, 2.0, 4.0, 6.0])
    # Weka traces keep their own clocks: the default is together, unchanged
    weka = _ds([0.0, 3.0, 1.0], mooncake=False)
    assert arrival_for(weka).mode == "together" and arrival_for(weka, "poisson").mode == "poisson"
    np.testing.assert_allclose(call_start_times(weka), [0.0, 3.0, 1.0])
    np.testing.assert_allclose(call_start_times(weka, Arrival("recorded")), [0.0, 3.0, 1.0])
    with pytest.raises(ValueError, match="unknown arrival mode"):
        Arrival("sometimes")
