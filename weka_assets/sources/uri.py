"""Source URIs: parsing and validation into a `SourceSpec` (no I/O).

Accepted forms:

- `hf://datasets/ORG/NAME[@REVISION][/PATH_IN_REPO]`: one file of a Hugging Face dataset
  repo (default `traces.jsonl`). REVISION is a branch, a tag or a 40-hex commit; a revision
  holding `/` (`refs/pr/1`) is written percent-encoded (`refs%2Fpr%2F1`).
- `s3://BUCKET/KEY.jsonl[.gz]` (or `KEY.json`): one object; `?versionId=ID` pins a version.
- `s3://BUCKET/PREFIX/` (trailing slash): every `*.json` object directly under the prefix
  (one trace per object, like a local folder).
- `builtin:NAME`: a synthetic corpus (see `weka_assets.sources.builtin`).
- `file://PATH` or a plain local path.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote

from weka_assets.sources.builtin import BUILTIN_CORPORA, unknown_builtin
from weka_assets.sources.errors import SourceURIError

Kind = Literal["hf", "s3", "local", "builtin"]

DEFAULT_HF_FILE = "traces.jsonl"
CORPUS_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_HF_PART_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source URI. `uri` is the text as given; `canonical` a normalised form."""

    uri: str
    kind: Kind
    # hf
    repo_id: str | None = None
    revision: str | None = None  # hf: branch/tag/commit as asked (None: main); s3: versionId
    path_in_repo: str | None = None
    # s3
    bucket: str | None = None
    key: str | None = None  # an object key, or a prefix ('' or ending in '/')
    # local
    path: Path | None = None
    # builtin
    name: str | None = None

    @property
    def is_prefix(self) -> bool:
        return self.kind == "s3" and (self.key == "" or self.key.endswith("/"))

    @property
    def is_pinned(self) -> bool:
        """True when the URI itself names immutable bytes (a Hub commit, an S3 version)."""
        if self.kind == "hf":
            return self.revision is not None and bool(COMMIT_RE.match(self.revision))
        if self.kind == "s3":
            return self.revision is not None
        return False

    @property
    def canonical(self) -> str:
        if self.kind == "hf":
            rev = f"@{quote(self.revision, safe='')}" if self.revision is not None else ""
            return f"hf://datasets/{self.repo_id}{rev}/{self.path_in_repo}"
        if self.kind == "s3":
            ver = f"?versionId={self.revision}" if self.revision is not None else ""
            return f"s3://{self.bucket}/{self.key}{ver}"
        if self.kind == "builtin":
            return f"builtin:{self.name}"
        return str(self.path)

    def __str__(self) -> str:
        return self.uri


def _check_relative(uri: str, what: str, path: str) -> None:
    if path.startswith("/") or "\\" in path:
        raise SourceURIError(uri, f"{what} must be a relative path with '/' separators: {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise SourceURIError(uri, f"{what} has an empty, '.' or '..' segment: {path!r}")
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        raise SourceURIError(uri, f"{what} holds a control character")


def _check_corpus_file(uri: str, what: str, path: str) -> None:
    if not path.endswith(CORPUS_FILE_SUFFIXES):
        raise SourceURIError(
            uri, f"{what} {path!r} is not a corpus file (expected .jsonl, .jsonl.gz or .json)"
        )


def _parse_hf(uri: str, rest: str) -> SourceSpec:
    form = "expected hf://datasets/ORG/NAME[@REVISION][/PATH_IN_REPO]"
    if not rest.startswith("datasets/"):
        kind = rest.split("/", 1)[0] or "(none)"
        raise SourceURIError(uri, f"only dataset repos are supported, not {kind!r} ({form})")
    parts = rest.removeprefix("datasets/").split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise SourceURIError(uri, f"missing ORG/NAME ({form})")
    org, name_rev = parts[0], parts[1]
    name, at, rev_text = name_rev.partition("@")
    if "@" in org:
        raise SourceURIError(uri, f"'@REVISION' goes after the repo name ({form})")
    for label, value in (("organisation", org), ("dataset name", name)):
        if not _HF_PART_RE.match(value) or "--" in value or ".." in value:
            raise SourceURIError(uri, f"invalid {label} {value!r} ({form})")
    revision = None
    if at:
        revision = unquote(rev_text)
        if not revision:
            raise SourceURIError(uri, "empty revision after '@'")
        if any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in revision) or ".." in revision:
            raise SourceURIError(uri, f"invalid revision {revision!r}")
        # git's ref-name rules for what could act as a path (the client's cache keeps
        # refs/<revision>): no leading or trailing '/', no empty segment, no segment starting
        # with '.', no backslash
        if "\\" in revision or any(p == "" or p.startswith(".") for p in revision.split("/")):
            raise SourceURIError(
                uri,
                f"invalid revision {revision!r}: a branch, tag or commit has no leading or "
                "trailing '/', empty segment, segment starting with '.' or backslash",
            )
    path = parts[2] if len(parts) == 3 else ""
    if path == "":
        path = DEFAULT_HF_FILE
    elif path.endswith("/"):
        raise SourceURIError(uri, "PATH_IN_REPO must name one file (e.g. traces.jsonl)")
    _check_relative(uri, "PATH_IN_REPO", path)
    _check_corpus_file(uri, "PATH_IN_REPO", path)
    return SourceSpec(uri, "hf", repo_id=f"{org}/{name}", revision=revision, path_in_repo=path)


def _parse_s3(uri: str, rest: str) -> SourceSpec:
    form = "expected s3://BUCKET/KEY.jsonl[.gz] or s3://BUCKET/PREFIX/"
    bucket, slash, key = rest.partition("/")
    if not bucket:
        raise SourceURIError(uri, f"missing bucket ({form})")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise SourceURIError(uri, f"invalid bucket name {bucket!r}")
    if not slash:
        raise SourceURIError(uri, f"missing key ({form}; a whole bucket is s3://{bucket}/)")
    key, q, query = key.partition("?")
    version = None
    if q:
        name, eq, value = query.partition("=")
        if name != "versionId" or not eq or not value or "&" in value:
            raise SourceURIError(uri, f"unsupported query {query!r} (only ?versionId=ID)")
        version = unquote(value)
    if key.startswith("/"):
        raise SourceURIError(uri, "key starts with '/' (double slash after the bucket?)")
    if key == "" or key.endswith("/"):
        if version is not None:
            raise SourceURIError(uri, "?versionId applies to one object, not to a prefix")
        if key:
            _check_relative(uri, "prefix", key.rstrip("/"))
        return SourceSpec(uri, "s3", bucket=bucket, key=key)
    _check_relative(uri, "key", key)
    _check_corpus_file(uri, "key", key)
    return SourceSpec(uri, "s3", bucket=bucket, key=key, revision=version)


def parse_source(uri: str) -> SourceSpec:
    """Parse and validate a source URI; `SourceURIError` names the URI and what is wrong."""
    if not isinstance(uri, str):
        raise SourceURIError(repr(uri), "a source must be a string")
    text = uri.strip()
    if not text:
        raise SourceURIError(repr(uri), "empty source")
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        if name not in BUILTIN_CORPORA:
            raise SourceURIError(uri, unknown_builtin(name))
        return SourceSpec(uri, "builtin", name=name)
    m = _SCHEME_RE.match(text)
    if m is None:
        return SourceSpec(uri, "local", path=Path(text).expanduser())
    scheme = m.group(1).lower()
    rest = text[m.end() :]
    if scheme == "hf":
        return _parse_hf(uri, rest)
    if scheme == "s3":
        return _parse_s3(uri, rest)
    if scheme == "file":
        if not rest:
            raise SourceURIError(uri, "empty path after file://")
        if rest.startswith("localhost/"):
            rest = rest.removeprefix("localhost")
        return SourceSpec(uri, "local", path=Path(unquote(rest)).expanduser())
    raise SourceURIError(
        uri,
        f"unsupported scheme {scheme!r} (use hf://datasets/..., s3://..., file://PATH, "
        "a local path or builtin:NAME)",
    )
