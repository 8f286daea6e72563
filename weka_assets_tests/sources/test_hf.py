"""Hugging Face sources: the real huggingface_hub client over HTTP against the local test hub
(weka_assets_tests.servers.HubServer), its real cache, and its offline mode."""

import json
import os
import socket
import subprocess
import sys

import pytest
from huggingface_hub import HfApi, constants

from weka_assets.sources import (
    AuthenticationRefused,
    ChecksumMismatch,
    FileNotFound,
    NetworkUnreachable,
    NotCached,
    RepoNotFound,
    RevisionNotFound,
    TruncatedDownload,
    fetch,
    resolve_revision,
)
from weka_assets.traces.reader import iter_records
from weka_assets_tests.corpora import synthetic

REPO = "semianalysisai/cc-traces-test"
URI = f"hf://datasets/{REPO}"


@pytest.fixture
def v1():
    return synthetic("semianalysis").read_bytes()


@pytest.fixture
def v2():
    return synthetic("semianalysis", traces=8, seed=9).read_bytes()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _visible(out_dir):
    return sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []


def test_fetch_through_the_real_client(hub, tmp_path, v1):
    sha = hub.commit(REPO, {"traces.jsonl": v1, "README.md": b"# card\n"})
    assert resolve_revision(URI) == sha
    cache, out = tmp_path / "hf-cache", tmp_path / "raw"
    r = fetch(URI, out, cache_dir=cache)
    assert (r.kind, r.revision, r.traces, r.bytes) == ("hf", sha, 6, len(v1))
    assert r.path == out / r.sha256 / "traces.jsonl" and r.path.read_bytes() == v1
    assert sum(1 for rec in iter_records(r.path) if rec.trace is not None) == 6
    # The client's own cache layout, pinned to the commit.
    assert (cache / f"datasets--{REPO.replace('/', '--')}" / "snapshots" / sha).is_dir()
    resolve = f"/datasets/{REPO}/resolve/{sha}/traces.jsonl"
    assert ("HEAD", resolve) in hub.requests and ("GET", resolve) in hub.requests
    assert ("GET", f"/api/datasets/{REPO}/revision/main?blobs=true") in hub.requests
    assert r.as_json()["revision"] == sha


def test_pinned_revision_survives_a_moved_main(hub, tmp_path, v1, v2):
    old = hub.commit(REPO, {"traces.jsonl": v1})
    new = hub.commit(REPO, {"traces.jsonl": v2})  # a re-upload: main moves
    assert old != new
    assert resolve_revision(URI) == new
    assert resolve_revision(f"{URI}@{old}") == old
    cache = tmp_path / "hf-cache"
    pinned = fetch(f"{URI}@{old}", tmp_path / "raw", cache_dir=cache)
    latest = fetch(f"{URI}@main", tmp_path / "raw", cache_dir=cache)
    assert pinned.revision == old and pinned.path.read_bytes() == v1 and pinned.traces == 6
    assert latest.revision == new and latest.path.read_bytes() == v2 and latest.traces == 8
    assert _visible(tmp_path / "raw") == sorted([pinned.sha256, latest.sha256])


def test_tags_branches_with_slashes_and_paths_in_repo(hub, tmp_path, v1, v2):
    sha = hub.commit(REPO, {"data/part-0.jsonl": v1}, branch="refs/pr/1")
    hub.repos[REPO].refs["v1.0"] = sha
    hub.commit(REPO, {"data/part-0.jsonl": v2})
    for rev in ("refs%2Fpr%2F1", "v1.0", sha):
        uri = f"{URI}@{rev}/data/part-0.jsonl"
        assert resolve_revision(uri) == sha
        r = fetch(uri, tmp_path / "raw", cache_dir=tmp_path / "hf-cache")
        assert r.revision == sha and r.path.name == "part-0.jsonl" and r.path.read_bytes() == v1


@pytest.mark.parametrize(
    "uri, error, text",
    [
        ("hf://datasets/nobody/nothing", RepoNotFound, "repository not found: datasets/nobody"),
        (f"{URI}@v9", RevisionNotFound, "revision 'v9' not found"),
        (f"{URI}@{'f' * 40}", RevisionNotFound, "not found"),
        (f"{URI}/other.jsonl", FileNotFound, "file 'other.jsonl' not found at revision"),
    ],
)
def test_missing_repo_revision_file(hub, tmp_path, v1, uri, error, text):
    hub.commit(REPO, {"traces.jsonl": v1})
    for call in (lambda: resolve_revision(uri), lambda: fetch(uri, tmp_path / "raw")):
        with pytest.raises(error) as info:
            call()
        assert str(info.value).startswith(f"{uri}: ") and text in str(info.value)
        assert "\n" not in str(info.value)
    assert _visible(tmp_path / "raw") == []


def test_truncated_body_is_an_error_and_publishes_nothing(hub, tmp_path, v1, v2):
    out, cache = tmp_path / "raw", tmp_path / "hf-cache"
    hub.commit(REPO, {"traces.jsonl": v1})
    earlier = fetch(URI, out, cache_dir=cache)
    hub.commit(REPO, {"traces.jsonl": v2})
    hub.truncate = True
    with pytest.raises(TruncatedDownload, match="truncated download"):
        fetch(URI, out, cache_dir=cache)
    assert _visible(out) == [earlier.sha256]
    hub.truncate = False
    assert fetch(URI, out, cache_dir=cache).path.read_bytes() == v2


def test_corrupt_body_fails_the_lfs_checksum_and_leaves_the_cache(hub, tmp_path, v1):
    out, cache = tmp_path / "raw", tmp_path / "hf-cache"
    sha = hub.commit(REPO, {"traces.jsonl": v1})
    hub.corrupt = True
    with pytest.raises(ChecksumMismatch, match="checksum mismatch at .* the Hub states"):
        fetch(URI, out, cache_dir=cache)
    assert _visible(out) == []
    hub.corrupt = False  # the bad copy was evicted from the client's cache: fetched again
    r = fetch(f"{URI}@{sha}", out, cache_dir=cache)
    assert r.path.read_bytes() == v1


def test_plain_git_file_is_checked_by_size(hub, tmp_path, v1):
    hub.lfs = False
    hub.commit(REPO, {"traces.jsonl": v1})
    assert fetch(URI, tmp_path / "raw", cache_dir=tmp_path / "c").path.read_bytes() == v1
    hub.truncate = True
    with pytest.raises(TruncatedDownload):
        fetch(URI, tmp_path / "raw2", cache_dir=tmp_path / "c2")


def test_tokens(hub, tmp_path, v1, monkeypatch):
    secret = "hf_sup3rs3cret"
    hub.commit(REPO, {"traces.jsonl": v1})
    hub.token = secret
    with pytest.raises(RepoNotFound, match="private or gated"):
        resolve_revision(URI)  # no token: the Hub answers as for a missing repo
    with pytest.raises(AuthenticationRefused) as info:
        fetch(URI, tmp_path / "raw", token="hf_wrong", cache_dir=tmp_path / "c")
    assert "authentication refused" in str(info.value) and "hf_wrong" not in str(info.value)
    r = fetch(URI, tmp_path / "raw", token=secret, cache_dir=tmp_path / "c")
    assert secret not in json.dumps(r.as_json())
    monkeypatch.setenv("HF_TOKEN", secret)
    assert resolve_revision(URI) == r.revision


def test_offline_from_a_filled_cache(hub, tmp_path, v1, v2, monkeypatch, resetting_endpoint):
    cache = tmp_path / "hf-cache"
    old = hub.commit(REPO, {"traces.jsonl": v1})
    fetch(f"{URI}@{old}", tmp_path / "online", cache_dir=cache)
    new = hub.commit(REPO, {"traces.jsonl": v2})
    fetch(URI, tmp_path / "online", cache_dir=cache)  # caches main -> new
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_revision(f"{URI}@{old}") == old
    with pytest.raises(NotCached, match="cannot be resolved without the Hub"):
        resolve_revision(URI)
    pinned = fetch(f"{URI}@{old}", tmp_path / "offline", cache_dir=cache)
    assert pinned.revision == old and pinned.path.read_bytes() == v1
    main = fetch(URI, tmp_path / "offline", cache_dir=cache)  # through the cache's refs/main
    assert main.revision == new and main.path.read_bytes() == v2
    monkeypatch.setenv("HF_ENDPOINT", resetting_endpoint.url)  # offline: never contacted
    with pytest.raises(NotCached, match="not in the Hugging Face cache"):
        fetch(f"{URI}@{'e' * 40}", tmp_path / "offline", cache_dir=cache)
    assert resetting_endpoint.connections == 0


def test_offline_env_var_in_a_fresh_process(hub, tmp_path, v1):
    """HF_HUB_OFFLINE=1 as users set it: read by huggingface_hub at import."""
    cache = tmp_path / "hf-cache"
    sha = hub.commit(REPO, {"traces.jsonl": v1})
    fetch(f"{URI}@{sha}", tmp_path / "online", cache_dir=cache)
    hub.stop()
    code = (
        "import json, sys; from weka_assets.sources import fetch; "
        "print(json.dumps(fetch(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3]).as_json()))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": hub.url}
    proc = subprocess.run(
        [sys.executable, "-c", code, f"{URI}@{sha}", str(tmp_path / "offline"), str(cache)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["revision"] == sha and result["traces"] == 6


@pytest.mark.parametrize("endpoint", ["refused", "reset"])
def test_unreachable_hub_fails_fast(tmp_path, monkeypatch, endpoint, resetting_endpoint):
    """One clear error after one connection: huggingface_hub's own retry loop (about 23 s
    against a refusing port here) is never entered."""
    reset = endpoint == "reset"
    url = resetting_endpoint.url if reset else f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    for call in (
        lambda: resolve_revision(URI),
        lambda: fetch(URI, tmp_path / "raw", cache_dir=tmp_path / "c"),
        lambda: fetch(f"{URI}@{'a' * 40}", tmp_path / "raw", cache_dir=tmp_path / "c"),
    ):
        before = resetting_endpoint.connections
        with pytest.raises(NetworkUnreachable) as info:
            call()
        assert url in str(info.value) and "unreachable" in str(info.value)
        if reset:
            assert resetting_endpoint.connections - before == 1
    assert _visible(tmp_path / "raw") == []


def test_unreachable_hub_serves_a_cached_pinned_commit(hub, tmp_path, v1):
    cache = tmp_path / "hf-cache"
    sha = hub.commit(REPO, {"traces.jsonl": v1})
    fetch(f"{URI}@{sha}", tmp_path / "a", cache_dir=cache)
    hub.stop()  # not offline mode: the Hub is just gone
    r = fetch(f"{URI}@{sha}", tmp_path / "b", cache_dir=cache)
    assert r.revision == sha and r.path.read_bytes() == v1
    with pytest.raises(NetworkUnreachable):
        fetch(URI, tmp_path / "b", cache_dir=cache)  # @main cannot be resolved


def test_the_tree_route(hub, v1):
    sha = hub.commit(REPO, {"traces.jsonl": v1, "data/a.json": b"{}"})
    api = HfApi(endpoint=hub.url)
    files = {f.path: f for f in api.list_repo_tree(REPO, repo_type="dataset", revision=sha)}
    assert set(files) == {"traces.jsonl"}
    assert files["traces.jsonl"].size == len(v1) and files["traces.jsonl"].lfs.size == len(v1)
    deep = api.list_repo_tree(REPO, repo_type="dataset", revision=sha, recursive=True)
    assert {f.path for f in deep} == {"traces.jsonl", "data/a.json"}
