"""A Mooncake file read as columns (`traces.requests`): the fast chunk decoder and the per-line
parse agree request for request, every bad line is reported where it is, and the columnar
analysis, decode and replay give what the one-trace-per-request path gives."""

import gzip
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weka_assets.arrays import dense_ranks, first_appearances
from weka_assets.decoding.dataset import DecodedDataset
from weka_assets.decoding.decoder import concat_pieces, decode_requests, decode_trace
from weka_assets.decoding.filler import Filler, array_sha256
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.replay import unbounded
from weka_assets.traces import requests
from weka_assets.traces.formats.mooncake import parse_mooncake
from weka_assets.traces.reader import CorpusFormat, iter_records
from weka_assets.traces.requests import RequestTable
from weka_assets.traces.scope import analyse_requests, analyse_trace
from weka_assets_tests.mooncake import mooncake_requests, write_mooncake

GOOD = {"timestamp": 10, "input_length": 600, "output_length": 3, "hash_ids": [0, 1]}


def _table(path, **fmt) -> RequestTable:
    (rec,) = list(iter_records(path, CorpusFormat("mooncake", **fmt)))
    assert rec.error is None, rec.error
    return rec.trace


def _per_line(path, block_size=512):
    """The per-line parse of every non-blank line: the reference the columns must equal."""
    out = []
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if text.strip():
            trace, _ = parse_mooncake(json.loads(text), str(path), n, block_size)
            out.append((n, trace))
    return out


def _assert_table_is(table: RequestTable, ref) -> None:
    assert table.n_requests == len(ref)
    for k, (line, trace) in enumerate(ref):
        c = trace.calls[0]
        assert int(table.line[k]) == line
        assert table.t[k] == c.t  # the same division, bit for bit
        assert (int(table.tokens_in[k]), int(table.tokens_out[k])) == (c.tokens_in, c.tokens_out)
        ids = table.ids[table.offsets[k] : table.offsets[k + 1]]
        assert ids.dtype == np.int64 and ids.tolist() == c.ids.tolist()


def test_the_columns_equal_the_per_line_parse_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(requests, "CHUNK", 700)  # many chunks, lines cut at chunk ends
    path = write_mooncake(tmp_path / "mc.jsonl", mooncake_requests(60, seed=3))
    table = _table(path)
    assert table.id == "mc.jsonl" and table.scope == "global" and table.block_size == 512
    _assert_table_is(table, _per_line(path))


def test_blank_lines_and_a_gzip_file_read_alike(tmp_path, monkeypatch):
    monkeypatch.setattr(requests, "CHUNK", 900)
    reqs = mooncake_requests(25, seed=5)
    lines = [json.dumps(r) for r in reqs]
    text = "\n" + "\n".join(lines[:10]) + "\n\n  \n" + "\n".join(lines[10:])  # no final newline
    plain = tmp_path / "mc.jsonl"
    plain.write_text(text)
    table = _table(plain)
    _assert_table_is(table, _per_line(plain))
    assert table.line[:2].tolist() == [2, 3] and table.line[10] == 14  # blank lines counted
    packed = tmp_path / "mc.jsonl.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    other = _table(packed)
    for name in ("line", "t", "tokens_in", "tokens_out", "offsets", "ids"):
        assert np.array_equal(getattr(other, name), getattr(table, name)), name


def test_every_bad_line_is_reported_at_its_line_and_request(tmp_path, monkeypatch):
    monkeypatch.setattr(requests, "CHUNK", 400)
    rows = [json.dumps(GOOD)] * 30
    rows[4] = json.dumps({**GOOD, "output_length": -1})
    rows[17] = "{not json"
    rows[25] = json.dumps({**GOOD, "input_length": 10**11})  # over the prompt limit
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(rows) + "\n")
    (rec,) = list(iter_records(path))
    errors = [rec.error, *rec.more_errors]
    got = [(e.rule, e.location.line, e.location.request, e.location.trace) for e in errors]
    assert got == [
        ("negative_number", 5, 4, "mc.jsonl"),
        ("invalid_json", 18, 17, "mc.jsonl"),
        ("prompt_too_long", 26, 25, "mc.jsonl"),
    ]
    for e in errors:  # one line each, naming file:line, trace, request and rule
        text = str(e)
        assert "\n" not in text and f"mc.jsonl:{e.location.line}" in text
        assert f"request {e.location.request}" in text and f"[{e.rule}]" in text


def test_an_overlong_line_is_one_error_and_the_rest_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("WEKA_ASSETS_MAX_TRACE_BYTES", "200")
    monkeypatch.setattr(requests, "CHUNK", 64)  # the long line spans chunks
    long = json.dumps({**GOOD, "hash_ids": list(range(100))})
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join([json.dumps(GOOD), long, json.dumps(GOOD)]) + "\n")
    (rec,) = list(iter_records(path))
    assert rec.error.rule == "trace_too_large" and rec.error.location.line == 2
    assert rec.more_errors == []


def _settings():
    return DecodeSettings(seed=7)


def _filler(n=5003):
    tokens = (np.arange(n, dtype=np.int32) * 7919) % 50000
    return Filler(tokens, array_sha256(tokens))


def test_the_columnar_decode_gives_every_request_the_tokens_it_had_as_a_trace(tmp_path):
    reqs = mooncake_requests(40, seed=11)
    for k in (3, 9, 20):  # truncated hash ids: an unhashed tail drawn per request
        reqs[k]["hash_ids"] = reqs[k]["hash_ids"][:1]
    for k in (5, 6):  # equal timestamps: file order breaks the tie
        reqs[k]["timestamp"] = reqs[4]["timestamp"]
    reqs[30]["timestamp"] = 0  # out of order
    path = write_mooncake(tmp_path / "mc.jsonl", reqs)
    filler, st_ = _filler(), _settings()
    table = _table(path)
    ds = concat_pieces([decode_requests(table, st_, filler.size)], filler.tokens, {})
    # the reference: one trace per line, decoded by the general decoder
    ref = concat_pieces(
        [decode_trace(t, st_, filler.size, "corpus") for _, t in _per_line(path)],
        filler.tokens,
        {},
    )
    request = ds.calls["request"]
    t = ds.calls["t_abs"]
    assert np.all(np.diff(t) >= 0) and sorted(request.tolist()) == list(range(len(reqs)))
    ties = [int(np.flatnonzero(request == k)[0]) for k in (4, 5, 6)]
    assert ties == sorted(ties)
    assert np.array_equal(ds.block_id, np.unique(table.ids))  # each distinct id stored once
    for i in range(ds.n_calls):
        k = int(request[i])
        assert np.array_equal(ds.expand_call(i), ref.expand_call(k)), k
        assert ds.call_ids(i).tolist() == reqs[k]["hash_ids"]


def test_the_columnar_analysis_matches_the_general_one(tmp_path):
    reqs = mooncake_requests(50, seed=2)
    path = write_mooncake(tmp_path / "mc.jsonl", reqs)
    table = _table(path)
    got = analyse_requests(table)
    assert analyse_trace(table).distinct_ids == got.distinct_ids  # dispatched
    # the general analysis of the same requests as one trace of one conversation each
    from weka_assets.traces.schema import Trace

    calls = []
    for k, (_, t) in enumerate(_per_line(path)):
        c = t.calls[0]
        c.conv, c.request, c.doc_index = 0, k, k
        calls.append(c)
    whole = Trace("mc.jsonl", str(path), None, 512, "global", [], 0, 0, calls, [], calls)
    want = analyse_trace(whole)
    for name in ("calls", "ids", "base", "max_id", "distinct_ids", "fresh_below", "gaps",
                 "minting_order", "perfect", "holes", "position_violations", "hashing",
                 "convention", "verdict", "layouts", "decode_scope"):  # fmt: skip
        assert getattr(got, name) == getattr(want, name), name
    assert np.array_equal(got.first_ids, want.first_ids)
    assert np.array_equal(got.first_pos, want.first_pos)


def _request_dataset(tmp_path, n=80, shuffled=False) -> DecodedDataset:
    reqs = mooncake_requests(n, seed=9)
    if shuffled:  # file order is not time order: the leading requests in time are scattered
        for k, r in enumerate(reqs):
            r["timestamp"] = (k * 7919) % 1000
    path = write_mooncake(tmp_path / "mc.jsonl", reqs)
    filler = _filler()
    piece = decode_requests(_table(path), _settings(), filler.size)
    return concat_pieces([piece], filler.tokens, {"corpus_format": "mooncake"})


def test_the_chunked_replay_of_a_file_equals_the_whole_trace_replay(tmp_path, monkeypatch):
    ds = _request_dataset(tmp_path)
    monkeypatch.setattr(unbounded, "REQUEST_CHUNK_IDS", 17)  # many chunks of a few calls
    chunked = unbounded._replay_traces(ds, 0, 1)
    monkeypatch.setattr(unbounded, "_request_layout", lambda *a: False)
    whole = unbounded._replay_traces(ds, 0, 1)
    assert chunked.hits.sum() > 0 and chunked.token_hits.sum() > 0
    assert np.array_equal(chunked.hits, whole.hits)
    assert np.array_equal(chunked.token_hits, whole.token_hits)
    assert np.array_equal(chunked.keys, np.sort(whole.keys))


@pytest.mark.parametrize("shuffled", [False, True])
def test_a_bounded_sweep_covers_the_leading_requests_of_a_file(tmp_path, shuffled):
    from weka_assets.replay.capacity import capacity_curve, capacity_part
    from weka_assets.replay.schedule import Arrival

    ds = _request_dataset(tmp_path, shuffled=shuffled)
    blocks = ds.calls["tokens_in"] // ds.calls["block_size"]
    budget = int(blocks.sum()) // 3
    part, traces = capacity_part(ds, budget)
    k = part.n_calls
    assert traces == 1 and 0 < k < ds.n_calls
    assert blocks[:k].sum() <= budget < blocks[: k + 1].sum()
    assert part.tail_rows.size == int(ds.calls["rows_start"][k])
    curve = capacity_curve(part, arrival=Arrival("recorded"))
    assert curve.calls == k and curve.blocks_total == int(blocks[:k].sum())
    session, ids = part.sessions()  # the leading requests' own sessions, in file order
    assert sorted(session.tolist()) == list(range(k))
    requests = sorted(part.calls["request"].tolist())
    assert ids == [f"mc.jsonl#{r}" for r in requests]
    assert capacity_curve(part, arrival=Arrival("staggered")).calls == k
    assert capacity_part(ds, 0)[0] is ds


def test_each_request_of_a_file_is_a_session_of_its_own(tmp_path):
    from weka_assets.replay.live import call_dependencies
    from weka_assets.replay.schedule import Arrival, call_start_times

    ds = _request_dataset(tmp_path, n=12)
    session, ids = ds.sessions()
    assert ids == [f"mc.jsonl#{r}" for r in range(12)]
    assert np.array_equal(session, ds.calls["request"])
    assert all(d == () for d in call_dependencies(ds))
    staggered = call_start_times(ds, Arrival("staggered", interval_s=2.0))
    assert np.array_equal(staggered, 2.0 * ds.calls["request"])  # request k at k intervals


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=300), st.integers(-5, 10**12))
def test_first_appearances_and_dense_ranks_are_np_unique(values, shift):
    arr = np.asarray(values, dtype=np.int64) + shift
    want = np.unique(arr, return_index=True, return_inverse=True)
    got = first_appearances(arr)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)
    ranked = dense_ranks(arr)
    assert ranked is not None
    assert np.array_equal(ranked[0], want[0]) and np.array_equal(ranked[1], want[2])
    sparse = np.asarray(values, dtype=np.int64) * 10**9
    if np.unique(sparse).size > 1:
        assert dense_ranks(sparse) is None
        for a, b in zip(first_appearances(sparse), np.unique(sparse, True, True), strict=True):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("copies", [1, 3])
def test_the_synthetic_production_trace_scales_by_copies(tmp_path, copies):
    from weka_assets.synthetic.mooncake import write_mooncake_trace

    base = _table(write_mooncake_trace(tmp_path / "b.jsonl", n=400))
    table = _table(write_mooncake_trace(tmp_path / "x.jsonl", n=400, copies=copies))
    assert table.n_requests == copies * base.n_requests
    assert np.unique(table.ids).size == copies * np.unique(base.ids).size  # disjoint copies
    assert analyse_requests(table).perfect


def _tree(root) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".provenance" not in p.parts and ".filler-cache" not in p.parts
    }


def test_the_command_lines_decode_reads_a_one_file_corpus_once(tmp_path, monkeypatch):
    """`weka-assets decode` of a one-file Mooncake corpus reads the file in its scope pass
    and decodes what that pass read (`pipeline.HeldTable`): the same dataset, byte for byte,
    as a decode that reads the file again; a file changed in between is read again."""
    from weka_assets import pipeline
    from weka_assets.traces.formats import mooncake
    from weka_assets_tests.test_cli import cli

    path = write_mooncake(tmp_path / "mc.jsonl", mooncake_requests(30, seed=4))
    reads = []
    real = mooncake.read_request_table
    monkeypatch.setattr(
        mooncake, "read_request_table", lambda *a, **k: reads.append(a[0]) or real(*a, **k)
    )
    run = cli("decode", path, "--out", tmp_path / "cli")
    assert run.rc == 0, run.err
    assert reads == [str(path)]  # once: the scope pass's read is decoded
    reads.clear()
    again = pipeline.decode_corpus(path, tmp_path / "again", report=pipeline.scope_report(path))
    assert len(reads) == 2  # without it: the scope pass and the decode each read the file
    assert run.last.endswith(again.key)
    assert _tree(tmp_path / "cli") == _tree(tmp_path / "again")
    # a file that changes between the scope pass and the decode is read again
    held = pipeline.HeldTable()
    pipeline.scope_report(path, hold=held)
    path.write_text(path.read_text() + json.dumps(GOOD) + "\n")
    assert held.take(path) is None
