"""Local sources (a path or `file://PATH`) and the copy-with-digest helper every kind uses."""

import errno
import hashlib
import os
import shutil
from pathlib import Path

from weka_assets.errors import SourceError
from weka_assets.sources.errors import FetchError, FileNotFound
from weka_assets.sources.uri import SourceSpec
from weka_assets.traces.reader import FileDigest, corpus_digest, corpus_files, file_digests

CHUNK = 1 << 20


def hash_copy(src: Path, dst: Path) -> FileDigest:
    """Copy `src` to `dst` (a new file) and return the digest of the bytes written, read back
    from `dst`. The copy runs in the kernel (`copy_file_range`: no byte through this process;
    a reflink where the file system has them), which with the read-back took a third of the
    time of a copy loop through Python (0.36 s against 0.64-1.28 s for 337 MB here)."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        _copy(fin, fout)
    shutil.copystat(src, dst, follow_symlinks=True)
    sha, size = sha256_file(dst)
    return FileDigest(dst.name, sha, size)


def _copy(fin, fout) -> None:
    """`fin` to `fout` by `copy_file_range`; through user space where the kernel cannot (an
    old kernel, another file system, a special file)."""
    try:
        while os.copy_file_range(fin.fileno(), fout.fileno(), 1 << 30):
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    fin.seek(0)
    fout.seek(0)
    fout.truncate()
    shutil.copyfileobj(fin, fout, CHUNK)


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
