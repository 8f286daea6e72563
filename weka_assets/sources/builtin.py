"""`builtin:NAME`: synthetic corpora generated deterministically by `weka_assets.synthetic`,
so the whole chain runs with no network."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from weka_assets.errors import SourceError


@dataclass(frozen=True)
class BuiltinCorpus:
    profile: str
    traces: int
    seed: int
    size: str
    description: str


BUILTIN_CORPORA = {
    "sample": BuiltinCorpus(
        profile="semianalysis",
        traces=12,
        seed=4,
        size="full",
        description="12 synthetic traces in the SemiAnalysis convention, realistic sizes (contexts past 100k tokens)",
    ),
    "sample-kvt": BuiltinCorpus(
        profile="kv-cache-tester",
        traces=12,
        seed=4,
        size="small",
        description="12 small synthetic traces in the kv-cache-tester convention",
    ),
}

BUILTIN_FILENAME = "traces.jsonl"


def unknown_builtin(name: str) -> str:
    return f"unknown built-in corpus {name!r} (known: {', '.join(BUILTIN_CORPORA)})"


def builtin_spec(name: str) -> BuiltinCorpus:
    if name not in BUILTIN_CORPORA:
        raise SourceError(unknown_builtin(name))
    return BUILTIN_CORPORA[name]


def spec_digest(name: str) -> str:
    """sha256 of the corpus's generator settings (cheap: nothing is generated)."""
    return hashlib.sha256(repr(builtin_spec(name)).encode()).hexdigest()


def write_builtin(name: str, out: Path) -> Path:
    """Generate the corpus into the file `out` (.jsonl), written aside and renamed."""
    from weka_assets.synthetic import iter_corpus, write_corpus

    spec = builtin_spec(name)
    return write_corpus(iter_corpus(spec.profile, spec.traces, spec.seed, spec.size), out)


def builtin_path(name: str, cache_dir: Path | str) -> Path:
    """Generate (once) and return the `.jsonl` of a built-in corpus."""
    tag = spec_digest(name)[:12]
    out = Path(cache_dir) / f"{name}-{tag}" / BUILTIN_FILENAME
    if not out.is_file():
        write_builtin(name, out)
    return out
