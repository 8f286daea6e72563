"""Strict schema of one Weka trace (../shared/docs/trace-format.md), validated by pydantic.

`parse_trace` turns one JSON object into a `Trace`: plain objects with the hash ids as int64
numpy arrays, ready for vectorised analysis. Every violation becomes a `TraceError` naming
the file, line, trace, request, inner index and the rule.
"""

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from weka_assets.errors import Location, TraceError

INT64_MAX = 2**63 - 1  # counts and sizes are analysed as int64
NonNegInt = Annotated[int, Field(ge=0, le=INT64_MAX)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0, le=INT64_MAX)]
NonEmptyStr = Annotated[str, Field(min_length=1)]

_EMPTY_IDS = np.empty(0, dtype=np.int64)
_EMPTY_IDS.setflags(write=False)


def hash_id_array(value: Any) -> np.ndarray:
    """A JSON list of non-negative integers -> int64 array (one C pass, no per-id Python).

    An int64 array is passed through: JSON never yields one, only the reader's fast path,
    which built it from lists this function checked."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype != np.int64:
            raise ValueError("hash_ids must be a list of integers")
        return value
    if not isinstance(value, list):
        raise ValueError("hash_ids must be a list of integers")
    if not value:
        return _EMPTY_IDS
    try:
        arr = np.array(value)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"hash_ids must be a list of integers ({exc})") from None
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError("hash_ids must be a list of integers")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        bad = int(np.argmax(arr < 0))
        raise ValueError(f"hash_ids[{bad}] = {int(arr[bad])} is negative")
    return arr


HashIds = Annotated[np.ndarray, PlainValidator(hash_id_array)]


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", arbitrary_types_allowed=True)


class ModelCallModel(StrictModel):
    type: Literal["n", "s"]
    t: NonNegFloat
    model: str
    in_: NonNegInt = Field(alias="in")
    out: NonNegInt
    hash_ids: HashIds = _EMPTY_IDS
    stop: str | None = None
    api_time: NonNegFloat | None = None
    think_time: NonNegFloat | None = None
    ttft: NonNegFloat | None = None


class SubagentModel(StrictModel):
    type: Literal["subagent"]
    t: NonNegFloat
    agent_id: NonEmptyStr
    subagent_type: str
    status: str
    duration_ms: NonNegInt | None = None
    total_tokens: NonNegInt | None = None
    tool_use_count: NonNegInt | None = None
    models: list[str]
    requests: list[ModelCallModel]
    tool_tokens: NonNegInt = 0
    system_tokens: NonNegInt = 0


RequestModel = Annotated[ModelCallModel | SubagentModel, Field(discriminator="type")]


class TraceModel(StrictModel):
    id: NonEmptyStr
    models: list[str]
    block_size: PositiveInt
    hash_id_scope: str | None = None  # absent: per-context numbering (formats.md)
    tool_tokens: NonNegInt = 0
    system_tokens: NonNegInt = 0
    requests: list[RequestModel]


@dataclass(slots=True)
class Call:
    """One model call. `conv` 0 is the parent, k the k-th subagent (entry order)."""

    conv: int
    request: int
    inner: int
    t: float
    tokens_in: int
    tokens_out: int
    ids: np.ndarray
    streaming: bool
    doc_index: int = 0  # position in document order (parent and subagent calls)
    shared: int = (
        0  # leading ids shared with the previous call of its conversation (document order)
    )
    t_abs: float = 0.0  # start time on the trace's clock (relative inner times made absolute)


@dataclass(slots=True)
class Subagent:
    conv: int
    request: int
    agent_id: str
    subagent_type: str
    status: str
    t: float
    calls: list[Call]
    tool_tokens: int = 0
    system_tokens: int = 0

    @property
    def background(self) -> bool:
        return self.status == "async_launched"


@dataclass(slots=True)
class Trace:
    id: str
    file: str
    line: int | None
    block_size: int
    scope: str | None  # the declared hash_id_scope (None: absent)
    models: list[str]
    tool_tokens: int
    system_tokens: int
    parent_calls: list[Call]
    subagents: list[Subagent]
    # document order of every call, parent and subagent
    calls: list[Call] = field(default_factory=list)

    @property
    def location(self) -> Location:
        return Location(file=self.file, line=self.line, trace=self.id)

    def parent_first_calls(self) -> list[Call]:
        return self.parent_calls + [c for s in self.subagents for c in s.calls]


_RULE_BY_PYDANTIC_TYPE = {
    "greater_than_equal": "negative_number",
    "greater_than": "not_positive",
    "missing": "missing_field",
    "finite_number": "not_finite",
    "less_than_equal": "number_too_large",
    "union_tag_invalid": "unknown_request_type",
    "union_tag_not_found": "unknown_request_type",
}


def _locate(loc: tuple, base: Location, raw: dict | None) -> tuple[Location, str]:
    """Pydantic's error path -> (request, inner) indices and a dotted field name."""
    request = inner = None
    names = []
    i = 0
    while i < len(loc):
        part = loc[i]
        if part == "requests" and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            if request is None:
                request = loc[i + 1]
            else:
                inner = loc[i + 1]
            i += 2
            if i < len(loc) and loc[i] in ("n", "s", "subagent"):
                i += 1  # discriminator tag
            continue
        names.append(str(part))
        i += 1
    trace = base.trace
    if trace is None and isinstance(raw, dict) and isinstance(raw.get("id"), str):
        trace = raw["id"]
    location = Location(base.file, base.line, trace, request, inner)
    return location, ".".join(names) or "requests"


def validation_error(exc: ValidationError, base: Location, raw: Any) -> TraceError:
    err = exc.errors(include_url=False)[0]
    location, field_name = _locate(err["loc"], base, raw if isinstance(raw, dict) else None)
    rule = _RULE_BY_PYDANTIC_TYPE.get(err["type"], "schema")
    if field_name.endswith("hash_ids") and "negative" in err["msg"]:
        rule = "negative_number"
    msg = err["msg"].removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' * (more > 1)} in this trace)" if more else ""
    return TraceError(rule, f"{field_name}: {msg}{suffix}", location)


def _prescan(raw: dict, base: Location) -> int:
    """Drop null-valued keys (Arrow-padded corpora) and reject nested subagents.

    Returns how many null-valued keys were dropped, so the report can say so.
    """
    dropped = 0
    requests = raw.get("requests")
    if not isinstance(requests, list):
        return dropped
    for i, req in enumerate(requests):
        if not isinstance(req, dict):
            continue
        nulls = [k for k, v in req.items() if v is None]
        for k in nulls:
            del req[k]
        dropped += len(nulls)
        if req.get("type") != "subagent" or not isinstance(req.get("requests"), list):
            continue
        for j, inner in enumerate(req["requests"]):
            if not isinstance(inner, dict):
                continue
            nulls = [k for k, v in inner.items() if v is None]
            for k in nulls:
                del inner[k]
            dropped += len(nulls)
            if inner.get("type") == "subagent":
                raise TraceError(
                    "nested_subagent",
                    "a subagent entry inside a subagent's requests (subagents do not nest)",
                    Location(base.file, base.line, raw.get("id"), i, j),
                )
    return dropped


# Declared `hash_id_scope` -> the decode scope it claims (formats.md). Absent (None) claims
# nothing: the data decides between the trace and the context layouts.
DECLARED_SCOPES: dict[str | None, str | None] = {
    "local": "trace",  # one namespace per trace, parent and subagents together
    "global": "corpus",  # one namespace across the corpus
    "per_context": "context",  # each context numbers its own blocks (kv-cache-tester's word)
    None: None,
}


def declared_scope(raw: Any) -> str | None:
    value = raw.get("hash_id_scope") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading ids two calls share."""
    m = min(a.size, b.size)
    if m == 0:
        return 0
    neq = a[:m] != b[:m]
    return int(np.argmax(neq)) if neq.any() else m


def parse_trace(
    raw: Any, file: str, line: int | None = None, shared: dict | None = None
) -> tuple[Trace, int]:
    """Validate one decoded JSON value and build a `Trace`; returns it with the null keys dropped.

    `shared` may give, per (request, inner) index (inner -1 for parent calls), how many
    leading ids the call shares with its conversation's previous call (the fast path knows)."""
    base = Location(file=file, line=line)
    if not isinstance(raw, dict):
        raise TraceError(
            "not_an_object", f"a trace must be a JSON object, got {type(raw).__name__}", base
        )
    dropped = _prescan(raw, base)
    try:
        model = TraceModel.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, base, raw) from None
    where = Location(file, line, model.id)
    if model.hash_id_scope not in DECLARED_SCOPES:
        known = ", ".join(repr(k) for k in DECLARED_SCOPES if k)
        raise TraceError(
            "unknown_scope",
            f"hash_id_scope is {model.hash_id_scope!r}; known: {known} or absent (per context)",
            where,
        )
    return _build(model, file, line, shared or {}), dropped


def _shared(calls: list[Call], known: dict) -> None:
    prev = None
    for c in calls:
        s = known.get((c.request, c.inner))
        if s is None:
            s = common_prefix(prev.ids, c.ids) if prev is not None else 0
        c.shared = s
        prev = c


def _build(model: TraceModel, file: str, line: int | None, known: dict) -> Trace:
    parent: list[Call] = []
    subagents: list[Subagent] = []
    calls: list[Call] = []
    seen_agents: dict[str, int] = {}
    for i, req in enumerate(model.requests):
        if isinstance(req, ModelCallModel):
            call = Call(0, i, -1, req.t, req.in_, req.out, req.hash_ids, req.type == "s")
            call.doc_index = len(calls)
            parent.append(call)
            calls.append(call)
            continue
        if req.agent_id in seen_agents:
            raise TraceError(
                "duplicate_agent_id",
                f"agent_id {req.agent_id!r} already used by request {seen_agents[req.agent_id]}",
                Location(file, line, model.id, i),
            )
        seen_agents[req.agent_id] = i
        conv = len(subagents) + 1
        inner_calls = []
        for j, c in enumerate(req.requests):
            call = Call(conv, i, j, c.t, c.in_, c.out, c.hash_ids, c.type == "s")
            call.doc_index = len(calls)
            inner_calls.append(call)
            calls.append(call)
        subagents.append(
            Subagent(
                conv,
                i,
                req.agent_id,
                req.subagent_type,
                req.status,
                req.t,
                inner_calls,
                req.tool_tokens,
                req.system_tokens,
            )
        )
    _shared(parent, known)
    for sub in subagents:
        _shared(sub.calls, known)
    return Trace(
        id=model.id,
        file=file,
        line=line,
        block_size=model.block_size,
        scope=model.hash_id_scope,
        models=list(model.models),
        tool_tokens=model.tool_tokens,
        system_tokens=model.system_tokens,
        parent_calls=parent,
        subagents=subagents,
        calls=calls,
    )
