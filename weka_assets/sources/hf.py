"""Hugging Face dataset sources through the real `huggingface_hub` client and its cache.

Resolution is one call to the revision route (`HfApi.dataset_info(repo, revision=...)`), which
the client makes once, without retries, under `HF_HUB_ETAG_TIMEOUT` (default 10 s): an
unreachable Hub fails here, fast, instead of in `hf_hub_download`'s own retry loop (which
backs off for tens of seconds on connection errors). The download is then pinned to the
resolved commit, and what arrives is checked against the Hub's stated size and, for LFS files,
its sha256; a bad file is evicted from the cache so the next try downloads it again.

Offline (`HF_HUB_OFFLINE=1`), or when the Hub cannot be reached and the URI pins a commit, the
file comes from the client's cache (a `@branch` resolves through the cache's `refs/`), checked
against the sha256 the cache names its LFS blob by.

Endpoint: `$HF_ENDPOINT` read at call time (else the client's own default); token: the
argument, else `$HF_TOKEN`, else whatever the client finds itself (`hf auth login`).
"""

import os
import re
from pathlib import Path

from weka_assets.sources.errors import (
    AuthenticationRefused,
    ChecksumMismatch,
    FetchError,
    FileNotFound,
    NetworkUnreachable,
    NotCached,
    RepoNotFound,
    RevisionNotFound,
    TruncatedDownload,
)
from weka_assets.sources.local import hash_copy
from weka_assets.sources.uri import COMMIT_RE, SourceSpec
from weka_assets.traces.reader import FileDigest

DEFAULT_REVISION = "main"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _token(token: str | None) -> str | None:
    return token or os.environ.get("HF_TOKEN") or None


def _timeout() -> float:
    from huggingface_hub import constants

    return float(constants.HF_HUB_ETAG_TIMEOUT)


def offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _where(spec: SourceSpec) -> str:
    return f"datasets/{spec.repo_id} at {endpoint()}"


def translate(spec: SourceSpec, exc: BaseException, revision: str | None = None) -> FetchError:
    """A huggingface_hub / httpx error -> one of our errors, one line, no secret."""
    import httpx2
    from huggingface_hub import errors as hfe

    rev = revision or spec.revision or DEFAULT_REVISION
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hfe.GatedRepoError):
        return AuthenticationRefused(
            spec.uri, f"gated repository {_where(spec)}: accept its conditions, use a token"
        )
    if isinstance(exc, hfe.RepositoryNotFoundError):
        return RepoNotFound(
            spec.uri,
            f"repository not found: {_where(spec)} (a private or gated repo answers the same "
            "without a valid token)",
        )
    if isinstance(exc, hfe.RevisionNotFoundError):
        return RevisionNotFound(spec.uri, f"revision {rev!r} not found in {_where(spec)}")
    if isinstance(exc, hfe.RemoteEntryNotFoundError):
        return FileNotFound(
            spec.uri, f"file {spec.path_in_repo!r} not found at revision {rev!r} of {_where(spec)}"
        )
    if isinstance(exc, hfe.LocalEntryNotFoundError | hfe.OfflineModeIsEnabled):
        return NotCached(
            spec.uri,
            f"{spec.path_in_repo!r} at revision {rev!r} is not in the Hugging Face cache and the "
            "Hub cannot be used (HF_HUB_OFFLINE=1 or unreachable)",
        )
    if isinstance(exc, hfe.HfHubHTTPError) and status in (401, 403):
        return AuthenticationRefused(
            spec.uri, f"authentication refused by {endpoint()} (HTTP {status}): check the token"
        )
    if isinstance(exc, httpx2.TimeoutException):
        return NetworkUnreachable(
            spec.uri, f"Hub at {endpoint()} did not answer within {_timeout():g} s"
        )
    if isinstance(exc, httpx2.TransportError):
        return NetworkUnreachable(
            spec.uri, f"Hub at {endpoint()} unreachable: {type(exc).__name__}: {exc}"
        )
    if isinstance(exc, hfe.HfHubHTTPError):
        return FetchError(spec.uri, f"Hub at {endpoint()} answered HTTP {status}")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return TruncatedDownload(spec.uri, f"truncated download: {str(exc).splitlines()[0]}")
    return FetchError(spec.uri, f"{type(exc).__name__}: {exc}")


def _info(spec: SourceSpec, token: str | None, files_metadata: bool):
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=endpoint()).dataset_info(
            spec.repo_id,
            revision=spec.revision or DEFAULT_REVISION,
            token=_token(token),
            timeout=_timeout(),
            files_metadata=files_metadata,
        )
    except Exception as exc:
        raise translate(spec, exc) from None


def _sibling(spec: SourceSpec, info):
    for sib in info.siblings or []:
        if sib.rfilename == spec.path_in_repo:
            return sib
    raise FileNotFound(
        spec.uri,
        f"file {spec.path_in_repo!r} not found at revision {info.sha} of {_where(spec)}",
    )


def resolve(spec: SourceSpec, token: str | None = None) -> str:
    """The commit sha the URI's revision points at now (one request; the file must exist).

    Offline (HF_HUB_OFFLINE=1) a pinned commit is its own answer; a branch or tag cannot be
    resolved without the Hub."""
    if offline():
        if spec.is_pinned:
            return spec.revision
        raise NotCached(
            spec.uri,
            f"offline (HF_HUB_OFFLINE=1): revision {spec.revision or DEFAULT_REVISION!r} cannot "
            "be resolved without the Hub; pin a commit",
        )
    info = _info(spec, token, files_metadata=False)
    if not info.sha or not COMMIT_RE.match(info.sha):
        raise FetchError(spec.uri, f"{endpoint()} gave no commit sha for the revision")
    _sibling(spec, info)
    return info.sha


def _evict(cached: Path) -> None:
    """Remove a bad file from the client's cache (the snapshot link and its blob)."""
    blob = cached.resolve()
    cached.unlink(missing_ok=True)
    if blob != cached:
        blob.unlink(missing_ok=True)


def _download(spec: SourceSpec, revision: str, token, cache_dir, local_only: bool) -> Path:
    from huggingface_hub import constants, hf_hub_download

    try:
        return Path(
            hf_hub_download(
                spec.repo_id,
                spec.path_in_repo,
                repo_type="dataset",
                revision=revision,
                token=_token(token),
                cache_dir=str(cache_dir) if cache_dir is not None else None,
                endpoint=endpoint(),
                etag_timeout=constants.HF_HUB_ETAG_TIMEOUT,
                local_files_only=local_only,
            )
        )
    except Exception as exc:
        raise translate(spec, exc, revision) from None


def _from_cache(spec, revision, token, cache_dir, staging) -> tuple[str, FileDigest]:
    """The file from the client's cache, checked against its blob's sha256 name."""
    cached = _download(spec, revision, token, cache_dir, local_only=True)
    commit = cached.parents[len(Path(spec.path_in_repo).parts) - 1].name  # snapshots/<sha>/...
    digest = hash_copy(cached, staging / Path(spec.path_in_repo).name)
    blob = cached.resolve().name
    if _SHA256_RE.match(blob) and blob != digest.sha256:
        raise ChecksumMismatch(
            spec.uri, f"cached file for {commit} has sha256 {digest.sha256}, its LFS oid is {blob}"
        )
    return commit, digest


def _record_ref(spec: SourceSpec, commit: str, cache_dir) -> None:
    """Note in the client's cache which commit the asked branch/tag named, as the client does
    itself (`<cache>/datasets--ORG--NAME/refs/<revision>`), so that offline a `@main` finds
    the last commit fetched. Best effort: the download is pinned to the commit, so the client
    does not write it."""
    from huggingface_hub import constants

    revision = spec.revision or DEFAULT_REVISION
    if COMMIT_RE.match(revision):
        return
    root = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()
    refs = root / ("datasets--" + spec.repo_id.replace("/", "--")) / "refs"
    ref = refs / revision
    if not ref.resolve().is_relative_to(refs.resolve()):
        return  # never write outside the cache (parse_source refuses such revisions already)
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text() != commit:
            ref.write_text(commit)
    except OSError:
        pass


def download(
    spec: SourceSpec, staging: Path, token: str | None = None, cache_dir: Path | None = None
) -> tuple[str, FileDigest]:
    """Download the file (pinned to the resolved commit) into `staging`; (commit, digest)."""
    if offline():
        return _from_cache(spec, spec.revision or DEFAULT_REVISION, token, cache_dir, staging)
    try:
        info = _info(spec, token, files_metadata=True)
    except NetworkUnreachable:
        if spec.is_pinned:
            try:
                return _from_cache(spec, spec.revision, token, cache_dir, staging)
            except NotCached:
                pass
        raise
    commit = info.sha
    if not commit or not COMMIT_RE.match(commit):
        raise FetchError(spec.uri, f"{endpoint()} gave no commit sha for the revision")
    sib = _sibling(spec, info)
    cached = _download(spec, commit, token, cache_dir, local_only=False)
    digest = hash_copy(cached, staging / Path(spec.path_in_repo).name)
    stated = sib.lfs.size if sib.lfs is not None else sib.size
    if stated is not None and digest.bytes != stated:
        _evict(cached)
        raise TruncatedDownload(
            spec.uri,
            f"truncated download at {commit}: {digest.bytes} bytes, the Hub states {stated}",
        )
    if sib.lfs is not None and sib.lfs.sha256 and digest.sha256 != sib.lfs.sha256:
        _evict(cached)
        raise ChecksumMismatch(
            spec.uri,
            f"checksum mismatch at {commit}: sha256 {digest.sha256}, the Hub states "
            f"{sib.lfs.sha256}",
        )
    _record_ref(spec, commit, cache_dir)
    return commit, digest
