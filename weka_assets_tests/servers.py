"""Test servers speaking the real protocols, and their pytest fixtures `hub` and `s3`; the
real vLLM CPU server (`vllm_cpu_server`).

- `HubServer`: a local Hugging Face Hub (stdlib http.server, 127.0.0.1, free port) answering
  the routes `huggingface_hub` 2.x calls for one dataset file: the revision route
  (`GET /api/datasets/{org}/{name}/revision/{rev}[?blobs=true]`), the tree route
  (`GET /api/datasets/{org}/{name}/tree/{rev}[/{path}]`) and `HEAD`/`GET
  /datasets/{org}/{name}/resolve/{rev}/{path}` (headers `X-Repo-Commit`, `ETag`,
  `Content-Length`; ranges), with the Hub's 404s (`X-Error-Code: RepoNotFound`,
  `RevisionNotFound`, `EntryNotFound`) and 401s. Repos live in memory: `commit()` adds a commit
  and moves its branch; `truncate` / `corrupt` switch the bodies GET sends.
- `s3`: moto's threaded S3 server (one per session), state reset before each test.
- `resetting_endpoint`: a TCP endpoint that resets every connection and counts them, to bound
  the connections a client spends on an unreachable service (no timing).

Registered in conftest.py with `pytest_plugins = ["weka_assets_tests.servers"]`.
"""

import contextlib
import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import threading
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

_ROUTE = re.compile(
    r"^/(?:api/)?datasets/(?P<repo>[^/]+/[^/]+)/(?P<verb>revision|tree|resolve)/(?P<rev>[^/]+)"
    r"(?:/(?P<path>.*))?$"
)


@dataclass
class HubRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> sha


class HubServer:
    """An in-memory Hugging Face Hub; `url` is its endpoint."""

    def __init__(self):
        self.repos: dict[str, HubRepo] = {}
        self.token: str | None = None  # when set, requests must carry "Bearer <token>"
        self.truncate = False  # GET sends half the body (consistent short Content-Length)
        self.corrupt = False  # GET sends the full length with the bytes changed
        self.lfs = True  # files are LFS (sha256 stated) or plain git files (size only)
        self.requests: list[tuple[str, str]] = []
        self._conns: set[socket.socket] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Add a commit on `branch` (created with the repo if new): parent files + `files`."""
        repo = self.repos.setdefault(repo_id, HubRepo())
        parent = repo.refs.get(branch)
        tree = {**repo.commits.get(parent, {}), **files}
        body = json.dumps(
            [parent, sorted((p, hashlib.sha1(b).hexdigest()) for p, b in tree.items())]
        )
        sha = hashlib.sha1(body.encode()).hexdigest()
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        return sha

    def stop(self) -> None:
        """Stop answering, and cut the kept-alive connections too (a client's pool would
        otherwise go on talking to the handler threads)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _lfs(data: bytes, key: str = "oid") -> dict:
    """LFS metadata as the tree route ("oid") or the revision route ("sha256") spells it."""
    return {key: hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}


def _etag(hub: "HubServer", data: bytes) -> str:
    """An LFS file's ETag is its sha256; a plain git file's, its git blob sha1."""
    if hub.lfs:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def setup(self):
            super().setup()
            hub._conns.add(self.connection)

        def finish(self):
            hub._conns.discard(self.connection)
            super().finish()

        def _send(self, status, headers=None, body=b""):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status, code=None, message=None, commit=None):
            headers = {"Content-Type": "application/json"}
            if code:
                headers["X-Error-Code"] = code
            if message:
                headers["X-Error-Message"] = message
            if commit:
                headers["X-Repo-Commit"] = commit
            self._send(status, headers, json.dumps({"error": message or code}).encode())

        def do_GET(self):
            hub.requests.append((self.command, self.path))
            url = urlsplit(self.path)
            m = _ROUTE.match(url.path)
            if m is None:
                return self._error(404, message="no such route")
            auth = self.headers.get("authorization")
            if hub.token is not None and auth != f"Bearer {hub.token}":
                if auth is None:  # the Hub answers a private repo like a missing one
                    return self._error(401, "RepoNotFound", "Repository not found")
                return self._error(401, message="Invalid credentials in Authorization header")
            repo = hub.repos.get(m["repo"])
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            rev = unquote(m["rev"])
            sha = repo.refs.get(rev, rev if rev in repo.commits else None)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            files = repo.commits[sha]
            path = unquote(m["path"] or "")
            if m["verb"] == "revision":
                blobs = "blobs=true" in url.query.lower()
                sibs = [
                    {"rfilename": p}
                    | ({"size": len(b), "blobId": hashlib.sha1(b).hexdigest()} if blobs else {})
                    | ({"lfs": _lfs(b, "sha256")} if blobs and hub.lfs else {})
                    for p, b in sorted(files.items())
                ]
                body = {"id": m["repo"], "sha": sha, "private": hub.token is not None}
                return self._send(
                    200,
                    {"Content-Type": "application/json"},
                    json.dumps(body | {"siblings": sibs}).encode(),
                )
            if m["verb"] == "tree":
                prefix = f"{path.rstrip('/')}/" if path else ""
                rows = [
                    {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    | ({"lfs": _lfs(b)} if hub.lfs else {})
                    for p, b in sorted(files.items())
                    if p.startswith(prefix)
                    and ("/" not in p[len(prefix) :] or "recursive=true" in url.query.lower())
                ]
                return self._send(
                    200, {"Content-Type": "application/json"}, json.dumps(rows).encode()
                )
            if path not in files:
                return self._error(404, "EntryNotFound", "Entry not found", commit=sha)
            data = files[path]
            headers = {
                "X-Repo-Commit": sha,
                "ETag": f'"{_etag(hub, data)}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            if self.command == "HEAD":
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                return self.end_headers()
            status = 200
            rng = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
            if rng:
                start = int(rng[1])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                data, status = data[start:], 206
            if hub.truncate:
                data = data[: len(data) // 2]
            elif hub.corrupt:
                data = bytes(b ^ 0x20 if i % 97 == 0 else b for i, b in enumerate(data))
            self._send(status, headers, data)

        do_HEAD = do_GET

    return Handler


class ResettingEndpoint:
    """A TCP endpoint on 127.0.0.1 that accepts each connection and resets it at once,
    counting them: how many connections a client spends before it gives up (`url`,
    `connections`; `close()` stops it)."""

    def __init__(self):
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            self.connections += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def resetting_endpoint():
    endpoint = ResettingEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


@pytest.fixture
def hub(monkeypatch):
    """A fresh local Hub; HF_ENDPOINT points at it and huggingface_hub is online for the test."""
    from huggingface_hub import constants

    server = HubServer()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # No user-agent telemetry: it would ask the default endpoint for /api/agent-harnesses.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class S3Server:
    url: str
    key: str = "testing"
    secret: str = "testing"
    region: str = "us-east-1"

    @property
    def options(self) -> dict:
        """`s3_options` for weka_assets.sources (s3fs.S3FileSystem keyword arguments)."""
        return {
            "endpoint_url": self.url,
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"region_name": self.region},
        }

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self):
        """A boto3 S3 client on the server, to seed buckets and objects."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )

    def reset(self) -> None:
        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10
        ).close()


@pytest.fixture(scope="session")
def _moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3(_moto_server, monkeypatch):
    """moto's S3 server (127.0.0.1), emptied for this test; ambient AWS settings removed."""
    for var in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(var, raising=False)
    _moto_server.reset()
    yield _moto_server
    _moto_server.reset()


VLLM_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vllm-cpu-server"


@contextlib.contextmanager
def vllm_cpu_server(run_dir: Path, *start_args: str):
    """A real vLLM server started by `scripts/vllm-cpu-server start` on a free port (with these
    options) in its own run folder; yields its URL, stops it by PID. Skips the test where vLLM
    cannot be installed (exit 3), fails it where it does not start."""
    from weka_assets_tests.cluster.harness import free_port

    env = dict(os.environ, WEKA_VLLM_RUN=str(run_dir))
    try:
        start = subprocess.run(
            [str(VLLM_SCRIPT), "start", "--port", str(free_port()), *start_args],
            env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if start.returncode == 3:
            pytest.skip(f"vLLM cannot be installed here: {start.stderr.strip().splitlines()[-1]}")
        if start.returncode != 0:
            pytest.fail(f"vllm-cpu-server start failed ({start.returncode}):\n{start.stderr}")
        yield start.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(VLLM_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
