"""Local sources (a path or `file://PATH`) and the copy-with-digest helper every kind uses."""

import hashlib
import shutil
from pathlib import Path

from weka_assets.errors import SourceError
from weka_assets.sources.errors import FetchError, FileNotFound
from weka_assets.sources.uri import SourceSpec
from weka_assets.traces.reader import FileDigest, corpus_digest, corpus_files, file_digests

CHUNK = 1 << 20


def hash_copy(src: Path, dst: Path) -> FileDigest:
    """Copy `src` to `dst` (a new file) and return the digest of the bytes written."""
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            fout.write(chunk)
    shutil.copystat(src, dst, follow_symlinks=True)
    return FileDigest(dst.name, h.hexdigest(), size)


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def local_files(spec: SourceSpec) -> list[Path]:
    """The corpus files at a local source (FileNotFound if missing, FetchError if no corpus)."""
    path = spec.path
    if not path.exists():
        raise FileNotFound(spec.uri, f"no such file or folder: {path}")
    try:
        return corpus_files(path)
    except SourceError as exc:
        raise FetchError(spec.uri, str(exc)) from None


def resolve(spec: SourceSpec) -> str:
    """`sha256:<corpus digest>` of the bytes at the path (reads every file)."""
    local_files(spec)
    return "sha256:" + corpus_digest(file_digests(spec.path))


def download(spec: SourceSpec, staging: Path) -> tuple[list[FileDigest], bool]:
    """Copy the corpus files into `staging`; (digests, single file?)."""
    files = local_files(spec)
    single = not spec.path.is_dir()
    return [hash_copy(f, staging / f.name) for f in files], single
