"""A Bailian file read as columns with its sessions: every request decodes to the tokens it had
when each session was a trace of its own, the per-session replay (a chunk of whole sessions
at a time) gives each request the hits of its session's own seen-set, the per-session rows
equal the general figures, and the live replay chains a session's requests in turn order."""

import numpy as np
import pytest

from weka_assets.decoding.decoder import concat_pieces, decode_requests, decode_trace
from weka_assets.replay import unbounded
from weka_assets.replay.live import call_dependencies
from weka_assets.traces.reader import iter_records
from weka_assets.traces.schema import Call, Trace, _shared
from weka_assets_tests.bailian import bailian_requests, sessions_of, write_bailian
from weka_assets_tests.traces.test_requests import _filler, _settings


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    reqs = bailian_requests(9, turns=(1, 6), seed=5)
    for k in (2, 7):  # truncated hash ids: an unhashed tail drawn per request
        reqs[k]["hash_ids"] = reqs[k]["hash_ids"][:1]
    path = write_bailian(tmp_path_factory.mktemp("bailian") / "b.jsonl", reqs)
    (rec,) = list(iter_records(path))
    assert rec.error is None, rec.error
    return path, reqs, rec.trace


def _session_traces(path, reqs) -> dict[int, Trace]:
    """Each session as the trace the per-session reader built: the reference layout."""
    out = {}
    for root, ix in sessions_of(reqs).items():
        calls = []
        for k, i in enumerate(ix):
            r = reqs[i]
            c = Call(0, k, -1, r["timestamp"], r["input_length"], r["output_length"],
                     np.asarray(r["hash_ids"], np.int64), False)  # fmt: skip
            c.doc_index = k
            calls.append(c)
        _shared(calls, {})
        out[root] = Trace(f"b.jsonl:session-{root}", str(path), ix[0] + 1, 16, "global", [],
                          0, 0, list(calls), [], calls)  # fmt: skip
    return out


def _datasets(corpus):
    path, reqs, table = corpus
    filler, st_ = _filler(), _settings()
    ds = concat_pieces([decode_requests(table, st_, filler.size)], filler.tokens, {})
    traces = _session_traces(path, reqs)
    roots = [int(r) for r in table.session_roots]
    pieces = [decode_trace(traces[r], st_, filler.size, "corpus") for r in roots]
    return ds, concat_pieces(pieces, filler.tokens, {}), roots


def _reference_call(ref, s: int, k: int) -> int:
    """The index in `ref` of session `s`'s k-th request."""
    return ref.trace_slices()[s].start + int(
        np.flatnonzero(ref.calls["request"][ref.trace_slices()[s]] == k)[0]
    )


def test_every_request_decodes_to_the_tokens_of_its_session_trace(corpus):
    _, reqs, table = corpus
    ds, ref, _ = _datasets(corpus)
    assert np.array_equal(ds.block_id, np.unique(table.ids))  # each distinct id stored once
    assert np.all(np.diff(ds.calls["t_abs"]) >= 0)  # calls on the file's clock
    tails = 0
    for i in range(ds.n_calls):
        s, k = int(ds.calls["conv"][i]), int(ds.calls["inner"][i])
        j = _reference_call(ref, s, k)
        assert np.array_equal(ds.expand_call(i), ref.expand_call(j)), (s, k)
        assert ds.call_ids(i).tolist() == reqs[int(ds.calls["request"][i])]["hash_ids"]
        tails += int(ds.calls["tail_len"][i] > 0)
    assert tails >= 2


@pytest.mark.parametrize("chunk_ids", [7, 1 << 21])
def test_each_request_hits_its_own_sessions_earlier_requests(corpus, monkeypatch, chunk_ids):
    ds, ref, roots = _datasets(corpus)
    monkeypatch.setattr(unbounded, "REQUEST_CHUNK_IDS", chunk_ids)  # 7: a session at a time
    got = unbounded._replay_traces(ds, 0, 1)
    want = unbounded._replay_traces(ref, 0, len(roots))
    assert got.hits.sum() > 0 and got.token_hits.sum() > 0
    for i in range(ds.n_calls):
        j = _reference_call(ref, int(ds.calls["conv"][i]), int(ds.calls["inner"][i]))
        assert (got.hits[i], got.token_hits[i]) == (want.hits[j], want.token_hits[j])
    assert np.array_equal(np.sort(got.keys), np.sort(want.keys))  # per session, distinct


def test_the_per_session_rows_are_the_general_figures_of_each_session(corpus):
    ds, _, roots = _datasets(corpus)
    result, cf = unbounded.replay_unbounded(ds)
    assert [r["trace"] for r in result.per_trace] == [f"b.jsonl:session-{r}" for r in roots]
    session = ds.sessions()[0]
    for s, row in enumerate(result.per_trace):
        assert row == {"trace": row["trace"], **unbounded.headline(
            unbounded.figures(cf, session == s))}  # fmt: skip


def test_sessions_name_their_root_and_chain_their_requests_in_turn_order(corpus):
    _, reqs, table = corpus
    ds, _, roots = _datasets(corpus)
    session, ids = ds.sessions()
    assert ids == [f"b.jsonl:session-{r}" for r in roots]
    assert np.array_equal(session, ds.calls["conv"])
    deps = call_dependencies(ds)
    by_session = sessions_of(reqs)
    for s, root in enumerate(roots):
        calls = np.flatnonzero(session == s)
        calls = calls[np.argsort(ds.calls["inner"][calls])]
        assert [int(ds.calls["request"][i]) for i in calls] == by_session[root]
        assert deps[calls[0]] == ()
        for p, i in zip(calls[:-1], calls[1:], strict=True):
            assert deps[i] == (int(p),)
