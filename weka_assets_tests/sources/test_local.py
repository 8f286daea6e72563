"""Local paths, file:// and builtin: sources through fetch / resolve_revision."""

import os

import pytest

from weka_assets.sources import FetchResult, FileNotFound, fetch, resolve_revision
from weka_assets.sources.builtin import spec_digest
from weka_assets.synthetic import iter_corpus, write_corpus
from weka_assets.traces.reader import corpus_digest, file_digests, iter_records
from weka_assets_tests.corpora import synthetic


def _visible(out_dir):
    return sorted(p.name for p in out_dir.iterdir())


def test_local_jsonl_plain_path_and_file_uri(tmp_path):
    corpus = synthetic("semianalysis")
    digest = corpus_digest(file_digests(corpus))
    assert resolve_revision(str(corpus)) == f"sha256:{digest}"
    out = tmp_path / "raw"
    r = fetch(str(corpus), out)
    assert isinstance(r, FetchResult)
    assert (r.kind, r.revision, r.sha256) == ("local", f"sha256:{digest}", digest)
    assert r.path == out / digest / corpus.name
    assert r.path.read_bytes() == corpus.read_bytes()
    assert r.bytes == corpus.stat().st_size and r.traces == 6
    assert [f.name for f in r.files] == [corpus.name]
    assert sum(1 for rec in iter_records(r.path) if rec.trace is not None) == 6
    # file:// names the same bytes: same snapshot, reused.
    again = fetch(f"file://{corpus}", out)
    assert again.path == r.path and again.sha256 == r.sha256
    assert again.uri == f"file://{corpus}"
    assert _visible(out) == [digest]
    j = r.as_json()
    assert {"uri", "revision", "sha256", "bytes", "traces", "path", "kind", "files"} <= set(j)
    assert j["files"] == [{"name": corpus.name, "sha256": r.files[0].sha256, "bytes": r.bytes}]


def test_local_folder_of_json(tmp_path):
    folder = write_corpus(iter_corpus("kv-cache-tester", 4, 3, "small"), tmp_path / "folder")
    (folder / "notes.txt").write_text("ignored")
    rev = resolve_revision(str(folder))
    r = fetch(str(folder), tmp_path / "raw")
    assert rev == r.revision == f"sha256:{r.sha256}"
    assert r.path.is_dir() and r.path.name == r.sha256
    assert r.traces == 4 and len(r.files) == 4
    assert sorted(p.name for p in r.path.iterdir()) == sorted(p.name for p in folder.glob("*.json"))


def test_content_change_changes_revision_and_keeps_the_old_snapshot(tmp_path):
    corpus = tmp_path / "c.jsonl"
    lines = synthetic("semianalysis").read_bytes().splitlines(keepends=True)
    corpus.write_bytes(b"".join(lines[:3]))
    first = fetch(str(corpus), tmp_path / "raw")
    corpus.write_bytes(b"".join(lines))
    assert resolve_revision(str(corpus)) != first.revision
    second = fetch(str(corpus), tmp_path / "raw")
    assert second.sha256 != first.sha256 and (first.traces, second.traces) == (3, 6)
    assert first.path.read_bytes() == b"".join(lines[:3])
    assert _visible(tmp_path / "raw") == sorted([first.sha256, second.sha256])


def test_missing_path_fails_and_publishes_nothing(tmp_path):
    out = tmp_path / "raw"
    earlier = fetch(str(synthetic("semianalysis")), out)
    with pytest.raises(FileNotFound, match="no such file or folder"):
        fetch(str(tmp_path / "nope.jsonl"), out)
    with pytest.raises(FileNotFound):
        resolve_revision(f"file://{tmp_path}/nope")
    assert _visible(out) == [earlier.sha256]  # no .tmp- left behind, the old one intact


def test_a_damaged_snapshot_is_reported_not_reused(tmp_path):
    corpus = synthetic("semianalysis")
    r = fetch(str(corpus), tmp_path / "raw")
    os.chmod(r.path, 0o644)
    r.path.write_bytes(b"short")
    with pytest.raises(Exception, match="does not hold the expected files"):
        fetch(str(corpus), tmp_path / "raw")


def test_builtin_with_and_without_cache(tmp_path):
    assert resolve_revision("builtin:sample-kvt") == "spec:" + spec_digest("sample-kvt")
    direct = fetch("builtin:sample-kvt", tmp_path / "a")
    cached = fetch("builtin:sample-kvt", tmp_path / "b", cache_dir=tmp_path / "cache")
    assert direct.kind == "builtin" and direct.traces == 12
    assert direct.sha256 == cached.sha256 and direct.revision == f"sha256:{direct.sha256}"
    assert direct.path.name == "traces.jsonl"
    assert list((tmp_path / "cache").iterdir())  # generated once there


@pytest.mark.parametrize(
    "kernel", ["copy_file_range", "refused after a partial copy", "refused after hashed slices"]
)
def test_hash_copy_digests_the_bytes_it_wrote(tmp_path, monkeypatch, kernel):
    """The copy runs in the kernel, slice by slice, each slice read back and hashed while the
    next is copied; where the kernel refuses (another file system on an old kernel), even after
    copying part of the file, the copy through user space starts over."""
    import errno
    import hashlib

    from weka_assets.sources import local

    monkeypatch.setattr(local, "COPY_SLICE", 1 << 20)  # four slices of the 3 MB file
    src = tmp_path / "src.jsonl"
    src.write_bytes(os.urandom(3 << 20) + b"\n")
    real = os.copy_file_range
    calls = []

    def kernel_copy(fd_in, fd_out, count, *args):
        calls.append(count)
        if kernel == "refused after a partial copy" or (
            kernel == "refused after hashed slices" and len(calls) == 3
        ):
            real(fd_in, fd_out, 1000)  # part of it, then the kernel gives up
            raise OSError(errno.EXDEV, "cross-device")
        return real(fd_in, fd_out, count, *args)

    monkeypatch.setattr(os, "copy_file_range", kernel_copy)
    got = local.hash_copy(src, tmp_path / "dst.jsonl")
    assert (tmp_path / "dst.jsonl").read_bytes() == src.read_bytes()
    assert got.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert got.bytes == src.stat().st_size and got.name == "dst.jsonl"
    assert len(calls) == {"copy_file_range": 5}.get(kernel, len(calls))  # 4 slices, then 0
    with pytest.raises(FileExistsError):  # never over an existing file
        local.hash_copy(src, tmp_path / "dst.jsonl")
