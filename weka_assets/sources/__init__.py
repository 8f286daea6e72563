"""Where a corpus comes from: Hugging Face dataset repos, S3, local paths and built-in
synthetic corpora, behind one URI syntax (`weka_assets.sources.uri`).

- `resolve_revision(uri)`: what the URI points at now (cheap, no download).
- `fetch(uri, out_dir)`: download, verify, publish an immutable `out_dir/<sha256>/` snapshot.
- `load_registry(path)`: the YAML list of corpora (`corpora.yaml`).
- `resolve_source(uri, cache_dir)`: local paths and `builtin:NAME` only, without copying.

No Dagster here: the asset layer (weka_assets.defs) calls these plain functions.
"""

from weka_assets.sources.builtin import BUILTIN_CORPORA, BuiltinCorpus, builtin_path
from weka_assets.sources.errors import (
    AuthenticationRefused,
    BucketNotFound,
    ChecksumMismatch,
    FetchError,
    FileNotFound,
    IntegrityError,
    NetworkUnreachable,
    NotCached,
    RegistryError,
    RepoNotFound,
    RevisionNotFound,
    SourceError,
    SourceNotFound,
    SourceURIError,
    TruncatedDownload,
)
from weka_assets.sources.fetch import FetchResult, fetch, resolve_revision, resolve_source
from weka_assets.sources.registry import (
    CorpusEntry,
    Registry,
    default_registry_path,
    load_registry,
    parse_registry,
)
from weka_assets.sources.uri import SourceSpec, parse_source

__all__ = [
    "BUILTIN_CORPORA",
    "AuthenticationRefused",
    "BucketNotFound",
    "BuiltinCorpus",
    "ChecksumMismatch",
    "CorpusEntry",
    "FetchError",
    "FetchResult",
    "FileNotFound",
    "IntegrityError",
    "NetworkUnreachable",
    "NotCached",
    "Registry",
    "RegistryError",
    "RepoNotFound",
    "RevisionNotFound",
    "SourceError",
    "SourceNotFound",
    "SourceSpec",
    "SourceURIError",
    "TruncatedDownload",
    "builtin_path",
    "default_registry_path",
    "fetch",
    "load_registry",
    "parse_registry",
    "parse_source",
    "resolve_revision",
    "resolve_source",
]
