"""The vectorised cache primitives on hand-computed examples."""

import numpy as np

from weka_assets.replay.prefix import chain_keys, leading_hits


def test_leading_hits_counts_only_the_leading_run_of_earlier_keys():
    calls = [[1, 2, 3], [1, 2, 4, 5], [], [1, 9, 2], [1, 2, 4, 5, 6], [6, 1]]
    keys = np.concatenate([np.array(c, dtype=np.int64) for c in calls])
    got = leading_hits(keys, np.array([len(c) for c in calls]))
    assert got.tolist() == [0, 2, 0, 1, 4, 2]


def test_a_key_repeated_inside_one_call_is_not_a_hit():
    assert leading_hits(np.array([7, 7, 7]), np.array([3])).tolist() == [0]


def test_chain_keys_depend_on_the_whole_prefix():
    content = np.array([10, 20, 30, 99, 20, 30, 10, 20, 31], dtype=np.uint64)
    keys = chain_keys(content, np.array([3, 3, 3])).reshape(3, 3)
    # same block content after a different prefix: a different key
    assert keys[0, 1] != keys[1, 1] and keys[0, 2] != keys[1, 2]
    # the same prefix: the same keys, up to where it diverges
    assert keys[0, 0] == keys[2, 0] and keys[0, 1] == keys[2, 1] and keys[0, 2] != keys[2, 2]
    # chaining per call: the first call alone gives the same keys
    assert (chain_keys(content[:3], np.array([3])) == keys[0]).all()
