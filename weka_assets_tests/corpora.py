"""Corpora and decoded datasets shared by the tests, built once per test session.

Plain cached functions rather than fixtures, so any test module can use them; everything is
written under one temporary folder removed at exit.
"""

import atexit
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path

from weka_assets.decoding.dataset import DecodedDataset, open_dataset
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.pipeline import decode_corpus
from weka_assets.synthetic import iter_corpus, write_corpus

REAL_SAMPLE = (
    Path(__file__).resolve().parents[1].parent / "shared" / "real-traces" / "kv-cache-tester-sample"
)
WORK = Path(tempfile.mkdtemp(prefix="weka-tests-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)


@cache
def synthetic(profile: str, traces: int = 6, seed: int = 7, size: str = "small") -> Path:
    """A synthetic corpus as one .jsonl file."""
    return write_corpus(
        iter_corpus(profile, traces, seed, size),
        WORK / "corpora" / f"{profile}-{traces}-{seed}-{size}.jsonl",
    )


def both_profiles(traces: int, seed: int) -> list[Path]:
    """A synthetic corpus of each profile, plus the real sample when it is there."""
    out = [synthetic(p, traces=traces, seed=seed) for p in ("semianalysis", "kv-cache-tester")]
    if REAL_SAMPLE.is_dir():
        out.append(REAL_SAMPLE)
    return out


@cache
def decoded(corpus: Path, scope_policy: str = "trace", seed: int = 0) -> DecodedDataset:
    out = decode_corpus(
        corpus,
        WORK / "datasets",
        DecodeSettings(scope_policy=scope_policy, seed=seed),
        measure_drift=False,
    )
    return open_dataset(out.path)


@cache
def truncated(name: str = "truncated") -> Path:
    """A synthetic corpus with some hash lists cut short (unhashed tails of whole blocks)."""
    out = []
    lines = synthetic("kv-cache-tester", traces=4, seed=9).read_text().splitlines()
    for k, line in enumerate(lines):
        t = json.loads(line)
        for r in t["requests"][1::3]:
            if r["type"] != "subagent" and len(r["hash_ids"]) > 4:
                r["hash_ids"] = r["hash_ids"][: len(r["hash_ids"]) - 2 - k % 3]
        out.append(json.dumps(t))
    path = WORK / "corpora" / f"{name}.jsonl"
    path.write_text("\n".join(out) + "\n")
    return path
