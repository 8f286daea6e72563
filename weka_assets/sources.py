"""Where a corpus comes from: a local path, or a built-in synthetic corpus.

`builtin:NAME` corpora are generated deterministically by `weka_assets.synthetic` and written
once under a cache folder, so the whole chain runs with no network.
"""

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


def builtin_path(name: str, cache_dir: Path | str) -> Path:
    """Generate (once) and return the `.jsonl` of a built-in corpus."""
    from weka_assets.synthetic import iter_corpus, write_corpus

    if name not in BUILTIN_CORPORA:
        raise SourceError(f"unknown built-in corpus {name!r} (known: {', '.join(BUILTIN_CORPORA)})")
    spec = BUILTIN_CORPORA[name]
    tag = hashlib.sha256(repr(spec).encode()).hexdigest()[:12]
    out = Path(cache_dir) / f"{name}-{tag}" / "traces.jsonl"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_corpus(iter_corpus(spec.profile, spec.traces, spec.seed, spec.size), out)
    return out


def resolve_source(uri: str, cache_dir: Path | str) -> Path:
    """A source URI or path -> a local corpus path (folder of *.json, .json, or .jsonl[.gz])."""
    if uri.startswith("builtin:"):
        return builtin_path(uri.removeprefix("builtin:"), cache_dir)
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    if "://" in uri:
        raise SourceError(
            f"{uri}: unsupported source (use a local path, file://PATH or builtin:NAME)"
        )
    path = Path(uri).expanduser()
    if not path.exists():
        raise SourceError(f"{uri}: no such file or folder")
    return path
