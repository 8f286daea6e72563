"""The reader's fast path: decode a trace's skeleton with msgspec, keep each call's `hash_ids`
as raw JSON text, and parse only what a call adds to its conversation.

Consecutive calls of one conversation repeat the previous call's ids and append a few: a
trace of 160 calls holds its distinct ids a hundred times over. Turning every id into a Python
int and back into an array is what made reading slow, so the text of each call's list is
compared with the previous call's text; the ids of the common prefix are reused from the
previous call's array and only the rest is parsed.

This path accepts only what it can prove well-formed. Anything unexpected (undecodable
bytes, a list that is not a list of integers, a shape the skeleton does not fit) returns None
and the caller runs the strict path, which names the file, trace, request and rule.
"""

from typing import Any

import msgspec
import numpy as np
import orjson

from weka_assets.traces.schema import common_prefix, hash_id_array

UNSET = msgspec.UNSET


class _Request(msgspec.Struct):
    """Every field a model call or a subagent entry may carry; UNSET when absent."""

    type: Any = UNSET
    t: Any = UNSET
    model: Any = UNSET
    in_: Any = msgspec.field(default=UNSET, name="in")
    out: Any = UNSET
    hash_ids: msgspec.Raw | msgspec.UnsetType = UNSET
    stop: Any = UNSET
    api_time: Any = UNSET
    think_time: Any = UNSET
    ttft: Any = UNSET
    agent_id: Any = UNSET
    subagent_type: Any = UNSET
    status: Any = UNSET
    duration_ms: Any = UNSET
    total_tokens: Any = UNSET
    tool_use_count: Any = UNSET
    models: Any = UNSET
    requests: "list[_Request] | msgspec.UnsetType" = UNSET
    tool_tokens: Any = UNSET
    system_tokens: Any = UNSET


class _Trace(msgspec.Struct):
    id: Any = UNSET
    models: Any = UNSET
    block_size: Any = UNSET
    hash_id_scope: Any = UNSET
    tool_tokens: Any = UNSET
    system_tokens: Any = UNSET
    requests: list[_Request] | msgspec.UnsetType = UNSET


_DECODER = msgspec.json.Decoder(_Trace)
_REQUEST_KEYS = ["in" if f == "in_" else f for f in _Request.__struct_fields__]
_TRACE_FIELDS = [f for f in _Trace.__struct_fields__ if f != "requests"]


class _Unparsable(Exception):
    """The fast path declines; the strict path will say why."""


class _Conversation:
    """The previous call's raw list and its ids, to parse the next call's list against."""

    __slots__ = ("raw", "ids", "shared")

    def __init__(self):
        self.raw = b"[]"
        self.ids = hash_id_array([])
        self.shared = 0  # leading ids the last parsed call shares with the one before

    def parse(self, raw: bytes) -> np.ndarray:
        prev = self.raw
        if raw == prev:
            self.shared = self.ids.size
            return self.ids
        kept, start = _shared_ids(prev, self.ids.size, raw)
        if kept:
            tail = _parse_list(b"[" + raw[start:])
            ids = np.concatenate([self.ids[:kept], tail])
            prev_ids = self.ids
            if tail.size and kept < prev_ids.size and tail[0] == prev_ids[kept]:
                self.shared = kept + common_prefix(prev_ids[kept:], tail)
            else:
                self.shared = kept  # the usual case: the first parsed id is new
        else:
            ids = _parse_list(raw)
            self.shared = common_prefix(self.ids, ids)
        self.raw, self.ids = raw, ids
        return ids


def _shared_ids(prev: bytes, n_prev: int, raw: bytes, tries: int = 4) -> tuple[int, int]:
    """(how many leading ids `raw` surely shares with `prev`, byte offset in `raw` after them).

    The common cases first, with one memcmp each: the list grew, or its last few ids changed
    (a hashed partial block that filled up); otherwise one vectorised byte comparison."""
    end = len(prev) - 1  # the closing bracket
    for dropped in range(tries):
        if end <= 1:
            return 0, 0
        if raw[end : end + 1] in (b",", b"]") and raw.startswith(prev[:end]):
            if raw[end : end + 1] == b",":
                return n_prev - dropped, end + 1
            return n_prev - dropped - 1, prev.rfind(b",", 0, end) + 1  # raw is a prefix
        end = prev.rfind(b",", 0, end)
    m = min(len(prev), len(raw))
    a = np.frombuffer(prev, dtype=np.uint8, count=m)
    neq = a != np.frombuffer(raw, dtype=np.uint8, count=m)
    d = int(np.argmax(neq)) if neq.any() else m
    start = raw.rfind(b",", 0, d) + 1
    return (int(np.count_nonzero(a[:start] == ord(","))), start) if start else (0, 0)


def _parse_list(text: bytes) -> np.ndarray:
    if text[:1] != b"[":
        raise _Unparsable
    try:
        return hash_id_array(orjson.loads(text))
    except (orjson.JSONDecodeError, ValueError):
        raise _Unparsable from None


def _request_dict(req: _Request, conv: _Conversation, where: tuple, shared: dict) -> dict:
    out = {
        key: value
        for key, value in zip(_REQUEST_KEYS, msgspec.structs.astuple(req), strict=True)
        if value is not UNSET
    }
    # a subagent's calls are parsed by the caller, as their own conversation
    out.pop("requests", None)
    if req.hash_ids is not UNSET:
        out["hash_ids"] = conv.parse(bytes(req.hash_ids))
        shared[where] = conv.shared
    else:
        conv.parse(b"[]")  # a call without ids: the next one is compared with it
    return out


def fast_decode(data: bytes) -> tuple[dict, dict] | None:
    """The trace as a plain dict with `hash_ids` as int64 arrays, and per (request, inner)
    the ids each call shares with its conversation's previous call; None: use the strict path."""
    try:
        skel = _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return None  # deep nesting or bad bytes: the strict path names it
    if skel.requests is UNSET:
        return None
    try:
        parent = _Conversation()
        requests, shared = [], {}
        for i, req in enumerate(skel.requests):
            if req.requests is not UNSET:
                if any(r.requests is not UNSET for r in req.requests):
                    return None  # nesting: the strict path names the rule
                d = _request_dict(req, _Conversation(), (i, -2), {})
                inner = _Conversation()
                d["requests"] = [
                    _request_dict(r, inner, (i, j), shared) for j, r in enumerate(req.requests)
                ]
            else:
                d = _request_dict(req, parent, (i, -1), shared)
            requests.append(d)
    except _Unparsable:
        return None
    out = {f: v for f in _TRACE_FIELDS if (v := getattr(skel, f)) is not UNSET}
    out["requests"] = requests
    return out, shared
