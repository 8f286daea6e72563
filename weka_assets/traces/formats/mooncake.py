"""Mooncake traces (../shared/docs/formats.md, "Mooncake traces"): one request per JSONL line,
`{"timestamp": <ms>, "input_length": N, "output_length": M, "hash_ids": [...]}`.

Each line becomes one `Trace` with one parent call and no subagents, so everything downstream
(scope report, decoder, replay) reads a Mooncake corpus as it reads Weka traces. What differs:
- the namespace is the whole corpus (the same id is the same block on every line): the trace
  declares scope `global`;
- `hash_ids` cover the whole prompt (cumulative), at the corpus's block size (512 unless the
  registry or the command line says otherwise), which no line states;
- `t` is the request's timestamp in seconds on the corpus-wide clock, so the replay can send
  every request at its recorded time (`schedule`, arrival `recorded`).
Timestamps need not be sorted (the replay orders calls by time); they must be finite and >= 0.
aiperf's alternatives to `input_length` + `hash_ids` (`text_input`, `messages`, `payload`)
carry no block ids and are rejected (`mooncake_no_hash_ids`).
"""

from collections.abc import Collection, Iterator
from pathlib import PurePath
from typing import Any

import orjson
from pydantic import ValidationError

from weka_assets.errors import Location, TraceError
from weka_assets.traces.formats import FileRead, TraceFormat, request_object
from weka_assets.traces.records import (
    RawRecord,
    Record,
    SizeLimits,
    check_sizes,
    max_trace_bytes,
)
from weka_assets.traces.requests import (
    block_size_error,
    read_request_table,
    table_record,
    whole_file_record,
)
from weka_assets.traces.schema import (
    Call,
    HashIds,
    NonNegFloat,
    NonNegInt,
    StrictModel,
    Trace,
    validation_error,
)

MOONCAKE_BLOCK_SIZE = 512  # tokens per block when the corpus does not say otherwise
MOONCAKE_SCOPE = "global"  # one hash-id namespace for the whole corpus
TEXT_ALTERNATIVES = ("text_input", "messages", "payload")  # aiperf's prompt-as-text fields
# what a Mooncake corpus calls a call's prompt and output lengths and its block size (messages)
MOONCAKE_FIELDS = (
    "input_length",
    "output_length",
    "the corpus's block size (registry or --block-size)",
)


class MooncakeRequestModel(StrictModel):
    timestamp: NonNegFloat  # milliseconds
    input_length: NonNegInt
    output_length: NonNegInt
    hash_ids: HashIds


def looks_like_mooncake(obj: Any) -> bool:
    """A Mooncake request rather than a Weka trace: an object without `requests` that has
    `hash_ids` (or one of aiperf's text alternatives) and `input_length` or `timestamp`."""
    if not isinstance(obj, dict) or "requests" in obj:
        return False
    has_ids = "hash_ids" in obj or any(k in obj for k in TEXT_ALTERNATIVES)
    return has_ids and ("input_length" in obj or "timestamp" in obj)


def mooncake_trace_id(file: str, line: int | None) -> str:
    """`<file name>:<line>`: unique in the corpus and the same on every machine."""
    return f"{PurePath(file).name}:{line if line is not None else 1}"


def parse_mooncake(
    raw: Any, file: str, line: int | None, block_size: int = MOONCAKE_BLOCK_SIZE, origin: str = ""
) -> tuple[Trace, int]:
    """Validate one Mooncake line and build its one-call `Trace`; returns it with the number of
    null-valued keys dropped (a null reads as an absent field). `origin` says how the corpus
    came to be read as Mooncake (for the error on a Weka trace among its lines)."""
    trace_id = mooncake_trace_id(file, line)
    where = Location(file, line, trace_id)
    nulls = request_object(raw, "Mooncake", file, line, origin)
    text = [k for k in TEXT_ALTERNATIVES if k in raw]
    if text and ("input_length" not in raw or "hash_ids" not in raw):
        raise TraceError(
            "mooncake_no_hash_ids",
            f"{text[0]}: the prompt is given as {text[0]!r} instead of input_length + "
            "hash_ids; a prompt without block ids cannot be decoded",
            where,
        )
    try:
        model = MooncakeRequestModel.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, where, raw) from None
    call = Call(
        0,
        0,
        -1,
        model.timestamp / 1000.0,
        model.input_length,
        model.output_length,
        model.hash_ids,
        False,
    )
    trace = Trace(
        id=trace_id,
        file=file,
        line=line,
        block_size=block_size,
        scope=MOONCAKE_SCOPE,
        models=[],
        tool_tokens=0,
        system_tokens=0,
        parent_calls=[call],
        subagents=[],
        calls=[call],
    )
    return trace, nulls


class MooncakeFormat(TraceFormat):
    """One request per line; a file is one trace (one namespace, one clock) read as columns
    (`traces.requests.RequestTable`): a production trace's millions of requests never become
    one Python object each."""

    name = "mooncake"
    title = "Mooncake"
    record_noun = "request"
    default_block_size = MOONCAKE_BLOCK_SIZE
    namespace = "corpus"
    corpus_clock = True
    size_fields = MOONCAKE_FIELDS
    schema_rules = ("mooncake_no_hash_ids",)
    sniff_keys = ("timestamp", "input_length", "hash_ids", *TEXT_ALTERNATIVES)
    # in the key since a file became one trace (the dataset's layout changed, not its tokens)
    key_name = "mooncake"
    whole_files = True

    def looks_like(self, keys: Collection[str]) -> bool:
        return looks_like_mooncake({k: True for k in keys})

    def file_records(self, read: FileRead) -> Iterator[RawRecord]:
        """One record per file: the whole file is one trace; `parse` reads it."""
        return whole_file_record(read)

    def parse(self, raw: RawRecord, fmt, limits: SizeLimits) -> Record:
        file = raw.file
        bs = fmt.block_size or MOONCAKE_BLOCK_SIZE
        err = block_size_error(file, bs, limits, MOONCAKE_FIELDS[2])
        if err is not None:
            return Record(file, None, error=err, declared_scope=MOONCAKE_SCOPE)

        def parse_line(data: bytes, line: int):
            try:
                obj = orjson.loads(data)
            except (orjson.JSONDecodeError, RecursionError) as exc:
                raise TraceError("invalid_json", str(exc), Location(file, line)) from None
            trace, dropped = parse_mooncake(obj, file, line, bs, fmt.origin)
            check_sizes(trace, limits, MOONCAKE_FIELDS)
            c = trace.calls[0]
            return (c.t, c.tokens_in, c.tokens_out, c.ids), dropped

        table, nulls, _ = read_request_table(
            file, bs, MOONCAKE_SCOPE, limits, max_trace_bytes(), parse_line
        )
        return table_record(table, nulls)
