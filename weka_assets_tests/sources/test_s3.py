"""S3 sources: s3fs against moto's S3 server (weka_assets_tests.servers, fixture `s3`).

moto does not check credentials (any key and secret are accepted), so refused credentials
cannot be tested against it; `test_refused_credentials` uses instead a few-line HTTP server
that answers every request with S3's own 403 AccessDenied.
"""

import gzip
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from weka_assets.sources import (
    AuthenticationRefused,
    BucketNotFound,
    ChecksumMismatch,
    FileNotFound,
    NetworkUnreachable,
    RevisionNotFound,
    TruncatedDownload,
    fetch,
    resolve_revision,
)
from weka_assets.synthetic import iter_corpus, write_corpus
from weka_assets.traces.reader import iter_records
from weka_assets_tests.corpora import synthetic

BUCKET = "weka-corpora"


@pytest.fixture
def bucket(s3):
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    return client


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_one_jsonl_object(s3, bucket, tmp_path):
    data = synthetic("semianalysis").read_bytes()
    bucket.put_object(Bucket=BUCKET, Key="weka/traces.jsonl", Body=data)
    uri = f"s3://{BUCKET}/weka/traces.jsonl"
    assert resolve_revision(uri, s3_options=s3.options) == f"etag:{_md5(data)}"
    r = fetch(uri, tmp_path / "raw", s3_options=s3.options)
    assert (r.kind, r.revision, r.traces, r.bytes) == ("s3", f"etag:{_md5(data)}", 6, len(data))
    assert r.path == tmp_path / "raw" / r.sha256 / "traces.jsonl"
    assert r.path.read_bytes() == data
    assert s3.secret not in str(r.as_json())


def test_one_jsonl_gz_object_configured_from_the_environment(s3, bucket, tmp_path, monkeypatch):
    data = gzip.compress(synthetic("kv-cache-tester").read_bytes(), mtime=0)
    bucket.put_object(Bucket=BUCKET, Key="t.jsonl.gz", Body=data)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    r = fetch(f"s3://{BUCKET}/t.jsonl.gz", tmp_path / "raw")  # no s3_options
    assert r.path.name == "t.jsonl.gz" and r.path.read_bytes() == data and r.traces == 6
    assert sum(1 for rec in iter_records(r.path) if rec.trace is not None) == 6


def test_a_prefix_of_json_objects(s3, bucket, tmp_path):
    folder = write_corpus(iter_corpus("semianalysis", 5, 2, "small"), tmp_path / "src")
    for f in folder.iterdir():
        bucket.put_object(Bucket=BUCKET, Key=f"runs/a/{f.name}", Body=f.read_bytes())
    bucket.put_object(Bucket=BUCKET, Key="runs/a/README.md", Body=b"not a trace")
    bucket.put_object(Bucket=BUCKET, Key="runs/a/nested/x.json", Body=b"{}")  # not direct
    uri = f"s3://{BUCKET}/runs/a/"
    rev = resolve_revision(uri, s3_options=s3.options)
    assert rev.startswith("etags:")
    r = fetch(uri, tmp_path / "raw", s3_options=s3.options)
    assert r.revision == rev and r.path.is_dir() and r.traces == 5
    assert sorted(p.name for p in r.path.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert all(rec.trace is not None for rec in iter_records(r.path))
    # One object changes: the prefix's revision changes.
    first = sorted(folder.iterdir())[0]
    bucket.put_object(Bucket=BUCKET, Key=f"runs/a/{first.name}", Body=first.read_bytes() + b" ")
    assert resolve_revision(uri, s3_options=s3.options) != rev


def test_versioning_pins_the_version(s3, bucket, tmp_path):
    v1 = synthetic("semianalysis").read_bytes()
    v2 = synthetic("semianalysis", traces=8, seed=9).read_bytes()
    bucket.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    first = bucket.put_object(Bucket=BUCKET, Key="traces.jsonl", Body=v1)["VersionId"]
    second = bucket.put_object(Bucket=BUCKET, Key="traces.jsonl", Body=v2)["VersionId"]
    uri = f"s3://{BUCKET}/traces.jsonl"
    assert resolve_revision(uri, s3_options=s3.options) == f"etag:{_md5(v2)};version:{second}"
    pinned = f"{uri}?versionId={first}"
    assert resolve_revision(pinned, s3_options=s3.options) == f"etag:{_md5(v1)};version:{first}"
    old = fetch(pinned, tmp_path / "raw", s3_options=s3.options)
    new = fetch(uri, tmp_path / "raw", s3_options=s3.options)
    assert old.path.read_bytes() == v1 and old.traces == 6
    assert new.path.read_bytes() == v2 and new.traces == 8
    with pytest.raises(RevisionNotFound, match="version 'nope'"):
        fetch(f"{uri}?versionId=nope", tmp_path / "raw", s3_options=s3.options)


def test_prefix_revision_includes_versions(s3, bucket):
    bucket.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    bucket.put_object(Bucket=BUCKET, Key="p/a.json", Body=b"{}")
    rev = resolve_revision(f"s3://{BUCKET}/p/", s3_options=s3.options)
    bucket.put_object(Bucket=BUCKET, Key="p/a.json", Body=b"{}")  # same bytes, new version
    assert resolve_revision(f"s3://{BUCKET}/p/", s3_options=s3.options) != rev


@pytest.mark.parametrize(
    "uri, error, text",
    [
        ("s3://no-such-bucket/t.jsonl", BucketNotFound, "bucket 'no-such-bucket' not found"),
        ("s3://no-such-bucket/p/", BucketNotFound, "bucket 'no-such-bucket' not found"),
        (f"s3://{BUCKET}/missing.jsonl", FileNotFound, "object s3://weka-corpora/missing.jsonl"),
        (f"s3://{BUCKET}/empty/", FileNotFound, "no *.json objects directly under"),
    ],
)
def test_missing_bucket_key_prefix(s3, bucket, tmp_path, uri, error, text):
    for call in (
        lambda: resolve_revision(uri, s3_options=s3.options),
        lambda: fetch(uri, tmp_path / "raw", s3_options=s3.options),
    ):
        with pytest.raises(error) as info:
            call()
        assert str(info.value).startswith(f"{uri}: ") and text in str(info.value)
    assert sorted((tmp_path / "raw").iterdir()) == []


@pytest.mark.parametrize("endpoint", ["refused", "reset"])
def test_unreachable_endpoint_fails_fast(tmp_path, endpoint, resetting_endpoint):
    """One clear error naming the endpoint, never the secret, after a bounded number of
    connections: botocore's 2 attempts and at most one follow-up request. With 5 attempts
    configured instead, the same calls made 7 connections each (measured)."""
    reset = endpoint == "reset"
    url = resetting_endpoint.url if reset else f"http://127.0.0.1:{_closed_port()}"
    options = {"endpoint_url": url, "key": "k", "secret": "s3cr3t-value"}
    for call in (
        lambda: resolve_revision(f"s3://{BUCKET}/t.jsonl", s3_options=options),
        lambda: fetch(f"s3://{BUCKET}/p/", tmp_path / "raw", s3_options=options),
    ):
        before = resetting_endpoint.connections
        with pytest.raises(NetworkUnreachable) as info:
            call()
        assert url in str(info.value) and "s3cr3t-value" not in str(info.value)
        if reset:
            assert 1 <= resetting_endpoint.connections - before <= 4


# ------------------------------------------------ a server that refuses, or lies about bytes


class _OddS3(BaseHTTPRequestHandler):
    mode = "deny"
    body = b'{"id": "x"}\n' * 10

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        if self.mode == "deny":
            self.send_response(403)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("ETag", f'"{_md5(self.body)}"')
        self.end_headers()

    def do_GET(self):
        if self.mode == "deny":
            body = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                b"<Message>Access Denied</Message></Error>"
            )
            self.send_response(403)
        else:
            good = self.body
            body = good[: len(good) // 2] if self.mode == "short" else good.upper()
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def odd_s3():
    def start(mode):
        handler = type("Handler", (_OddS3,), {"mode": mode})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
        servers.append(server)
        return {
            "endpoint_url": f"http://127.0.0.1:{server.server_address[1]}",
            "key": "k",
            "secret": "wrong-secret",
        }

    servers = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_refused_credentials(odd_s3, tmp_path):
    options = odd_s3("deny")
    for call in (
        lambda: resolve_revision(f"s3://{BUCKET}/t.jsonl", s3_options=options),
        lambda: fetch(f"s3://{BUCKET}/p/", tmp_path / "raw", s3_options=options),
    ):
        with pytest.raises(AuthenticationRefused) as info:
            call()
        assert "refused the credentials" in str(info.value)
        assert "wrong-secret" not in str(info.value)


@pytest.mark.parametrize("mode, error", [("short", TruncatedDownload), ("upper", ChecksumMismatch)])
def test_a_body_that_differs_from_the_head(odd_s3, tmp_path, mode, error):
    with pytest.raises(error):
        fetch(f"s3://{BUCKET}/t.jsonl", tmp_path / "raw", s3_options=odd_s3(mode))
    assert list((tmp_path / "raw").iterdir()) == []
