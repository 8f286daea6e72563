"""replay_benchmark's capacity sweep stays bounded: whole leading traces up to a block budget."""

import numpy as np

from weka_assets.replay.capacity import capacity_curve, capacity_traces
from weka_assets_tests.corpora import decoded, synthetic


def test_the_budget_picks_whole_leading_traces():
    ds = decoded(synthetic("semianalysis", traces=6, seed=2))
    blocks = ds.calls["tokens_in"] // ds.calls["block_size"]
    per_trace = [int(blocks[sl].sum()) for sl in ds.trace_slices()]
    assert capacity_traces(ds, 0) == 6
    assert capacity_traces(ds, 1) == 1  # never none
    assert capacity_traces(ds, per_trace[0]) == 1
    assert capacity_traces(ds, per_trace[0] + per_trace[1]) == 2
    assert capacity_traces(ds, per_trace[0] + per_trace[1] - 1) == 1
    assert capacity_traces(ds, sum(per_trace)) == 6


def test_a_head_of_the_dataset_sweeps_like_a_dataset_of_those_traces(tmp_path):
    corpus = synthetic("kv-cache-tester", traces=5, seed=4)
    ds = decoded(corpus)
    head = ds.head(2)
    assert len(head.traces) == 2 and head.n_calls == ds.trace_slices()[1].stop
    alone = tmp_path / "two.jsonl"
    alone.write_bytes(b"".join(corpus.read_bytes().splitlines(keepends=True)[:2]))
    two = decoded(alone)
    caps = [0, 50, 200, 1000]
    a, b = capacity_curve(head, caps), capacity_curve(two, caps)
    assert [p.hits for p in a.points] == [p.hits for p in b.points]
    assert (
        a.blocks_total == b.blocks_total and a.blocks_total < capacity_curve(ds, caps).blocks_total
    )
    assert np.array_equal(head.calls["tokens_in"], two.calls["tokens_in"])
