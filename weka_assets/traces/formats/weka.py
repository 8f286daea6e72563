"""Weka traces (../shared/docs/trace-format.md): one trace per JSON object, a folder of
`*.json` files or one `.jsonl[.gz]`; each trace states its block size and hash-id scope."""

from collections.abc import Collection

import orjson

from weka_assets.errors import Location, TraceError
from weka_assets.traces import formats
from weka_assets.traces.fastparse import fast_decode
from weka_assets.traces.formats import TraceFormat
from weka_assets.traces.records import (
    WEKA_FIELDS,
    RawRecord,
    Record,
    SizeLimits,
    check_sizes,
    unreadable,
)
from weka_assets.traces.schema import declared_scope, parse_trace


class WekaFormat(TraceFormat):
    name = "weka"
    title = "Weka"
    record_noun = "trace"
    default_block_size = None  # every trace states its own
    namespace = "trace"  # and its scope (`hash_id_scope`)
    corpus_clock = False
    size_fields = WEKA_FIELDS
    schema_rules = ("unknown_request_type",)
    sniff_keys = ("requests",)

    def looks_like(self, keys: Collection[str]) -> bool:
        return "requests" in keys

    def manifest_fields(self) -> dict:
        return {}  # Weka manifests predate formats and keep their bytes

    def parse(self, raw: RawRecord, fmt, limits: SizeLimits) -> Record:
        """The fast path when it applies, else the strict one."""
        file, line = raw.file, raw.line
        try:
            data = raw.load()
        except OSError as exc:
            return unreadable(raw, exc)
        fast = fast_decode(data)
        obj, shared = fast if fast is not None else (None, None)
        if obj is None:
            try:
                obj = orjson.loads(data)
            except (orjson.JSONDecodeError, RecursionError) as exc:
                return Record(
                    file, line, error=TraceError("invalid_json", str(exc), Location(file, line))
                )
            other = _other_format(obj)  # only off the fast path, which needs `requests`
            if other is not None:
                origin = fmt.origin if fmt is not None else ""
                has = ", ".join(k for k in other.sniff_keys if k in obj)
                return Record(
                    file,
                    line,
                    error=TraceError(
                        "format_mismatch",
                        f"a {other.title} {other.record_noun} (no 'requests'; has {has}) "
                        f"in a corpus read as Weka{origin}; one corpus holds one format",
                        Location(file, line),
                    ),
                )
        scope = declared_scope(obj)
        try:
            trace, dropped = parse_trace(obj, file, line, shared)
            check_sizes(trace, limits, WEKA_FIELDS)
        except TraceError as exc:
            return Record(file, line, error=exc, declared_scope=scope)
        return Record(file, line, trace=trace, declared_scope=scope, null_keys_dropped=dropped)


def _other_format(obj) -> TraceFormat | None:
    """The registered format a JSON object read as Weka looks like, if any."""
    if not isinstance(obj, dict):
        return None
    name = formats.detect(obj.keys())
    return None if name == formats.DEFAULT else formats.get(name)
