"""vLLM's block pool model (`replay.block_pool`): each of vLLM 0.32's rules on a hand-made case
that fails when the rule is broken, and the `vllm` policy over a timeline against the plain
leading-run replay where the cache never fills. The live tests check the same model against a
real server (test_live_bounded)."""

import numpy as np
import pytest

from weka_assets.replay.block_pool import BlockPool, ServiceModel, vllm_call_hits
from weka_assets.replay.live import PoolPredictor

B = 4


def keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{j}" for j in range(n)]


def test_null_block_and_capacity():
    pool = BlockPool(5, B)
    assert pool.usable_blocks == 4 and list(pool.free) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="null block"):
        BlockPool(1, B)


def test_the_last_token_is_always_computed():
    pool = BlockPool(20, B)
    assert pool.start("a", keys("a", 2), 8) == 0
    pool.finish("a", 1)
    # a repeated 8-token prompt hits (8 - 1) // 4 = 1 block, a 9-token one 2
    assert pool.leading_hits(keys("a", 2), 8) == 1
    assert pool.leading_hits(keys("a", 2), 9) == 2


def test_finished_request_is_evicted_tail_first():
    pool = BlockPool(4, B)  # 3 data blocks
    pool.start("a", keys("a", 3), 13)  # 3 full blocks + a partial one: needs 4 > 3
    assert pool.running == {}
    assert pool.start("a", keys("a", 3), 12) == 0
    pool.finish("a", 1)  # 12 + 1 - 1 tokens: no generated block
    assert list(pool.free) == [3, 2, 1]  # reverse order: the tail block is reused first
    assert pool.start("b", keys("b", 1), 4) == 0  # takes block 3, evicting a2
    assert pool.leading_hits(keys("a", 3), 13) == 2
    assert pool.evicted == 1


def test_partial_blocks_are_reused_first_and_hold_no_key():
    pool = BlockPool(6, B)
    pool.start("a", keys("a", 2), 10)  # 2 full + 1 partial
    pool.finish("a", 1)
    assert list(pool.free)[:1] == [3]  # the partial block, put at the front
    assert pool.start("b", keys("b", 1), 4) == 0  # takes the partial block: nothing evicted
    assert pool.evicted == 0 and pool.leading_hits(keys("a", 2), 12) == 2


def test_running_requests_pin_their_blocks():
    pool = BlockPool(5, B)  # 4 data blocks
    assert pool.start("a", keys("a", 2), 8) == 0
    assert pool.start("b", keys("b", 3), 12) is None  # 3 more blocks: only 2 free, a waits
    assert pool.start("c", keys("c", 2), 8) == 0
    assert pool.start("d", keys("a", 2), 9) is None  # shares a's blocks, needs 1 more: none free
    pool.finish("c", 1)
    assert pool.start("d", keys("a", 2), 9) == 2  # a's blocks still pinned and shared
    assert pool.ref[pool.running["a"][0][0]] == 2


def test_generated_blocks_take_room():
    pool = BlockPool(5, B)
    pool.start("a", keys("a", 1), 4)
    pool.finish("a", 9)  # 4 + 9 - 1 = 12 tokens: 3 blocks, 2 of them generated tokens
    keyed = sorted(str(k) for k in pool.holders)
    assert len(keyed) == 3 and "a0" in keyed
    pool.start("b", keys("b", 1), 4)  # the LRU end: the generated tail goes first
    assert pool.leading_hits(keys("a", 1), 5) == 1


def test_duplicate_blocks_of_one_key():
    pool = BlockPool(10, B)
    pool.start("a", keys("a", 2), 8)
    pool.finish("a", 1)
    # the whole prompt cached: 1 block hit, the last one recomputed into a second block
    assert pool.start("b", keys("a", 2), 8) == 1
    assert len(pool.holders["a1"]) == 2


def test_pool_predictor_waits_like_the_scheduler():
    pred = PoolPredictor(5, B)
    pred.send(1, keys("a", 3), 12)
    pred.send(2, keys("a", 3), 20)  # 2 more blocks, 1 free: it waits for call 1
    assert pred.hits == {1: 0}
    pred.finish(1, 1)
    assert pred.hits == {1: 0, 2: 3}


def test_vllm_policy_equals_the_leading_run_when_nothing_is_evicted():
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 6, 40)
    stems = rng.integers(0, 4, 40)  # calls of one stem share a growing prefix
    keys_, tokens = [], []
    for n, s in zip(lengths, stems, strict=True):
        keys_.extend(int(s) * 100 + j for j in range(n))
        tokens.append(int(n) * B + int(rng.integers(1 if n == 0 else 0, B)))
    flat = np.asarray(keys_, dtype=np.uint64)
    start = np.arange(40, dtype=np.float64) * 10.0  # calls never overlap
    out = np.ones(40, dtype=np.int64)
    hits = vllm_call_hits(flat, lengths, start, np.asarray(tokens), out, B, None)
    seen: set = set()
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for i in range(40):
        k = keys_[offsets[i] : offsets[i + 1]]
        run = 0
        while run < len(k) and k[run] in seen:
            run += 1
        assert hits[i] == min(run, (tokens[i] - 1) // B), i
        seen.update(k)
    # a pool of 3 blocks evicts: fewer hits, and never more than the unbounded figure
    small = vllm_call_hits(flat, lengths, start, np.asarray(tokens), out, B, 3)
    assert (small <= hits).all() and small.sum() < hits.sum()


def test_overlapping_calls_pin_blocks_in_the_policy():
    # two calls of 2 blocks at once in a pool of 3 data blocks: the second waits for the first
    flat = np.asarray([1, 2, 1, 2], dtype=np.uint64)
    lengths = np.asarray([2, 2])
    slow = ServiceModel(prefill_tokens_per_s=1.0, decode_tokens_per_s=1.0)
    hits = vllm_call_hits(flat, lengths, np.zeros(2), np.asarray([9, 9]), np.ones(2), B, 3, slow)
    assert hits.tolist() == [0, 2]  # it waited, then hit both blocks of the first


# ---- the compiled pool against the readable one ----------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from weka_assets.replay.block_pool import vllm_curve_hits, vllm_reference_hits  # noqa: E402


@st.composite
def prefix_calls(draw):
    """Calls whose keys grow prefixes of a few stems (chained keys), random prompt tails, output
    lengths and arrival gaps (ties included)."""
    n = draw(st.integers(1, 25))
    stems = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    lengths = draw(st.lists(st.integers(0, 7), min_size=n, max_size=n))
    tails = draw(st.lists(st.integers(0, B - 1), min_size=n, max_size=n))
    outs = draw(st.lists(st.integers(0, 3 * B), min_size=n, max_size=n))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 5.0]), min_size=n, max_size=n))
    keys = [s * 1000 + j for s, m in zip(stems, lengths, strict=True) for j in range(m)]
    tokens = [m * B + max(t, 1 if m == 0 else 0) for m, t in zip(lengths, tails, strict=True)]
    return (
        np.asarray(keys, dtype=np.uint64),
        np.asarray(lengths),
        np.cumsum(gaps),
        np.asarray(tokens),
        np.asarray(outs),
    )


@settings(deadline=None, max_examples=150)
@given(
    prefix_calls(),
    st.lists(st.integers(0, 40), min_size=1, max_size=4),
    st.sampled_from(
        [
            ServiceModel(),
            ServiceModel(prefill_tokens_per_s=20, decode_tokens_per_s=2, max_num_seqs=2),
        ]
    ),
    st.one_of(st.none(), st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0]), min_size=1)),
)
def test_the_compiled_pool_equals_the_readable_one(calls, capacities, service, measured):
    keys, lengths, start, tokens_in, tokens_out = calls
    # measured: each call's end given (a live run's): its arrival plus a drawn duration
    dur = None if measured is None else start + np.resize(np.asarray(measured), lengths.size)
    args = (keys, lengths, start, tokens_in, tokens_out, B)
    got = vllm_curve_hits(*args, [*capacities, None], service, ends=dur)
    bounded = vllm_curve_hits(*args, capacities, service, ends=dur)
    for c in [*capacities, None]:
        want = vllm_reference_hits(*args, c, service, ends=dur)
        assert got[c].tolist() == want.tolist(), c
        if c is not None:  # the largest pool asked need not be one that never fills
            assert bounded[c].tolist() == want.tolist(), c


def test_the_compiled_pool_on_a_decoded_corpus(tmp_path):
    from weka_assets.decoding.dataset import open_dataset
    from weka_assets.pipeline import decode_corpus
    from weka_assets.replay.accesses import timeline
    from weka_assets.synthetic import iter_corpus, write_corpus

    corpus = write_corpus(iter_corpus("kv-cache-tester", 5, 4, "small"), tmp_path / "c.jsonl")
    tl = timeline(open_dataset(decode_corpus(corpus, tmp_path / "ds", measure_drift=False).path))
    bs = int(tl.block_size[0])
    caps = [0, 3, 40, 200, 1000, None]
    slow = ServiceModel(prefill_tokens_per_s=2000, decode_tokens_per_s=5, max_num_seqs=4)
    for service in (ServiceModel(), slow):
        got = vllm_curve_hits(
            tl.keys, tl.lengths, tl.start_s, tl.tokens_in, tl.tokens_out, bs, caps, service
        )
        assert list(got) == caps
        for c in caps:
            want = vllm_reference_hits(
                tl.keys, tl.lengths, tl.start_s, tl.tokens_in, tl.tokens_out, bs, c, service
            )
            assert (got[c] == want).all(), (c, service)
        assert 0 < got[200].sum() < got[None].sum()  # the pool of 200 blocks evicted
