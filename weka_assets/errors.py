"""One error type per domain, each carrying where the problem is, so the CLI and the assets
can print one clear line instead of a traceback."""

from dataclasses import dataclass


class WekaError(Exception):
    """Base of every error this package raises on bad input or bad state."""


@dataclass(frozen=True)
class Location:
    """Where in a corpus something is: file, 1-based line (jsonl), trace id, request, inner."""

    file: str | None = None
    line: int | None = None
    trace: str | None = None
    request: int | None = None
    inner: int | None = None

    def describe(self) -> str:
        parts = []
        if self.file is not None:
            # a file name may hold a newline or a control character: escape it, one line
            file = self.file if self.file.isprintable() else repr(self.file)[1:-1]
            parts.append(file if self.line is None else f"{file}:{self.line}")
        if self.trace is not None:
            parts.append(f"trace {self.trace!r}")
        if self.request is not None:
            parts.append(f"request {self.request}")
        if self.inner is not None:
            parts.append(f"inner {self.inner}")
        return ", ".join(parts) or "corpus"


class TraceError(WekaError):
    """A trace breaks the format or the scope contract: a hard error that stops the corpus."""

    def __init__(self, rule: str, message: str, location: Location = Location()):
        self.rule = rule
        self.message = message
        self.location = location
        super().__init__(f"{location.describe()}: [{rule}] {message}")

    def __reduce__(self):  # picklable, so worker processes can hand it back
        return (type(self), (self.rule, self.message, self.location))

    def as_dict(self) -> dict:
        loc = self.location
        return {
            "file": loc.file,
            "line": loc.line,
            "trace": loc.trace,
            "request": loc.request,
            "inner": loc.inner,
            "rule": self.rule,
            "message": self.message,
        }


class CorpusRejected(WekaError):
    """The corpus failed the scope contract; nothing may be decoded from it."""

    def __init__(self, summary: str, errors: list[dict] | None = None):
        self.errors = errors or []
        super().__init__(summary)


class DecodeError(WekaError):
    """The decoder cannot proceed (missing tokenizer, bad settings, bad stored dataset)."""


class SourceError(WekaError):
    """A corpus source cannot be read (missing path, unknown builtin, unsupported URI)."""
