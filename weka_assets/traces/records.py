"""What reading a corpus produces, whatever its format: raw records (bytes, or where they are),
parsed records (a `Trace` or the hard error that stopped it), and the limits every format's
parse checks before anything is sized from a record (`check_sizes`).

Here, below the formats (`weka_assets.traces.formats`) and the reader that dispatches to them,
so that a format module imports these without importing the reader.
"""

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from weka_assets import env
from weka_assets.errors import Location, TraceError
from weka_assets.traces.schema import Trace

if TYPE_CHECKING:  # pragma: no cover
    from weka_assets.traces.reader import CorpusFormat

# Limits that protect the machine; settings, read when a corpus is read.
MAX_TRACE_BYTES_ENV = "WEKA_ASSETS_MAX_TRACE_BYTES"  # one trace's JSON (default 512 MiB)
MAX_IDS_PER_CALL_ENV = "WEKA_ASSETS_MAX_IDS_PER_CALL"  # hash ids of one call (default 4M)
MAX_PROMPT_TOKENS_ENV = "WEKA_ASSETS_MAX_PROMPT_TOKENS"  # prompt tokens of one call (4 Mi)
MAX_OUTPUT_TOKENS_ENV = "WEKA_ASSETS_MAX_OUTPUT_TOKENS"  # output tokens of one call (1 Mi)


def max_trace_bytes() -> int:
    return env.get(MAX_TRACE_BYTES_ENV)


def max_ids_per_call() -> int:
    return env.get(MAX_IDS_PER_CALL_ENV)


def max_prompt_tokens() -> int:
    return env.get(MAX_PROMPT_TOKENS_ENV)


def max_output_tokens() -> int:
    return env.get(MAX_OUTPUT_TOKENS_ENV)


class SizeLimits(NamedTuple):
    """The sizes one call may declare (settings, read once per corpus read). A trace holds
    numbers that nothing backs: `in: 100000000000` is 13 bytes of JSON and 373 GiB of tokens.
    Every array the decoder, the replays, the exports and the live replay size from a call
    (its tokens, its token blocks, its generated blocks, a block's tokens) is bounded by one
    of these, because `check_sizes` rejects the trace at the gate before anything reads them.
    Rejecting is all they do: they are in no decode key, so datasets keep their keys."""

    ids_per_call: int
    prompt_tokens: int
    output_tokens: int

    @classmethod
    def read(cls) -> "SizeLimits":
        return cls(max_ids_per_call(), max_prompt_tokens(), max_output_tokens())


@dataclass(slots=True)
class Record:
    """One trace record as read: parsed, or the hard error that stopped it."""

    file: str
    line: int | None
    trace: Trace | None = None
    error: TraceError | None = None
    declared_scope: str | None = None
    null_keys_dropped: int = 0
    # a record of many requests (a file read as one trace) reports every bad one: `error`
    # is the first, these the rest
    more_errors: list[TraceError] = field(default_factory=list)


@dataclass(slots=True)
class RawRecord:
    """One record's bytes as read (or the error that stopped reading), before parsing.

    `done` and `total` are bytes of the corpus read so far and in all (for progress)."""

    file: str
    line: int | None
    data: bytes | None = None
    error: TraceError | None = None
    done: int = 0
    total: int = 0
    offset: int = 0  # where the bytes are in `file`, when `data` is not loaded yet
    length: int = 0
    fmt: "CorpusFormat | None" = None  # the corpus's format (None: Weka)
    # `SizeLimits` read when the corpus was, as a plain tuple (it travels to a worker with
    # every record); None: read when the record is parsed
    limits: tuple[int, int, int] | None = None

    def load(self) -> bytes:
        """The record's bytes (read from `file` on first use when the record is lazy)."""
        if self.data is None:
            with open(self.file, "rb") as fh:
                self.data = os.pread(fh.fileno(), self.length, self.offset)
            if len(self.data) != self.length:
                raise OSError(f"read {len(self.data)} of {self.length} bytes (file changed?)")
        return self.data

    def limits_or_read(self) -> SizeLimits:
        return SizeLimits.read() if self.limits is None else SizeLimits(*self.limits)


def unreadable(raw: RawRecord, exc: OSError) -> Record:
    """The record of a raw record whose bytes could not be read."""
    return Record(
        raw.file,
        raw.line,
        error=TraceError("truncated_file", f"cannot read: {exc}", Location(raw.file, raw.line)),
    )


# what a format calls a call's prompt and output lengths and its block size (error messages)
WEKA_FIELDS = ("in", "out", "block_size")


def check_sizes(
    trace: Trace, limits: SizeLimits, fields: tuple[str, str, str] = WEKA_FIELDS
) -> None:
    """Every size a parsed trace declares within `limits`, or the `TraceError` of the first
    that is not, naming its call: the block size (`block_size_too_large`), then per call its
    hash ids (`too_many_ids`), its prompt as declared and as its ids imply it
    (`prompt_too_long`) and its output (`output_too_long`). `fields`: the format's names of
    a call's prompt and output lengths and of its block size. Python integers: nothing here
    can overflow."""
    bs = trace.block_size
    n_in, n_out, n_bs = fields
    if bs > limits.prompt_tokens:
        raise TraceError(
            "block_size_too_large",
            f"{n_bs}={bs}: a block longer than the longest prompt allowed, "
            f"{MAX_PROMPT_TOKENS_ENV}={limits.prompt_tokens}",
            trace.location,
        )
    for c in trace.calls:
        n = c.ids.size
        if n > limits.ids_per_call:
            rule = "too_many_ids"
            msg = (
                f"{n} hash ids in one call: more than {MAX_IDS_PER_CALL_ENV}={limits.ids_per_call}"
            )
        elif c.tokens_in > limits.prompt_tokens:
            rule = "prompt_too_long"
            msg = (
                f"{n_in}={c.tokens_in} prompt tokens: more than "
                f"{MAX_PROMPT_TOKENS_ENV}={limits.prompt_tokens}"
            )
        elif n and (n - 1) * bs >= limits.prompt_tokens:  # its last block holds >= 1 token
            rule = "prompt_too_long"
            msg = (
                f"hash_ids: {n} blocks of {bs} tokens are a prompt of at least "
                f"{(n - 1) * bs + 1} tokens: more than {MAX_PROMPT_TOKENS_ENV}={limits.prompt_tokens}"
            )
        elif c.tokens_out > limits.output_tokens:
            rule = "output_too_long"
            msg = (
                f"{n_out}={c.tokens_out} output tokens: more than "
                f"{MAX_OUTPUT_TOKENS_ENV}={limits.output_tokens}"
            )
        else:
            continue
        inner = None if c.inner < 0 else c.inner
        # a grouped trace's calls are on lines of their own (`Call` has no line: the trace
        # names its first; the request index names the call within it)
        raise TraceError(rule, msg, Location(trace.file, trace.line, trace.id, c.request, inner))
