"""Unbounded-cache figures: the contract's number on real traces, the independent reference
call by call, a token replay keyed by real token bytes, and the historic bug's blast radius."""

import hashlib

import numpy as np
import pytest

from weka_assets.replay.prefix import leading_hits
from weka_assets.replay.unbounded import replay_unbounded
from weka_assets_tests.corpora import REAL_SAMPLE, both_profiles, decoded, synthetic, truncated
from weka_assets_tests.reference import reference_theoretical

needs_real = pytest.mark.skipif(
    not REAL_SAMPLE.is_dir(), reason=f"real sample missing at {REAL_SAMPLE}"
)


def call_keys(ds):
    return [
        (ds.traces[int(t)]["id"], int(c), int(r), int(i))
        for t, c, r, i in zip(
            ds.calls["trace"], ds.calls["conv"], ds.calls["request"], ds.calls["inner"], strict=True
        )
    ]


@needs_real
def test_real_sample_hit_rate_and_fidelity():
    result, cf = replay_unbounded(decoded(REAL_SAMPLE))
    assert result.theoretical_hit_rate == 0.9513143509888292
    assert result.blocks == 2_853_880 and result.calls == 1950
    assert result.fidelity_mismatched_calls == 0 and result.cross_trace_shared_blocks == 0
    assert result.token_replay_hit_rate == result.theoretical_full_block_hit_rate


@pytest.mark.parametrize("corpus", ["real", "semianalysis", "kv-cache-tester"])
def test_per_call_figures_match_the_reference(corpus):
    if corpus == "real":
        if not REAL_SAMPLE.is_dir():
            pytest.skip("real sample missing")
        path = REAL_SAMPLE
    else:
        path = synthetic(corpus, traces=10, seed=3)
    ds = decoded(path)
    result, cf = replay_unbounded(ds)
    ref = reference_theoretical(path)
    assert result.theoretical_hit_rate == pytest.approx(ref["theoretical_hit_rate"], abs=1e-15)
    assert result.theoretical_full_block_hit_rate == pytest.approx(
        ref["theoretical_full_block_hit_rate"], abs=1e-15
    )
    for role in ("parent", "subagent"):
        assert result.per_role[role].hits == ref["per_role"][role]["hits"]
    for k, key in enumerate(call_keys(ds)):
        assert (cf.hits[k], cf.total[k], cf.full_hits[k], cf.full_total[k]) == ref["per_call"][
            key
        ], key
    assert result.fidelity_mismatched_calls == 0


def token_keyed_replay(ds):
    """Slow and obvious: expand every call, key each full block by blake2b(parent key, token
    bytes), one dict for the whole corpus. Returns hits per call."""
    cache, hits = set(), []
    for sl in ds.trace_slices():
        for i in range(sl.start, sl.stop):
            tokens = ds.expand_call(i)
            bs = int(ds.calls["block_size"][i])
            parent, keys = b"", []
            for b in range(tokens.size // bs):
                parent = hashlib.blake2b(
                    parent + tokens[b * bs : (b + 1) * bs].tobytes(), digest_size=16
                ).digest()
                keys.append(parent)
            run = 0
            while run < len(keys) and keys[run] in cache:
                run += 1
            hits.append(run)
            cache.update(keys)
    return np.array(hits)


@pytest.mark.parametrize("which", ["semianalysis", "kv-cache-tester", "truncated", "session"])
def test_token_replay_equals_a_replay_keyed_by_token_bytes(which):
    if which == "truncated":
        ds = decoded(truncated())
        assert (ds.calls["tail_len"] >= 64).any()
    elif which == "session":
        ds = decoded(synthetic("semianalysis", traces=6, seed=4), "session")
    else:
        ds = decoded(synthetic(which, traces=6, seed=4))
    _, cf = replay_unbounded(ds)
    assert (cf.token_hits == token_keyed_replay(ds)).all()


def per_conversation_full_hits(ds):
    """Theoretical full-block hits with one seen-set per conversation instead of per trace."""
    out = np.zeros(ds.n_calls, dtype=np.int64)
    for sl in ds.trace_slices():
        idx = np.arange(sl.start, sl.stop)
        for conv in np.unique(ds.calls["conv"][idx]):
            calls = idx[ds.calls["conv"][idx] == conv]
            ids = [ds.call_ids(i)[: int(ds.calls["n_full"][i])] for i in calls]
            out[calls] = leading_hits(np.concatenate(ids), np.array([x.size for x in ids]))
    return out


@pytest.mark.parametrize("corpus", ["real", "semianalysis"])
def test_session_policy_loses_exactly_the_cross_conversation_hits(corpus):
    if corpus == "real":
        if not REAL_SAMPLE.is_dir():
            pytest.skip("real sample missing")
        path = REAL_SAMPLE
    else:
        path = synthetic("semianalysis", traces=12, seed=4)
    good, gcf = replay_unbounded(decoded(path))
    bad, bcf = replay_unbounded(decoded(path, "session"))
    per_conv = per_conversation_full_hits(decoded(path))
    # the session policy's token hits are the per-conversation theoretical hits, call by call
    assert (bcf.token_hits == per_conv).all()
    # it mismatches exactly on the calls whose leading run reaches a block another
    # conversation of the trace sent first, all of them subagent calls
    expected = np.flatnonzero(per_conv != gcf.full_hits)
    assert expected.size > 0 and (np.flatnonzero(bcf.mismatched()) == expected).all()
    assert (decoded(path).calls["role"][expected] == 1).all()
    assert bad.fidelity_mismatched_calls == expected.size and good.fidelity_mismatched_calls == 0
    assert bad.token_replay_hit_rate < good.token_replay_hit_rate
    assert bad.theoretical_hit_rate == good.theoretical_hit_rate


@pytest.mark.parametrize("profile", ["semianalysis", "kv-cache-tester"])
def test_row_hashes_from_filler_offsets_equal_hashes_of_the_gathered_tokens(profile):
    """The replay hashes each block from its filler offsets (prefix sums); that must be the
    very hash of the block's decoded tokens."""
    from weka_assets.replay.prefix import token_block_hash
    from weka_assets.replay.unbounded import row_content_hashes

    ds = decoded(synthetic(profile, traces=4, seed=5))
    rows = np.arange(ds.block_id.size)
    bs = ds.block_sizes[0]
    assert np.array_equal(row_content_hashes(ds), token_block_hash(ds.block_tokens(rows, bs)))
    part = row_content_hashes(ds, 10, 50)
    assert np.array_equal(part, token_block_hash(ds.block_tokens(rows[10:50], bs)))


@pytest.mark.parametrize("bs", [1, 3, 5, 63, 64, 100])
def test_filler_hasher_for_any_block_size_and_wrapping_offsets(bs):
    from weka_assets.replay.prefix import FillerHasher, token_block_hash

    rng = np.random.default_rng(bs)
    filler = rng.integers(0, 100_000, 997).astype(np.int32)
    s = min(4, bs)
    lengths = np.full(s, bs // s) + (np.arange(s) < bs % s)
    starts = np.cumsum(lengths) - lengths
    ext = np.concatenate([filler, filler[: int(lengths.max())]])
    offsets = rng.integers(0, filler.size, (200, s)).astype(np.uint32)
    offsets[0] = filler.size - 1  # sub-blocks that wrap around the end of the filler
    tokens = np.concatenate(
        [ext[offsets[:, j, None].astype(np.int64) + np.arange(lengths[j])] for j in range(s)],
        axis=1,
    )
    assert np.array_equal(
        FillerHasher(ext).hashes(offsets, starts, lengths), token_block_hash(tokens)
    )


@pytest.mark.parametrize(
    "corpus", [*both_profiles(traces=4, seed=9), truncated()], ids=lambda p: p.name
)
def test_vectorised_new_keys_equal_the_call_by_call_walk(corpus):
    from weka_assets.replay.unbounded import KeyWalker, row_content_hashes, trace_new_keys

    ds = decoded(corpus)
    content = row_content_hashes(ds)
    walker = KeyWalker(ds, content)
    for sl in ds.trace_slices():
        calls = np.arange(sl.start, sl.stop)
        if not calls.size:
            continue
        new, lengths, lead = trace_new_keys(ds, calls, content)
        at = 0
        for j, i in enumerate(calls.tolist()):
            keys, k0 = walker.keys(i)
            assert k0 == lead[j]
            assert np.array_equal(new[at : at + lengths[j]], keys[k0:])
            at += lengths[j]


@pytest.mark.parametrize(
    "corpus", [*both_profiles(traces=4, seed=9), truncated()], ids=lambda p: p.name
)
def test_every_calls_keys_equal_the_call_by_call_walk(corpus):
    """`token_block_keys` (the capacity sweep's keys: new keys vectorised per trace, lead keys
    copied from the predecessor) gives every call exactly the keys the walk gives it."""
    from weka_assets.replay.unbounded import KeyWalker, row_content_hashes, token_block_keys

    ds = decoded(corpus)
    content = row_content_hashes(ds)
    walker = KeyWalker(ds, content)
    # the walk hands a call's buffer on to its successor: each call's keys copied as given
    walked = [walker.keys(i)[0].copy() for i in range(ds.n_calls)]
    keys, lengths = token_block_keys(ds)
    assert lengths.tolist() == [k.size for k in walked]
    assert np.array_equal(keys, np.concatenate(walked))
    assert (lengths > 0).sum() > 10 and keys.size > 1000  # a corpus with something to compare


def test_keys_shared_across_traces_are_counted_through_the_spill_buckets():
    from weka_assets.replay.unbounded import _KeyBuckets

    rng = np.random.default_rng(3)
    a = np.unique(rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64))
    b = np.concatenate([a[:700], np.unique(rng.integers(0, 2**64 - 1, 3000, dtype=np.uint64))])
    c = np.concatenate([a[:100], b[-50:]])
    with _KeyBuckets() as buckets:
        for keys in (a, b, c):
            buckets.add(keys.copy())
        # a key in k traces counts k - 1
        assert buckets.repeated() == 700 + 100 + 50


def test_replay_in_small_shards_across_workers_equals_one_pass(monkeypatch):
    import weka_assets.replay.unbounded as unbounded

    ds = decoded(synthetic("semianalysis", traces=6, seed=4))
    whole, cf_whole = replay_unbounded(ds)
    monkeypatch.setattr(unbounded, "SHARD_CALLS", 40)
    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "2")
    assert len(unbounded._trace_shards(ds, 40)) >= 2
    sharded, cf = replay_unbounded(ds)
    assert sharded.model_dump() == whole.model_dump()
    for name in ("hits", "full_hits", "token_hits"):
        assert np.array_equal(getattr(cf, name), getattr(cf_whole, name))
