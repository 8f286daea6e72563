"""`resolve_revision` (cheap: what the URI points at now) and `fetch` (download, verify,
publish an immutable snapshot), over every kind of source.

Publishing: the files are written into `out_dir/.tmp-<random>/`, digested, and the folder is
renamed to `out_dir/<corpus sha256>/` in one step. A name without the `.tmp-` prefix is only
ever a complete snapshot; an existing one is reused (after checking its file names and sizes);
a failure removes the temporary folder and leaves every earlier snapshot as it was.
"""

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from weka_assets.sources import builtin, hf, local, s3
from weka_assets.sources.errors import FetchError, SourceError
from weka_assets.sources.uri import SourceSpec, parse_source
from weka_assets.traces.reader import JSONL_SUFFIXES, FileDigest, corpus_digest, scan_lines

TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class FetchResult:
    """A published snapshot of a source: where it is and what it holds."""

    uri: str
    kind: str  # "hf" | "s3" | "local" | "builtin"
    revision: str  # immutable: Hub commit sha; S3 etag[;version] / etags:<sha256>; sha256:<...>
    path: Path  # a corpus path for weka_assets.traces.reader: the .jsonl[.gz] file or a folder
    files: list[FileDigest] = field(default_factory=list)
    sha256: str = ""  # corpus_digest(files): also the snapshot folder's name
    bytes: int = 0
    traces: int = 0

    def as_json(self) -> dict:
        return {
            "uri": self.uri,
            "kind": self.kind,
            "revision": self.revision,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "traces": self.traces,
            "path": str(self.path),
            "files": [{"name": f.name, "sha256": f.sha256, "bytes": f.bytes} for f in self.files],
        }


def _spec(uri: str | SourceSpec) -> SourceSpec:
    return uri if isinstance(uri, SourceSpec) else parse_source(uri)


def resolve_revision(
    uri: str | SourceSpec,
    *,
    s3_options: dict | None = None,
    token: str | None = None,
) -> str:
    """What the URI points at now, without downloading the corpus.

    HF: the commit sha of the revision (one request; the file must exist there). S3:
    `etag:<etag>[;version:<id>]` from a HEAD, or `etags:<sha256>` over a prefix's objects.
    Local: `sha256:<corpus digest>` (reads the bytes). Builtin: `spec:<sha256 of the generator
    settings>` (nothing is generated; `fetch` reports the corpus digest instead).
    """
    spec = _spec(uri)
    if spec.kind == "hf":
        return hf.resolve(spec, token=token)
    if spec.kind == "s3":
        return s3.resolve(spec, s3_options=s3_options)
    if spec.kind == "local":
        return local.resolve(spec)
    return "spec:" + builtin.spec_digest(spec.name)


def count_traces(path: Path) -> int:
    """Records in a corpus: non-blank lines of a .jsonl[.gz], or the *.json files of a folder."""
    if path.is_dir():
        return sum(1 for p in path.iterdir() if p.suffix == ".json" and p.is_file())
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    if path.name.endswith(JSONL_SUFFIXES):
        # newlines found by numpy, 8 MiB at a time: a line is never copied whole (reading
        # 860 KB lines through Python took 0.34 s for 337 MB); only short lines can be blank
        with open(path, "rb") as fh:
            return sum(
                1
                for _, offset, length in scan_lines(path)
                if length > 64 or os.pread(fh.fileno(), length, offset).strip()
            )
    return 1


def _check_existing(uri: str, target: Path, files: list[FileDigest]) -> None:
    have = sorted((p.name, p.stat().st_size) for p in target.iterdir() if p.is_file())
    want = sorted((f.name, f.bytes) for f in files)
    if have != want:
        raise SourceError(
            f"{uri}: snapshot {target} exists but does not hold the expected files "
            f"(have {have}, want {want}); remove it and fetch again"
        )


def _publish(uri: str, staging: Path, out_dir: Path, sha: str, files: list[FileDigest]) -> Path:
    target = out_dir / sha
    if target.exists():
        _check_existing(uri, target, files)
        return target
    try:
        staging.rename(target)
    except OSError:
        if not target.exists():
            raise
        _check_existing(uri, target, files)  # a concurrent fetch published it first
    return target


def fetch(
    uri: str | SourceSpec,
    out_dir: Path | str,
    *,
    s3_options: dict | None = None,
    token: str | None = None,
    cache_dir: Path | str | None = None,
) -> FetchResult:
    """Download the corpus a URI names, verify it, publish it as `out_dir/<sha256>/`.

    `cache_dir`: the Hugging Face cache (default: the client's, `$HF_HUB_CACHE`), or where
    built-in corpora are generated once (default: generated straight into the snapshot).
    """
    spec = _spec(uri)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out_dir))
    try:
        revision, files, single = _download(spec, staging, s3_options, token, cache_dir)
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise FetchError(spec.uri, "two objects share one file name")
        staged = staging / files[0].name if single else staging
        traces = count_traces(staged)
        sha = corpus_digest(files)
        target = _publish(spec.uri, staging, out_dir, sha, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if revision is None:
        revision = f"sha256:{sha}"
    return FetchResult(
        uri=spec.uri,
        kind=spec.kind,
        revision=revision,
        path=target / files[0].name if single else target,
        files=files,
        sha256=sha,
        bytes=sum(f.bytes for f in files),
        traces=traces,
    )


def _download(spec: SourceSpec, staging: Path, s3_options, token, cache_dir):
    """Files into `staging`: (revision or None for the content digest, digests, single?)."""
    if spec.kind == "hf":
        commit, digest = hf.download(spec, staging, token=token, cache_dir=cache_dir)
        return commit, [digest], True
    if spec.kind == "s3":
        return s3.download(spec, staging, s3_options=s3_options)
    if spec.kind == "local":
        files, single = local.download(spec, staging)
        return None, files, single
    name = builtin.BUILTIN_FILENAME
    if cache_dir is not None:
        src = builtin.builtin_path(spec.name, cache_dir)
        return None, [local.hash_copy(src, staging / name)], True
    builtin.write_builtin(spec.name, staging / name)
    sha, size = local.sha256_file(staging / name)
    return None, [FileDigest(name, sha, size)], True


def resolve_source(uri: str, cache_dir: Path | str) -> Path:
    """A local source or `builtin:NAME` -> a local corpus path, without copying (as before
    `fetch` existed). Remote URIs raise `SourceError`: use `fetch(uri, out_dir)`."""
    if uri.startswith("builtin:"):
        return builtin.builtin_path(uri.removeprefix("builtin:"), cache_dir)
    spec = parse_source(uri)
    if spec.kind in ("hf", "s3"):
        raise SourceError(f"{uri}: a remote source: use weka_assets.sources.fetch(uri, out_dir)")
    path = spec.path
    if not path.exists():
        raise SourceError(f"{uri}: no such file or folder")
    return path
