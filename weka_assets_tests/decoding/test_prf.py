"""The PRF is the documented chain of SplitMix64 steps, reproducible and order-independent."""

import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from weka_assets.decoding.prf import (
    BLOCK_DOMAIN,
    MASK,
    block_offsets,
    mix64,
    mix64_int,
    scope_word,
    tail_offset,
)

ids_st = st.lists(st.integers(0, 2**62), min_size=1, max_size=200)


def spec_offset(seed, scope, block_id, j, n):
    """The docstring's formula, step by step, on Python ints."""
    h = mix64_int(BLOCK_DOMAIN ^ seed)
    h = mix64_int(h ^ scope_word(scope))
    h = mix64_int(h ^ block_id)
    return mix64_int(h ^ (j + 1)) % n


def test_mix64_matches_splitmix64_known_values():
    # SplitMix64 with state 0 yields 0xE220A8397B1DCDAF: mix64(0 + golden gamma)
    assert mix64_int(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF
    xs = np.array([0, 1, 2**63, MASK], dtype=np.uint64)
    assert mix64(xs).tolist() == [mix64_int(int(x)) for x in xs]


@given(
    seed=st.integers(0, 2**64 - 1),
    scope=st.text(min_size=1, max_size=30),
    ids=ids_st,
    n=st.integers(1000, 10**6),
)
@settings(max_examples=60, deadline=None)
def test_vectorised_offsets_follow_the_documented_formula(seed, scope, ids, n):
    got = block_offsets(seed, scope, np.array(ids, dtype=np.int64), 4, n)
    for row, i in zip(got[:20], ids[:20], strict=False):
        assert row.tolist() == [spec_offset(seed, scope, i, j, n) for j in range(4)]


@given(ids=ids_st, data=st.data())
@settings(max_examples=60, deadline=None)
def test_offsets_do_not_depend_on_order_or_batching(ids, data):
    arr = np.array(ids, dtype=np.int64)
    whole = block_offsets(3, "t", arr, 4, 99991)
    perm = np.array(data.draw(st.permutations(range(arr.size))))
    assert (block_offsets(3, "t", arr[perm], 4, 99991) == whole[perm]).all()
    cut = data.draw(st.integers(0, arr.size))
    parts = np.concatenate(
        [block_offsets(3, "t", arr[:cut], 4, 99991), block_offsets(3, "t", arr[cut:], 4, 99991)]
    )
    assert (parts == whole).all()


def test_offsets_are_the_same_in_another_process():
    ids = np.arange(0, 5000, 7, dtype=np.int64)
    here = block_offsets(11, "trace-x", ids, 4, 123457)
    code = (
        "import numpy as np, sys;from weka_assets.decoding.prf import block_offsets;"
        "sys.stdout.write(block_offsets(11,'trace-x',np.arange(0,5000,7),4,123457).tobytes().hex())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert bytes.fromhex(other) == here.tobytes()


def test_tail_domain_is_separate_from_blocks():
    n = 2**61 - 1  # a large modulus keeps the raw draws visible
    tails = {tail_offset(0, "t", 0, k, n) for k in range(1000)}
    blocks = set(block_offsets(0, "t", np.arange(1000), 4, n).ravel().tolist())
    assert not tails & blocks
