"""Bailian traces: detection, sessions rebuilt from the parent links, each link rule's
located error, and the per-session and corpus-wide figures of the chain against
`weka_assets_tests.bailian`'s independent computation."""

import gzip
import json

import numpy as np
import pytest

from weka_assets.decoding.dataset import open_dataset
from weka_assets.pipeline import decode_corpus, replay, scope_report
from weka_assets.replay.capacity import capacity_curve
from weka_assets.replay.schedule import arrival_for, call_start_times
from weka_assets.traces.reader import CorpusFormat, detect_format, iter_records
from weka_assets.traces.scope import SCHEMA_RULES
from weka_assets_tests.bailian import (
    bailian_requests,
    expected_figures,
    sessions_of,
    write_bailian,
)
from weka_assets_tests.mooncake import mooncake_requests, write_mooncake


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    reqs = bailian_requests(8, seed=4)
    return write_bailian(tmp_path_factory.mktemp("bailian") / "trace.jsonl", reqs), reqs


@pytest.fixture(scope="module")
def dataset(corpus, tmp_path_factory):
    path, _ = corpus
    return decode_corpus(path, tmp_path_factory.mktemp("datasets"))


def test_detected_before_mooncake(corpus, tmp_path):
    path, _ = corpus
    fmt = detect_format(path)
    assert (fmt.format, fmt.corpus_block_size) == ("bailian", 16)
    assert "detected from trace.jsonl:1" in fmt.origin
    mc = write_mooncake(tmp_path / "m.jsonl", mooncake_requests(3))
    assert detect_format(mc).format == "mooncake"
    assert detect_format(path, CorpusFormat("mooncake")).format == "mooncake"  # as given


def _table(path, fmt=None):
    (rec,) = list(iter_records(path, fmt))
    assert rec.error is None, rec.error
    return rec.trace


def test_the_file_is_one_trace_whose_sessions_are_in_turn_order(corpus):
    path, reqs = corpus
    sessions = sessions_of(reqs)
    table = _table(path)
    assert (table.id, table.scope, table.block_size) == ("trace.jsonl", "global", 16)
    assert table.n_requests == len(reqs) and not table.subagents
    names = [table.session_name(s) for s in range(table.session_roots.size)]
    assert set(names) == {f"trace.jsonl:session-{root}" for root in sessions}
    line_of = {r["chat_id"]: i + 1 for i, r in enumerate(reqs)}
    # sessions numbered in the order of their first line
    assert [line_of[int(r)] for r in table.session_roots] == sorted(
        line_of[root] for root in sessions
    )
    for s, root in enumerate(table.session_roots.tolist()):
        mine = np.flatnonzero(table.session == s)
        mine = mine[np.argsort(table.position[mine])]
        assert table.position[mine].tolist() == list(range(mine.size))
        ix = sessions[root]
        assert (table.line[mine] - 1).tolist() == ix  # request k is on line k + 1
        assert table.t[mine].tolist() == [reqs[i]["timestamp"] for i in ix]  # seconds
        assert table.tokens_in[mine].tolist() == [reqs[i]["input_length"] for i in ix]
        for k, i in zip(mine.tolist(), ix, strict=True):
            ids = table.ids[table.offsets[k] : table.offsets[k + 1]]
            assert ids.tolist() == reqs[i]["hash_ids"]
    assert len(sessions) > 1 and max(len(ix) for ix in sessions.values()) > 2


def test_gzip_gives_the_same_table(corpus, tmp_path):
    path, _ = corpus
    gz = tmp_path / "trace.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    a, b = _table(path), _table(gz)
    for col in ("line", "t", "tokens_in", "ids", "session", "position", "session_roots"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))


def test_scope_report_per_session(corpus):
    path, reqs = corpus
    report = scope_report(path)
    assert report.passed, report.failure_reasons
    assert report.traces == 1 and report.calls == len(reqs)
    assert report.declared_scope == {"global": 1}
    assert report.block_sizes == {"16": 1}
    assert report.layout == "corpus"


def test_replay_figures_per_session_and_corpus_wide(corpus, dataset):
    path, reqs = corpus
    want = expected_figures(reqs)
    m = dataset.manifest
    assert m["corpus_format"] == "bailian" and m["calls"] == len(reqs)
    assert dataset.material["corpus_format"] == "bailian/requests"  # the layout changed
    result, _ = replay(dataset.path)
    assert result.fidelity_mismatched_calls == 0
    assert (result.hits, result.blocks) == (want["hits"], want["blocks"])
    assert result.namespace == "corpus"
    assert result.corpus_wide_theoretical_hit_rate == want["corpus_wide_rate"]
    assert result.aiperf_analyze_trace_hit_rate == pytest.approx(want["aiperf_rate"], abs=1e-12)
    per = {row["trace"]: (row["blocks"], row["theoretical_hit_rate"]) for row in result.per_trace}
    for root, (h, n) in want["per_session"].items():
        blocks, rate = per[f"trace.jsonl:session-{root}"]
        assert blocks == n and rate == pytest.approx(h / n, abs=1e-12)
    # the same bytes read as Mooncake (the file one trace of requests) decode under another key
    other = decode_corpus(path, dataset.path.parent, fmt=CorpusFormat("mooncake", 16))
    assert other.key != dataset.key and other.material["corpus_format"] == "mooncake"
    assert (other.manifest["traces"], other.manifest["calls"]) == (1, len(reqs))
    assert m["traces"] == 1 and len(result.per_trace) == len(want["per_session"]) > 1


def test_capacity_and_schedule_on_the_recorded_clock(corpus, dataset):
    _, reqs = corpus
    ds = open_dataset(dataset.path)
    want = expected_figures(reqs)
    arrival = arrival_for(ds)
    assert arrival.mode == "recorded"
    t0 = min(r["timestamp"] for r in reqs)
    starts = call_start_times(ds, arrival)
    recorded = sorted(r["timestamp"] - t0 for r in reqs)
    np.testing.assert_allclose(np.sort(starts), recorded)
    curve = capacity_curve(ds, None, arrival)
    unbounded = curve.points[-1]
    # one shared cache of full blocks over the corpus timeline
    order = sorted(range(len(reqs)), key=lambda i: (reqs[i]["timestamp"], i))
    seen, hits, total = set(), 0, 0
    for i in order:
        full = reqs[i]["hash_ids"][: reqs[i]["input_length"] // 16]
        run = next((k for k, h in enumerate(full) if h not in seen), len(full))
        hits, total = hits + run, total + len(full)
        seen.update(full)
    assert (unbounded.hits, unbounded.blocks) == (hits, total)
    assert want["full_blocks"] == total


def _write(tmp_path, reqs, name="b.jsonl"):
    return write_bailian(tmp_path / name, reqs)


def _errors(path, fmt=None):
    """Every error of the file (its record's first and the rest), in line order."""
    return [
        e
        for rec in iter_records(path, fmt)
        if rec.error is not None
        for e in (rec.error, *rec.more_errors)
    ]


def _two_sessions():
    """Lines 1-3: session 10 (turns 1, 2, 3); lines 4-5: session 20 (turns 1, 2)."""

    def r(chat, parent, turn, ids):
        return {
            "chat_id": chat,
            "parent_chat_id": parent,
            "timestamp": float(chat),
            "input_length": 16 * len(ids),
            "output_length": 3,
            "type": "text",
            "turn": turn,
            "hash_ids": ids,
        }

    return [
        r(10, -1, 1, [0, 1]),
        r(11, 10, 2, [0, 1, 2]),
        r(12, 11, 3, [0, 1, 2, 3]),
        r(20, -1, 1, [0, 4]),
        r(21, 20, 2, [0, 4, 5]),
    ]


def test_the_link_rules_are_schema_rules():
    for rule in (
        "bailian_duplicate_chat_id",
        "bailian_missing_parent",
        "bailian_parent_cycle",
        "bailian_turn_mismatch",
    ):
        assert rule in SCHEMA_RULES


def test_missing_parent_is_one_located_error(tmp_path):
    reqs = _two_sessions()
    reqs[1]["parent_chat_id"] = 99  # line 2 hangs from nothing, and line 3 from line 2
    path = _write(tmp_path, reqs)
    errs = _errors(path)
    assert [(e.rule, e.location.line) for e in errs] == [("bailian_missing_parent", 2)]
    assert "parent_chat_id 99" in errs[0].message and "1 after it" in errs[0].message
    report = scope_report(path)
    assert not report.passed
    assert report.hard_errors[0]["rule"] == "bailian_missing_parent"
    assert report.hard_errors[0]["line"] == 2


def test_duplicate_chat_id(tmp_path):
    reqs = _two_sessions()
    reqs[4]["chat_id"] = 11
    reqs[4]["parent_chat_id"] = 20
    errs = _errors(_write(tmp_path, reqs))
    assert [(e.rule, e.location.line) for e in errs] == [("bailian_duplicate_chat_id", 5)]
    assert "already the chat_id of line 2" in errs[0].message


def test_cycle(tmp_path):
    reqs = _two_sessions()
    reqs[3]["parent_chat_id"] = 21  # 20 -> 21 -> 20: no first request
    errs = _errors(_write(tmp_path, reqs))
    assert [(e.rule, e.location.line) for e in errs] == [("bailian_parent_cycle", 4)]
    assert "chat_id 20 -> 21 -> 20" in errs[0].message and "lines 4, 5" in errs[0].message
    reqs = _two_sessions()
    reqs[0]["parent_chat_id"] = 10  # its own parent: a cycle of one
    errs = _errors(_write(tmp_path, reqs, "self.jsonl"))
    assert [(e.rule, e.location.line) for e in errs] == [("bailian_parent_cycle", 1)]
    assert "3 request(s)" in errs[0].message


@pytest.mark.parametrize(("line", "turn"), [(3, 4), (1, 2), (2, 1)])
def test_turn_that_disagrees_with_the_chain(tmp_path, line, turn):
    reqs = _two_sessions()
    reqs[line - 1]["turn"] = turn
    errs = _errors(_write(tmp_path, reqs))
    assert [(e.rule, e.location.line) for e in errs] == [("bailian_turn_mismatch", line)]
    assert errs[0].location.trace == "b.jsonl:session-10"
    assert f"turn {turn} where" in errs[0].message


def test_schema_errors_name_their_line(tmp_path):
    reqs = _two_sessions()
    del reqs[4]["turn"]
    reqs[2]["timestamp"] = -1.0
    path = _write(tmp_path, reqs)
    lines = path.read_text().splitlines()
    lines.insert(3, "{not json")
    path.write_text("\n".join(lines) + "\n")
    errs = sorted(_errors(path), key=lambda e: e.location.line)
    got = [(e.rule, e.location.line, e.location.request) for e in errs]
    # request k is the file's k-th; a bad line's links still count (line 5 is no orphan)
    assert got == [("negative_number", 3, 2), ("invalid_json", 4, 3), ("missing_field", 6, 5)]
    assert errs[0].location.trace == "b.jsonl"


def test_sizes_are_checked_at_the_request_line(tmp_path, monkeypatch):
    monkeypatch.setenv("WEKA_ASSETS_MAX_OUTPUT_TOKENS", "100")
    reqs = _two_sessions()
    reqs[4]["output_length"] = 101
    errs = _errors(_write(tmp_path, reqs))
    assert [(e.rule, e.location.line, e.location.request) for e in errs] == [
        ("output_too_long", 5, 4)
    ]
    assert "output_length=101" in errs[0].message


def test_a_weka_trace_in_a_bailian_corpus(tmp_path):
    reqs = _two_sessions()
    path = _write(tmp_path, reqs)
    with open(path, "a") as fh:
        fh.write(json.dumps({"id": "w", "models": [], "requests": []}) + "\n")
    errs = _errors(path)
    assert [(e.rule, e.location.line) for e in errs] == [("format_mismatch", 6)]
    assert "read as Bailian (detected from b.jsonl:1)" in errs[0].message
    # and a Bailian line read as Weka says what it looks like
    errs = _errors_as(path, "weka")
    assert errs[0].rule == "format_mismatch" and "a Bailian request" in errs[0].message


def _errors_as(path, fmt):
    return _errors(path, CorpusFormat(fmt))


def test_the_fast_path_reads_what_the_per_line_parse_does(corpus, monkeypatch):
    """Chunks are read whole by Arrow's reader; the per-line parse, which names errors,
    builds the same table."""
    from weka_assets.traces import requests

    path, _ = corpus
    fast = _table(path)
    monkeypatch.setattr(requests, "_fast_chunk", lambda *a, **k: None)
    slow = _table(path)
    for col in ("line", "t", "tokens_in", "tokens_out", "offsets", "ids", "session", "position"):
        np.testing.assert_array_equal(getattr(fast, col), getattr(slow, col))
    np.testing.assert_array_equal(fast.session_roots, slow.session_roots)
