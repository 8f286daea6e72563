"""Streamed expansion: every call's tokens, equal to random-access expansion, any sharding."""

import numpy as np
import pytest

from weka_assets.decoding.expand import MASK, call_checksum, expand_calls, expand_dataset
from weka_assets_tests.corpora import both_profiles, decoded, synthetic


@pytest.mark.parametrize("corpus", both_profiles(traces=5, seed=7), ids=lambda p: p.name)
def test_streamed_expansion_equals_random_access_expansion(corpus):
    ds = decoded(corpus)
    seen = 0
    for i, tokens in ds.expand_all():
        assert np.array_equal(tokens, ds.expand_call(i))
        seen += 1
    assert seen == ds.n_calls
    # starting mid-dataset (a shard boundary inside a conversation) changes nothing
    mid = ds.n_calls // 2
    for i, tokens in ds.expand_all(mid, mid + 20):
        assert np.array_equal(tokens, ds.expand_call(i))


def test_checksum_is_the_same_however_the_calls_are_sharded(monkeypatch):
    ds = decoded(synthetic("semianalysis", traces=6, seed=2))
    direct = sum(call_checksum(i, ds.expand_call(i)) for i in range(ds.n_calls)) & MASK
    tokens = int(ds.calls["tokens_in"].sum())
    halves = expand_calls(ds, 0, 100) + expand_calls(ds, 100)
    assert (halves.calls, halves.tokens, halves.checksum) == (ds.n_calls, tokens, direct)
    import weka_assets.decoding.expand as expand

    monkeypatch.setattr(expand, "SHARD_CALLS", 30)  # several shards
    for n in ("1", "2"):
        monkeypatch.setenv("WEKA_ASSETS_WORKERS", n)
        e = expand_dataset(ds.path)
        assert (e.calls, e.tokens, e.checksum) == (ds.n_calls, tokens, direct)
    # a changed token changes the checksum
    assert call_checksum(3, np.array([1, 2], np.int32)) != call_checksum(
        3, np.array([1, 3], np.int32)
    )
