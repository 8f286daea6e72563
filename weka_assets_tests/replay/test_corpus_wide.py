"""Corpus-wide figures (one seen-set for the whole corpus, calls on its timeline) against a
plain-Python walk of every call's blocks, and the per-trace invariant on real data."""

import statistics

import numpy as np
import pytest

from weka_assets.replay.corpus_wide import block_classes, corpus_wide_hits, timeline_order
from weka_assets.replay.unbounded import replay_unbounded
from weka_assets_tests.corpora import REAL_SAMPLE, decoded, synthetic, truncated


def _walk(ds):
    """aiperf's algorithm over block classes, call by call in timeline order."""
    cls, _ = block_classes(ds)
    seen, hits, rates = set(), {}, []
    for i in timeline_order(ds).tolist():
        ids = cls[ds.call_rows(i)].tolist()
        run = 0
        for x in ids:
            if x not in seen:
                break
            run += 1
        hits[i] = run
        if ids:
            rates.append(run / len(ids))
        seen.update(ids)
    return hits, (statistics.mean(rates) if rates else None)


@pytest.mark.parametrize(
    "corpus,policy",
    [("semianalysis", "trace"), ("kv-cache-tester", "trace"), ("kv-cache-tester", "session"),
     ("truncated", "trace")],
)  # fmt: skip
def test_hits_equal_a_plain_walk(corpus, policy, monkeypatch):
    path = truncated() if corpus == "truncated" else synthetic(corpus, traces=8, seed=3)
    ds = decoded(path, policy)
    hits, mean = _walk(ds)
    for rows in (1 << 20, 7):  # one chunk, then chunks of a few calls (a big call alone)
        monkeypatch.setattr("weka_assets.replay.corpus_wide.ROW_CHUNK", rows)
        wide = corpus_wide_hits(ds)
        assert [int(wide.hits[i]) for i in sorted(hits)] == [hits[i] for i in sorted(hits)]
        assert wide.aiperf_analyze_trace_hit_rate == mean  # the same float, not only close


def test_timeline_order_keeps_each_trace_in_its_replay_order():
    ds = decoded(synthetic("semianalysis", traces=8, seed=3))
    order = timeline_order(ds)
    trace = np.asarray(ds.calls["trace"])[order]
    for t in range(len(ds.traces)):
        mine = order[trace == t]
        assert (np.diff(mine) > 0).all()
    assert (np.diff(np.asarray(ds.calls["t_abs"])[order]) >= 0).all()


def test_block_classes_follow_offsets():
    ds = decoded(synthetic("kv-cache-tester", traces=6, seed=3), "session")
    cls, n = block_classes(ds)
    off = np.asarray(ds.block_offsets)
    assert n == len({tuple(r) for r in off.tolist()})
    first = {}
    for c, row in zip(cls.tolist(), map(tuple, off.tolist()), strict=True):
        assert first.setdefault(c, row) == row


@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason="real sample missing")
def test_per_trace_scope_corpus_wide_rate_equals_the_theoretical_one_on_real_data():
    result, _ = replay_unbounded(decoded(REAL_SAMPLE))
    assert result.corpus_wide_theoretical_hit_rate == result.theoretical_hit_rate
    assert result.theoretical_hit_rate == 0.9513143509888292
    # aiperf 0.13.0 analyze-trace on this dataset's mooncake export printed exactly this
    assert result.aiperf_analyze_trace_hit_rate == 0.9318761666090166


def test_block_classes_are_exact_when_row_hashes_collide(monkeypatch):
    """Equal 64-bit hashes of different rows (forced here: every row hashes alike) fall back
    to the full sort: the classes are the same."""
    ds = decoded(synthetic("kv-cache-tester", traces=4, seed=3))
    want, n = block_classes(ds)
    monkeypatch.setattr("weka_assets.replay.corpus_wide.mix64", lambda x, out=None: x * 0)
    got, m = block_classes(ds)
    assert m == n
    # the same partition of the rows (class numbers may differ)
    pairs = np.unique(np.stack([want, got]), axis=1)
    assert pairs.shape[1] == n
