"""The errors of the source layer: each one line, naming the source URI and the cause.

Every class is a `SourceError` (so the CLI prints it as one line and exits 1). Messages never
carry a secret (token, secret key): they are built here from the URI and a cause, not copied
from request headers.
"""

from weka_assets.errors import SourceError

__all__ = [
    "AuthenticationRefused",
    "BucketNotFound",
    "ChecksumMismatch",
    "FetchError",
    "FileNotFound",
    "IntegrityError",
    "NetworkUnreachable",
    "NotCached",
    "RegistryError",
    "RepoNotFound",
    "RevisionNotFound",
    "SourceError",
    "SourceNotFound",
    "SourceURIError",
    "TruncatedDownload",
]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class SourceURIError(SourceError):
    """A source URI that cannot be parsed or is not supported."""

    def __init__(self, uri: str, reason: str):
        self.uri = uri
        self.reason = _one_line(reason)
        super().__init__(f"{uri}: {self.reason}")


class FetchError(SourceError):
    """A source could not be resolved or fetched: `uri` and a one-line `cause`."""

    def __init__(self, uri: str, cause: str):
        self.uri = uri
        self.cause = _one_line(cause)
        super().__init__(f"{uri}: {self.cause}")


class SourceNotFound(FetchError):
    """Something the URI names does not exist."""


class RepoNotFound(SourceNotFound):
    """The Hugging Face repository does not exist (or is private/gated and no valid token)."""


class BucketNotFound(SourceNotFound):
    """The S3 bucket does not exist."""


class RevisionNotFound(SourceNotFound):
    """The repository exists but the revision (branch, tag, commit, S3 version) does not."""


class FileNotFound(SourceNotFound):
    """The file (Hub entry, S3 key, objects under a prefix, local path) does not exist."""


class AuthenticationRefused(FetchError):
    """The server refused the credentials (or there were none and it wants some)."""


class NetworkUnreachable(FetchError):
    """The endpoint cannot be reached (refused, timed out, DNS)."""


class NotCached(NetworkUnreachable):
    """Offline (HF_HUB_OFFLINE=1, or the Hub unreachable) and the revision is not in the cache."""


class IntegrityError(FetchError):
    """What arrived is not what the server said it would send."""


class TruncatedDownload(IntegrityError):
    """Fewer (or more) bytes arrived than the server's stated size."""


class ChecksumMismatch(IntegrityError):
    """The bytes have the stated size but not the stated checksum."""


class RegistryError(SourceError):
    """A corpus registry file that cannot be read or breaks the schema."""
