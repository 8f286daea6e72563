"""S3 sources through s3fs: one object (`s3://B/KEY.jsonl[.gz]`, optionally `?versionId=`) or
every `*.json` object directly under a prefix (`s3://B/PREFIX/`).

Options: `s3_options` goes to `s3fs.S3FileSystem` as is (endpoint_url, key, secret, token,
client_kwargs, config_kwargs, ...); what it leaves out comes from the environment:
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY`
(+ `AWS_SESSION_TOKEN`), `AWS_REGION` / `AWS_DEFAULT_REGION`.

Fail fast: botocore makes at most 2 attempts (standard retry mode) with a 5 s connect timeout,
and s3fs's own retry loop is cut to 2 tries, so an unreachable endpoint fails in about a
second instead of stacking s3fs's 5 tries over botocore's 5.

Revision: `etag:<etag>` (+ `;version:<id>` when the bucket versions objects); for a prefix
`etags:<sha256 over the sorted (key, etag, version) of its objects>`. The download pins each
object's version when there is one and checks each body against the stated size and, when the
ETag is a plain MD5 (single-part upload, no KMS / customer-key encryption), against the MD5.
"""

import asyncio
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import orjson

from weka_assets.sources.errors import (
    AuthenticationRefused,
    BucketNotFound,
    ChecksumMismatch,
    FetchError,
    FileNotFound,
    NetworkUnreachable,
    RevisionNotFound,
    TruncatedDownload,
)
from weka_assets.sources.uri import SourceSpec
from weka_assets.traces.reader import FileDigest

_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_CONCURRENCY = 16
S3FS_RETRIES = 2
_DEFAULT_CONFIG = {
    "connect_timeout": 5,
    "read_timeout": 60,
    "retries": {"total_max_attempts": 2, "mode": "standard"},
}
_AUTH_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "InvalidSecurity",
    "AccountProblem",
    "401",
    "403",
}


@dataclass(frozen=True)
class S3Object:
    key: str
    etag: str
    version: str | None  # as the server gives it ("null": stored before versioning was on)
    size: int
    md5: str | None  # the ETag when it is the MD5 of the body

    @property
    def real_version(self) -> str | None:
        return self.version if self.version not in (None, "", "null") else None


def s3_options_from_env(s3_options: dict | None = None) -> dict:
    """`s3_options`, completed from the environment, with the fail-fast defaults."""
    opts = dict(s3_options or {})
    env = os.environ
    if "endpoint_url" not in opts:
        url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if url:
            opts["endpoint_url"] = url
    if not any(k in opts for k in ("key", "secret", "token", "anon", "profile", "session")):
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            opts["key"] = env["AWS_ACCESS_KEY_ID"]
            opts["secret"] = env["AWS_SECRET_ACCESS_KEY"]
            if env.get("AWS_SESSION_TOKEN"):
                opts["token"] = env["AWS_SESSION_TOKEN"]
    client_kwargs = dict(opts.get("client_kwargs") or {})
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region and "region_name" not in client_kwargs:
        client_kwargs["region_name"] = region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    opts["config_kwargs"] = {**_DEFAULT_CONFIG, **(opts.get("config_kwargs") or {})}
    opts["skip_instance_cache"] = True
    return opts


def filesystem(s3_options: dict | None = None):
    """An `s3fs.S3FileSystem` (no instance cache); `retries` in the options sets s3fs's own
    retry count (a class attribute there, not a constructor argument), default 2."""
    import s3fs

    opts = s3_options_from_env(s3_options)
    retries = int(opts.pop("retries", S3FS_RETRIES))
    fs = s3fs.S3FileSystem(**opts)
    fs.retries = retries
    return fs


def _endpoint(fs) -> str:
    return fs.client_kwargs.get("endpoint_url") or getattr(fs, "endpoint_url", None) or "AWS S3"


def _client_error(exc: BaseException):
    from botocore.exceptions import ClientError

    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, ClientError):
            return e
    return None


def _bucket_exists(fs, bucket: str) -> bool | None:
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
        return True
    except Exception as exc:
        ce = _client_error(exc)
        code = ce.response.get("Error", {}).get("Code") if ce is not None else None
        if isinstance(exc, FileNotFoundError) or code in ("404", "NoSuchBucket"):
            return False
        return None


def translate(spec: SourceSpec, fs, exc: BaseException, key: str | None = None) -> FetchError:
    """An s3fs / botocore / aiohttp error -> one of our errors, one line, no secret."""
    import aiohttp
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, NoCredentialsError, PartialCredentialsError

    where = _endpoint(fs)
    name = f"s3://{spec.bucket}/{key if key is not None else spec.key}"
    ce = _client_error(exc)
    code = ce.response.get("Error", {}).get("Code") if ce is not None else None
    status = ce.response.get("ResponseMetadata", {}).get("HTTPStatusCode") if ce else None
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AuthenticationRefused(spec.uri, f"no S3 credentials for {where}")
    if code in _AUTH_CODES or status in (401, 403) or isinstance(exc, PermissionError):
        return AuthenticationRefused(
            spec.uri, f"{where} refused the credentials ({code or status or 'access denied'})"
        )
    if code == "NoSuchBucket":
        return BucketNotFound(spec.uri, f"bucket {spec.bucket!r} not found at {where}")
    if code in ("NoSuchVersion", "InvalidArgument") and spec.revision is not None:
        return RevisionNotFound(spec.uri, f"version {spec.revision!r} of {name} not found")
    if code in ("NoSuchKey", "404") or status == 404 or isinstance(exc, FileNotFoundError):
        if _bucket_exists(fs, spec.bucket) is False:
            return BucketNotFound(spec.uri, f"bucket {spec.bucket!r} not found at {where}")
        if spec.revision is not None:
            return RevisionNotFound(spec.uri, f"version {spec.revision!r} of {name} not found")
        return FileNotFound(spec.uri, f"object {name} not found at {where}")
    network = (BotoConnectionError, HTTPClientError, aiohttp.ClientConnectionError)
    if isinstance(exc, network + (TimeoutError, ConnectionError)):
        return NetworkUnreachable(spec.uri, f"S3 endpoint {where} unreachable: {exc}")
    return FetchError(spec.uri, f"S3 error at {where}: {type(exc).__name__}: {exc}")


def _object(key: str, head: dict) -> S3Object:
    etag = str(head.get("ETag", "")).strip('"')
    version = head.get("VersionId") or None
    sse = head.get("ServerSideEncryption")
    md5_ok = (
        _MD5_RE.match(etag) is not None
        and sse in (None, "AES256")
        and not head.get("SSECustomerAlgorithm")
    )
    return S3Object(key, etag, version, int(head["ContentLength"]), etag if md5_ok else None)


def _head(fs, spec: SourceSpec, key: str, version: str | None = None) -> S3Object:
    kw = {"VersionId": version} if version else {}
    try:
        head = fs.call_s3("head_object", Bucket=spec.bucket, Key=key, **kw)
    except Exception as exc:
        raise translate(spec, fs, exc, key) from None
    return _object(key, head)


def _list_keys(fs, spec: SourceSpec) -> list[str]:
    keys: list[str] = []
    kw = {"Bucket": spec.bucket, "Prefix": spec.key, "Delimiter": "/"}
    try:
        while True:
            page = fs.call_s3("list_objects_v2", **kw)
            for c in page.get("Contents", []):
                if c["Key"].endswith(".json") and c["Key"] != spec.key:
                    keys.append(c["Key"])
            if not page.get("IsTruncated"):
                break
            kw["ContinuationToken"] = page["NextContinuationToken"]
    except Exception as exc:
        raise translate(spec, fs, exc) from None
    if not keys:
        raise FileNotFound(
            spec.uri, f"no *.json objects directly under s3://{spec.bucket}/{spec.key}"
        )
    return sorted(keys)


def _gather(fs, spec: SourceSpec, coro_for, items: list) -> list:
    """Run `coro_for(item)` for every item on s3fs's event loop, at most 16 at a time; the
    first failure is translated (outside the loop: translating may call S3 again)."""
    from fsspec.asyn import sync

    async def run():
        sem = asyncio.Semaphore(_CONCURRENCY)

        async def one(item):
            async with sem:
                return await coro_for(item)

        return await asyncio.gather(*(one(i) for i in items), return_exceptions=True)

    results = sync(fs.loop, run)
    for item, result in zip(items, results, strict=True):
        if isinstance(result, BaseException):
            key = item.key if isinstance(item, S3Object) else item
            raise translate(spec, fs, result, key) from None
    return results


def objects(fs, spec: SourceSpec) -> list[S3Object]:
    """The object(s) the URI names, with their ETag, version and size (HEAD / LIST only)."""
    if not spec.is_prefix:
        return [_head(fs, spec, spec.key, spec.revision)]
    keys = _list_keys(fs, spec)

    async def head(key):
        return _object(key, await fs._call_s3("head_object", Bucket=spec.bucket, Key=key))

    return _gather(fs, spec, head, keys)


def revision_of(spec: SourceSpec, objs: list[S3Object]) -> str:
    if not spec.is_prefix:
        o = objs[0]
        return f"etag:{o.etag}" + (f";version:{o.real_version}" if o.real_version else "")
    rows = sorted([o.key, o.etag, o.real_version or ""] for o in objs)
    return "etags:" + hashlib.sha256(orjson.dumps(rows)).hexdigest()


def resolve(spec: SourceSpec, s3_options: dict | None = None) -> str:
    fs = filesystem(s3_options)
    return revision_of(spec, objects(fs, spec))


def _check(spec: SourceSpec, o: S3Object, path: Path) -> FileDigest:
    sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    name = f"s3://{spec.bucket}/{o.key}"
    if size != o.size:
        raise TruncatedDownload(
            spec.uri, f"truncated download of {name}: {size} bytes, the server states {o.size}"
        )
    if o.md5 is not None and md5.hexdigest() != o.md5:
        raise ChecksumMismatch(
            spec.uri, f"checksum mismatch for {name}: md5 {md5.hexdigest()}, ETag {o.md5}"
        )
    return FileDigest(path.name, sha.hexdigest(), size)


def download(
    spec: SourceSpec, staging: Path, s3_options: dict | None = None
) -> tuple[str, list[FileDigest], bool]:
    """Download the object(s) into `staging`, verified; (revision, digests, single file?)."""
    fs = filesystem(s3_options)
    objs = objects(fs, spec)

    async def get(o: S3Object):
        local = staging / PurePosixPath(o.key).name
        # Pin the version seen by the HEAD; "null" only when the URI asked for it (some
        # S3-compatible stores reject VersionId=null on buckets that never had versioning).
        version = spec.revision if spec.revision is not None else o.real_version
        await fs._get_file(f"{spec.bucket}/{o.key}", str(local), version_id=version)
        return local

    paths = _gather(fs, spec, get, objs)
    digests = [_check(spec, o, p) for o, p in zip(objs, paths, strict=True)]
    return revision_of(spec, objs), digests, not spec.is_prefix
