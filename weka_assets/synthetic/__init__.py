"""Deterministic synthetic trace corpora, for tests and benchmarks without real data."""

from weka_assets.synthetic.generator import (
    BLOCK_SIZE,
    PROFILES,
    SIZES,
    Profile,
    Size,
    generate_corpus,
    iter_corpus,
    write_corpus,
)

__all__ = [
    "BLOCK_SIZE",
    "PROFILES",
    "SIZES",
    "Profile",
    "Size",
    "generate_corpus",
    "iter_corpus",
    "write_corpus",
]
