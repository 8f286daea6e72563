"""Hypothesis strategies for hostile and broken traces, and the corpus files that hold them.

- `hostile_values`: JSON-like values of every wrong type: NaN and infinite floats, integers
  past int64 and uint64, negative numbers, empty and long lists, nested and unknown keys,
  unicode and lone-surrogate text, very long strings.
- `trace_like`: a trace that is valid or nearly so, then 0-3 mutations (a field replaced by
  a hostile value, deleted, an unknown key added, a list emptied or made enormous).
- `corpus`: a corpus on disk, as a `.jsonl`, a `.jsonl.gz` (possibly cut short or damaged) or
  a folder of `*.json` (with odd file names and bad files), and what each record holds.
"""

import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from hypothesis import strategies as st

BIG_INTS = [
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    10**30,
    -1,
    -(2**63),
    -(2**63) - 1,
    -(10**30),
]
SPECIAL_FLOATS = [
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    -1.5,
    0.5,
]

ints = st.one_of(st.integers(-5, 5000), st.sampled_from(BIG_INTS), st.integers())
floats = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(allow_nan=True))
# text: ASCII, any unicode, lone surrogates (not encodable as UTF-8), controls and newlines
texts = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(codec="ascii"), max_size=8),
    st.text(st.characters(categories=["Cs", "Cc", "Zl", "Zp"]), min_size=1, max_size=4),
    st.sampled_from(["", "n", "s", "subagent", "local", "global", "../../x", "/etc/passwd"]),
)
long_texts = st.builds(lambda c, n: c * n, st.characters(), st.integers(1_000, 200_000))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
hostile_values = st.recursive(
    scalars | long_texts,
    lambda kids: st.one_of(
        st.lists(kids, max_size=5),
        st.dictionaries(texts, kids, max_size=5),
    ),
    max_leaves=16,
)


def deep(depth: int, leaf=0, kind: str = "list"):
    """A value nested `depth` levels deep, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


# Python values nest at most 400 levels (deeper ones would overflow Python's own recursion in
# whatever prints them); deeper nesting is made as JSON text by `deep_record`
deep_values = st.builds(
    deep, st.integers(1, 400), st.sampled_from([0, "x", None]), st.sampled_from(["list", "dict"])
)
enormous_lists = st.builds(
    lambda n, v: [v] * n, st.sampled_from([10_000, 100_000]), st.sampled_from([0, 1, "x", None])
)


# ---- traces -----------------------------------------------------------------------------


@st.composite
def model_call(draw, t: float = 0.0):
    ids = draw(st.lists(st.integers(0, 40), max_size=6))
    call = {
        "t": t,
        "type": draw(st.sampled_from(["n", "s"])),
        "model": "m",
        "in": len(ids) * 64 + draw(st.integers(0, 63)),
        "out": draw(st.integers(0, 500)),
        "hash_ids": ids,
    }
    if call["type"] == "s":
        call["ttft"] = 0.25
    return call


@st.composite
def subagent(draw, index: int, t: float = 1.0):
    return {
        "t": t,
        "type": "subagent",
        "agent_id": f"agent_{index}",
        "subagent_type": "Explore",
        "status": draw(st.sampled_from(["completed", "async_launched"])),
        "duration_ms": 1000,
        "models": ["m"],
        "requests": draw(st.lists(model_call(t + 0.5), min_size=1, max_size=3)),
    }


@st.composite
def valid_trace(draw):
    n = draw(st.integers(0, 5))
    requests = []
    for i in range(n):
        if draw(st.booleans()) and i:
            requests.append(draw(subagent(i, float(i))))
        else:
            requests.append(draw(model_call(float(i))))
    return {
        "id": draw(st.one_of(st.text(min_size=1, max_size=10), long_texts)),
        "models": ["m"],
        "block_size": 64,
        "hash_id_scope": "local",
        "requests": requests,
    }


def _slots(value, out: list) -> list:
    """Every (container, key) inside a trace a mutation can aim at, outermost first."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        out.append((value, k))
        if isinstance(v, dict | list) and len(out) < 200:
            _slots(v, out)
    return out


@st.composite
def mutated(draw, base):
    """`base` with 0-3 mutations: replace, delete, add an unknown key, empty or bloat a list."""
    trace = base
    for _ in range(draw(st.integers(0, 3))):
        slots = _slots(trace, [])
        if not slots:
            break
        container, k = draw(st.sampled_from(slots))
        how = draw(st.sampled_from(["replace", "replace", "delete", "unknown", "deep", "bloat"]))
        if how == "replace":
            container[k] = draw(hostile_values)
        elif how == "delete" and isinstance(container, dict):
            del container[k]
        elif how == "unknown" and isinstance(container, dict):
            container[draw(texts)] = draw(hostile_values)
        elif how == "deep":
            container[k] = draw(deep_values)
        elif how == "bloat":
            container[k] = draw(st.one_of(enormous_lists, st.just([])))
    return trace


trace_like = valid_trace().flatmap(mutated)


# ---- corpora on disk --------------------------------------------------------------------


@dataclass
class Corpus:
    """A corpus written by `corpus`: its path, layout and, per record, what was written.

    `records` maps (file, line) -> the value serialised there, or BYTES for a record whose
    bytes were garbled (no value to compare with). `damaged`: a gzip cut short or corrupted.
    """

    path: Path
    layout: str  # "jsonl", "jsonl.gz" or "folder"
    records: dict = field(default_factory=dict)
    damaged: bool = False


BYTES = object()


def _dumps_iterative(value) -> str:
    """JSON text of any depth (json and orjson stop at about 1000 and 255 levels)."""
    out: list[str] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, _Token):
            out.append(v.text)
        elif isinstance(v, list):
            stack.append(_Token("]"))
            for i, x in enumerate(reversed(v)):
                stack.append(x)
                if i < len(v) - 1:
                    stack.append(_Token(","))
            out.append("[")
        elif isinstance(v, dict):
            stack.append(_Token("}"))
            items = list(v.items())
            for i, (k, x) in enumerate(reversed(items)):
                stack.append(x)
                stack.append(_Token(json.dumps(str(k)) + ":"))
                if i < len(items) - 1:
                    stack.append(_Token(","))
            out.append("{")
        else:
            out.append(json.dumps(v, allow_nan=True))
    return "".join(out)


@dataclass(frozen=True)
class _Token:
    text: str


def to_bytes(value, style: str) -> bytes:
    """Serialise like a producer could: strict JSON, or Python's NaN/Infinity and escapes."""
    if style == "orjson":
        try:
            return orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError):
            style = "python"
    try:
        # allow_nan writes NaN / Infinity; ensure_ascii writes lone surrogates as \\udXXX
        return json.dumps(value, allow_nan=True, ensure_ascii=True).encode()
    except RecursionError:
        return _dumps_iterative(value).encode()


def _garble(data: bytes, how: str, at: int, junk: bytes) -> bytes:
    at = at % (len(data) + 1)
    if how == "cut":
        return data[:at]
    if how == "insert":
        return data[:at] + junk + data[at:]
    return junk  # replace


record_values = st.one_of(
    valid_trace(), trace_like, trace_like, trace_like, hostile_values, deep_values
)
junk_bytes = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.sampled_from([b"\xff\xfe\xfd", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"{", b"]", b"NaN"]),
    st.builds(lambda n: b"[" * n, st.integers(1000, 5000)),
)


DEEP_SHAPES = [
    b"%s",
    b'{"id":"x","unknown":%s}',
    b'{"id":"x","models":["m"],"block_size":64,"hash_id_scope":"local",'
    b'"requests":[{"t":0,"type":"n","model":"m","in":0,"out":0,"x":%s}]}',
]


@st.composite
def deep_record(draw) -> bytes:
    """JSON text nested past every parser's limit (about 1000 levels), anywhere in a record."""
    n = draw(st.integers(900, 5000))
    if draw(st.booleans()):
        inner = b"[" * n + b"]" * n
    else:
        inner = b'{"k":' * n + b"0" + b"}" * n
    return draw(st.sampled_from(DEEP_SHAPES)).replace(b"%s", inner)


@st.composite
def record_bytes(draw):
    """(bytes, value or BYTES) for one record."""
    if draw(st.integers(0, 9)) == 0:  # one in ten nested past the parsers' limits
        return draw(deep_record()), BYTES
    value = draw(record_values)
    data = to_bytes(value, draw(st.sampled_from(["orjson", "python"])))
    if draw(st.integers(0, 4)) == 0:  # one in five garbled
        how = draw(st.sampled_from(["cut", "insert", "replace"]))
        data = _garble(data, how, draw(st.integers(0, 10**6)), draw(junk_bytes))
        return data, BYTES
    return data, value


FILE_NAMES = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=30),
    st.sampled_from(["trace", "a\nb", " ", "-rf", "ü⌘🙂", "x" * 200, "..json", "con"]),
).filter(lambda name: name not in ("sub", "dangling"))


@st.composite
def corpus(draw, root: Path):
    """Write a corpus under `root` (a fresh folder) and describe it."""
    layout = draw(st.sampled_from(["jsonl", "jsonl.gz", "folder"]))
    recs = draw(st.lists(record_bytes(), min_size=1, max_size=6))
    if layout == "folder":
        folder = root / "corpus"
        folder.mkdir()
        out = Corpus(folder, layout)
        names = draw(st.lists(FILE_NAMES, min_size=len(recs), max_size=len(recs), unique=True))
        for (data, value), name in zip(recs, names, strict=True):
            f = folder / f"{name}.json"
            f.write_bytes(data)
            out.records[(str(f), None)] = value
        # what a folder may hold beside the traces: none of it is a record
        (folder / "README.md").write_text("not a trace")
        (folder / "sub.json").mkdir()
        if draw(st.booleans()):
            (folder / "dangling.json").symlink_to(root / "missing")
        return out
    lines: list[bytes] = []
    values: list = []
    for data, value in recs:
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from([b"", b"   ", b"\t\r"])))  # blank lines
            values.append(None)
        # a record's own newlines would split it: keep them out of this line
        if b"\n" in data:
            data, value = data.replace(b"\n", b" "), BYTES
        lines.append(data)
        values.append(value)
    body = b"\n".join(lines) + draw(st.sampled_from([b"\n", b""]))
    path = root / f"corpus.{layout}"
    out = Corpus(path, layout)
    for i, (line, value) in enumerate(zip(lines, values, strict=True), start=1):
        if line.strip():
            out.records[(str(path), i)] = value
    if layout == "jsonl":
        path.write_bytes(body)
        return out
    data = gzip.compress(body, mtime=0)
    damage = draw(st.sampled_from(["none", "none", "cut", "flip", "trailing"]))
    if damage == "cut":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        pos = draw(st.integers(0, len(data) - 1))
        data = data[:pos] + bytes([data[pos] ^ (1 << draw(st.integers(0, 7)))]) + data[pos + 1 :]
    elif damage == "trailing":
        data += draw(junk_bytes)
    out.damaged = damage != "none"
    path.write_bytes(data)
    return out
