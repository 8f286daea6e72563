"""decoder.md's invariants as property tests over real and synthetic traces."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weka_assets.decoding.decoder import decode_traces
from weka_assets.decoding.filler import Filler, array_sha256
from weka_assets.decoding.prf import block_offsets
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.replay.prefix import token_block_hash
from weka_assets.traces.reader import iter_traces
from weka_assets_tests.corpora import REAL_SAMPLE, decoded, synthetic

PROFILES = ["semianalysis", "kv-cache-tester"]
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def corpora():
    out = [synthetic(p, traces=6, seed=s) for p in PROFILES for s in (1, 2)]
    if REAL_SAMPLE.is_dir():
        out.append(REAL_SAMPLE)
    return out


def full_ids(ds, i):
    return ds.call_ids(i)[: int(ds.calls["n_full"][i])]


def common_prefix(a, b):
    n = min(a.size, b.size)
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def test_every_call_expands_to_exactly_in_tokens():
    for corpus in corpora():
        ds = decoded(corpus)
        for i in range(ds.n_calls):
            tokens = ds.expand_call(i)
            assert tokens.size == ds.calls["tokens_in"][i] and tokens.dtype == np.int32
            assert tokens.min() >= 0


@pytest.mark.parametrize("profile", PROFILES)
@given(order=st.randoms(use_true_random=False), split=st.integers(1, 5))
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_same_seed_scope_id_same_tokens_in_any_order_or_partitioning(profile, order, split):
    """Invariant 1: decoding a shuffled corpus in two shards gives every call the same tokens."""
    corpus = synthetic(profile, traces=6, seed=1)
    whole = decoded(corpus)
    traces = list(iter_traces(corpus))
    order.shuffle(traces)
    filler = Filler(whole.filler, array_sha256(whole.filler))
    shards = [
        decode_traces(part, DecodeSettings(), filler) for part in (traces[:split], traces[split:])
    ]
    by_trace = {t["id"]: (ds, k) for ds in shards for k, t in enumerate(ds.traces)}
    for k, sl in enumerate(whole.trace_slices()):
        ds, j = by_trace[whole.traces[k]["id"]]
        other = ds.trace_slices()[j]
        for a, b in zip(range(sl.start, sl.stop), range(other.start, other.stop), strict=True):
            assert (whole.expand_call(a) == ds.expand_call(b)).all()


@given(
    a=st.text(min_size=1, max_size=20),
    b=st.text(min_size=1, max_size=20),
    ids=st.lists(st.integers(0, 10**9), min_size=1, max_size=50, unique=True),
)
@PROPS
def test_different_scopes_give_different_blocks(a, b, ids):
    """Invariant 2 (and distinct ids -> distinct blocks within a scope)."""
    if a == b:
        return
    arr = np.array(ids)
    oa, ob = block_offsets(0, a, arr, 4, 109360), block_offsets(0, b, arr, 4, 109360)
    assert not (oa == ob).all(axis=1).any()
    assert np.unique(oa, axis=0).shape[0] == arr.size


def test_block_collision_probability_is_negligible_and_none_occur():
    """A block is S independent sub-block draws: P(two blocks equal) <= (1/N)**S per pair."""
    ds = decoded(synthetic("semianalysis", traces=6, seed=1))
    n, s = ds.filler.size, ds.sub_blocks
    assert (1 / n) ** s < 1e-12
    # one million distinct blocks: no two share all sub-block offsets, nor all tokens
    offsets = block_offsets(0, "t", np.arange(1_000_000), s, n)
    assert np.unique(offsets, axis=0).shape[0] == 1_000_000
    # single sub-block draws do collide at about the rate 1/N: the bound above is not vacuous
    first = offsets[:, 0]
    pairs_equal = (np.bincount(first, minlength=n).astype(np.int64) ** 2).sum() - first.size
    rate = pairs_equal / (first.size * (first.size - 1))
    assert 0.5 / n < rate < 2 / n
    hashes = token_block_hash(ds.block_tokens(np.arange(ds.block_id.size), 64))
    assert np.unique(hashes).size == hashes.size


def _pairs_strategy(ds):
    """Half the pairs from one trace (where sharing happens), half from anywhere."""
    slices = [s for s in ds.trace_slices() if s.stop > s.start]
    within = st.sampled_from(slices).flatmap(
        lambda s: st.tuples(st.integers(s.start, s.stop - 1), st.integers(s.start, s.stop - 1))
    )
    anywhere = st.tuples(st.integers(0, ds.n_calls - 1), st.integers(0, ds.n_calls - 1))
    return st.one_of(within, anywhere)


@pytest.mark.parametrize("corpus_index", range(5))
def test_shared_leading_blocks_share_exactly_those_tokens(corpus_index):
    """Invariant 4: within a trace, j shared leading full blocks <=> j*bs shared tokens, and
    block j+1 differs; calls of different traces share no full block."""
    cs = corpora()
    if corpus_index >= len(cs):
        pytest.skip("real sample missing")
    ds = decoded(cs[corpus_index])

    @given(_pairs_strategy(ds))
    @settings(max_examples=150, deadline=None)
    def check(pair):
        a, b = pair
        bs = int(ds.calls["block_size"][a])
        ta, tb = ds.expand_call(a), ds.expand_call(b)
        fa, fb = full_ids(ds, a), full_ids(ds, b)
        blocks_a = ta[: fa.size * bs].reshape(-1, bs)
        blocks_b = tb[: fb.size * bs].reshape(-1, bs)
        same_rows = (blocks_a[: min(fa.size, fb.size)] == blocks_b[: min(fa.size, fb.size)]).all(
            axis=1
        )
        same_blocks = int(np.argmin(same_rows)) if not same_rows.all() else same_rows.size
        if ds.calls["trace"][a] == ds.calls["trace"][b]:
            assert same_blocks == common_prefix(fa, fb)
        else:
            shared = set(map(bytes, blocks_a)) & set(map(bytes, blocks_b))
            assert not shared

    check()


@pytest.mark.slow
def test_session_policy_breaks_sharing_exactly_across_conversations():
    """Invariant 5: under `session`, calls of different conversations that share leading ids
    no longer share tokens; calls of the same conversation still do."""
    corpus = REAL_SAMPLE if REAL_SAMPLE.is_dir() else synthetic("kv-cache-tester", traces=6, seed=1)
    good, bad = decoded(corpus), decoded(corpus, "session")
    cross = same = 0
    for sl in good.trace_slices():
        idx = list(range(sl.start, sl.stop))
        for a, b in zip(idx, idx[1:] + idx[:1], strict=True):
            j = common_prefix(full_ids(good, a), full_ids(good, b))
            if j == 0:
                continue
            bs = int(good.calls["block_size"][a])
            tg = common_prefix(good.expand_call(a), good.expand_call(b))
            tb = common_prefix(bad.expand_call(a), bad.expand_call(b))
            assert tg >= j * bs
            if good.calls["conv"][a] == good.calls["conv"][b]:
                same += 1
                assert tb >= j * bs
            else:
                cross += 1
                assert tb < bs  # the very first shared block already differs
    assert cross > 0 and same > 0


def test_identical_partial_blocks_decode_identically_and_tails_fill_exactly():
    ds = decoded(synthetic("semianalysis", traces=6, seed=1))
    c = ds.calls
    partial = np.flatnonzero(c["partial_len"] > 0)
    assert partial.size > 0
    for i in partial[:50]:
        n_full, r, bs = int(c["n_full"][i]), int(c["partial_len"][i]), int(c["block_size"][i])
        row = ds.call_rows(i)[n_full]
        assert (ds.expand_call(i)[n_full * bs :] == ds.block_tokens([row], bs)[0, :r]).all()
    kvt = decoded(synthetic("kv-cache-tester", traces=6, seed=1))
    tails = np.flatnonzero(kvt.calls["tail_len"] > 0)
    assert tails.size > 0 and (kvt.calls["partial_len"] == 0).all()


def test_each_distinct_block_is_stored_once():
    ds = decoded(synthetic("semianalysis", traces=6, seed=1))
    pairs = np.stack([ds.block_trace.astype(np.int64), ds.block_id], axis=1)
    assert np.unique(pairs, axis=0).shape[0] == pairs.shape[0]
    total = int(ds.calls["n_ids"].sum())
    assert sum(ds.call_rows(i).size for i in range(ds.n_calls)) == total
    assert ds.block_id.size < total / 2  # prefixes are shared, not repeated
    # calls are stored as what they add: far fewer stored rows than ids
    assert ds.tail_rows.size < total / 3


def test_calls_rebuild_from_tails_sequentially_and_at_random():
    """The walker (call after call) and the chain walk (any call) give the recorded ids."""
    from weka_assets.decoding.dataset import RowWalker

    ds = decoded(synthetic("kv-cache-tester", traces=4, seed=3))
    walker = RowWalker(ds)
    seq = [ds.block_id[walker.rows(i)].copy() for i in range(ds.n_calls)]
    for i in np.random.default_rng(0).permutation(ds.n_calls):
        assert np.array_equal(ds.call_ids(int(i)), seq[int(i)])
