"""The synthetic corpus generator: determinism, both profiles' conventions, realistic shapes.

The checks here recompute the scope-contract figures with a small local helper (not the
product's scope module), so a generator bug cannot hide behind a shared analysis bug.
"""

import gzip
import math
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from weka_assets.synthetic import generate_corpus, iter_corpus, write_corpus

SMALL_TRACES = 60
SEED = 7


# --- local analysis helper (docs/definitions.md) --------------------------------------------


def _calls(req: dict):
    """Parent calls of a trace and, per subagent entry, its inner calls."""
    parent = [r for r in req["requests"] if r["type"] != "subagent"]
    subs = [r for r in req["requests"] if r["type"] == "subagent"]
    return parent, subs


def _walk_ids(trace: dict, order: str):
    parent, subs = _calls(trace)
    if order == "document":
        for r in trace["requests"]:
            for c in r["requests"] if r["type"] == "subagent" else [r]:
                yield c["hash_ids"]
    else:
        for c in parent + [c for s in subs for c in s["requests"]]:
            yield c["hash_ids"]


def _first_appearance(trace: dict, order: str, base: int) -> tuple[int, int]:
    """(fresh-below, gap) events of the walk."""
    seen: set[int] = set()
    fresh_below = gaps = 0
    for ids in _walk_ids(trace, order):
        for x in ids:
            if x in seen:
                continue
            expected = base + len(seen)
            fresh_below += x < expected
            gaps += x > expected
            seen.add(x)
    return fresh_below, gaps


def _analyse(trace: dict) -> dict:
    parent, subs = _calls(trace)
    all_calls = parent + [c for s in subs for c in s["requests"]]
    base = min(x for c in all_calls for x in c["hash_ids"])
    walks = {o: _first_appearance(trace, o, base) for o in ("document", "parent_first")}
    if not subs:
        minting = "document" if walks["document"][0] == 0 else "none"
    else:
        ok = [o for o in ("document", "parent_first") if walks[o][0] == 0]
        minting = min(ok, key=lambda o: walks[o][1]) if ok else "none"
    position: dict[int, set[int]] = {}
    for c in all_calls:
        for i, x in enumerate(c["hash_ids"]):
            position.setdefault(x, set()).add(i)
    bs = trace["block_size"]
    hashing = set()
    for c in all_calls:
        n, length = c["in"], len(c["hash_ids"])
        if length > math.ceil(n / bs):
            hashing.add("over")
        elif length == n // bs:
            hashing.add("floor")
        elif length == math.ceil(n / bs):
            hashing.add("ceil")
        else:
            hashing.add("truncated")
    inner = set()
    for s in subs:
        ts = [c["t"] for c in s["requests"]]
        inner.add(
            "absolute"
            if all(t >= s["t"] for t in ts)
            else "relative"
            if all(t < s["t"] for t in ts)
            else "mixed"
        )
    p_ids = {x for c in parent for x in c["hash_ids"]}
    s_ids = [{x for c in s["requests"] for x in c["hash_ids"]} for s in subs]
    parent_share = [len(b & p_ids) / len(b) for b in s_ids]
    sibling_share = []
    if len(s_ids) > 1:
        for k, b in enumerate(s_ids):
            others = set().union(*(o for j, o in enumerate(s_ids) if j != k))
            sibling_share.append(len(b & others) / len(b))
    reset = any(len(b) > 1 and b == set(range(base, max(b) + 1)) for b in s_ids)
    return {
        "base": base,
        "walks": walks,
        "minting": minting,
        "perfect": minting != "none" and walks[minting][1] == 0,
        "position_violations": sum(len(v) > 1 for v in position.values()),
        "hashing": hashing,
        "inner": inner,
        "parent_share": parent_share,
        "sibling_share": sibling_share,
        "verdict": "reset" if reset else ("shared" if minting != "none" else "ambiguous"),
    }


@pytest.fixture(scope="module")
def small():
    return {p: generate_corpus(p, SMALL_TRACES, SEED) for p in ("semianalysis", "kv-cache-tester")}


def _blob(traces) -> bytes:
    return b"".join(orjson.dumps(t) + b"\n" for t in traces)


# --- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["semianalysis", "kv-cache-tester"])
def test_same_arguments_same_bytes(tmp_path, profile):
    a = write_corpus(iter_corpus(profile, 12, SEED), tmp_path / "a.jsonl")
    b = write_corpus(iter_corpus(profile, 12, SEED), tmp_path / "b.jsonl")
    assert a.read_bytes() == b.read_bytes()
    other = generate_corpus(profile, 12, SEED + 1)
    assert _blob(other) != a.read_bytes()


def test_same_bytes_in_another_process(tmp_path):
    """Nothing may depend on hash randomisation or process state."""
    out = tmp_path / "sub.jsonl"
    code = (
        "import sys; from weka_assets.synthetic import iter_corpus, write_corpus; "
        "write_corpus(iter_corpus('kv-cache-tester', 8, 3), sys.argv[1])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env)
    assert out.read_bytes() == _blob(generate_corpus("kv-cache-tester", 8, 3))


@pytest.mark.parametrize("profile", ["semianalysis", "kv-cache-tester"])
def test_prefix_of_a_longer_corpus(profile):
    assert _blob(generate_corpus(profile, 5, SEED)) == _blob(generate_corpus(profile, 11, SEED)[:5])


def test_bad_arguments():
    for args in (
        ("other", 1, 0),
        ("semianalysis", -1, 0),
        ("semianalysis", 1, -3),
        ("semianalysis", True, 0),
    ):
        with pytest.raises(ValueError):
            list(iter_corpus(*args))
    with pytest.raises(ValueError):
        list(iter_corpus("semianalysis", 1, 0, "huge"))


# --- conventions ----------------------------------------------------------------------------


def test_every_trace_perfect_shared_and_position_consistent(small):
    for profile, traces in small.items():
        for trace in traces:
            a = _analyse(trace)
            assert a["perfect"], (profile, trace["id"], a["walks"])
            assert a["verdict"] == "shared", (profile, trace["id"])
            assert a["position_violations"] == 0, (profile, trace["id"])
            assert "mixed" not in a["inner"] and a["hashing"] <= {"floor", "ceil"}


def test_semianalysis_conventions(small):
    for i, trace in enumerate(small["semianalysis"]):
        assert trace["id"] == f"sa-{SEED}-{i:05d}"
        assert trace["block_size"] == 64 and trace["hash_id_scope"] == "local"
        assert not {"tool_tokens", "system_tokens", "totals"} & trace.keys()
        a = _analyse(trace)
        assert a["base"] == 0
        assert a["minting"] == "document"
        assert a["inner"] <= {"absolute"}
        parent, subs = _calls(trace)
        for s in subs:
            assert not {"tool_tokens", "system_tokens"} & s.keys()
        for c in parent + [c for s in subs for c in s["requests"]]:
            assert len(c["hash_ids"]) == math.ceil(c["in"] / 64)


def test_semianalysis_partial_block_never_reused_as_full(small):
    for trace in small["semianalysis"]:
        parent, subs = _calls(trace)
        calls = parent + [c for s in subs for c in s["requests"]]
        partial = {c["hash_ids"][-1] for c in calls if c["in"] % 64}
        full = {x for c in calls for x in c["hash_ids"][: c["in"] // 64]}
        assert not partial & full, trace["id"]


def test_kv_cache_tester_conventions(small):
    with_subs = 0
    for i, trace in enumerate(small["kv-cache-tester"]):
        assert trace["id"] == f"kvt-{SEED}-{i:05d}"
        a = _analyse(trace)
        assert a["base"] == 1
        parent, subs = _calls(trace)
        calls = parent + [c for s in subs for c in s["requests"]]
        for c in calls:
            assert len(c["hash_ids"]) == c["in"] // 64
        if subs:
            with_subs += 1
            assert a["minting"] == "parent_first"
            assert a["walks"]["document"][0] > 0  # document order would report false resets
            assert a["inner"] == {"relative"}
        # declared prefix: every parent call starts with the same blocks 1..P//64
        declared = trace["tool_tokens"] + trace["system_tokens"]
        prefix = list(range(1, declared // 64 + 1))
        assert parent[0]["in"] > declared
        for c in parent:
            assert c["hash_ids"][: len(prefix)] == prefix
        for s in subs:
            assert s["tool_tokens"] + s["system_tokens"] < s["requests"][0]["in"]
        totals = trace["totals"]
        assert totals["subagent_count"] == len(subs)
        assert totals["parent_tokens"]["input"] == sum(c["in"] for c in parent)
        assert totals["combined_tokens"]["output"] == sum(c["out"] for c in calls)
        for c in calls:
            assert all(v is not None for v in c.values())
    assert with_subs >= 5


def test_profiles_render_the_same_conversations(small):
    for sa, kvt in zip(small["semianalysis"], small["kv-cache-tester"], strict=True):
        shape = [
            [(c["in"], c["out"], c["stop"]) for c in (r.get("requests") or [r])]
            for r in sa["requests"]
        ]
        assert shape == [
            [(c["in"], c["out"], c["stop"]) for c in (r.get("requests") or [r])]
            for r in kvt["requests"]
        ]


def test_call_fields_and_timeline(small):
    streaming = ttft = 0
    for trace in small["semianalysis"]:
        parent, subs = _calls(trace)
        for c in parent + [c for s in subs for c in s["requests"]]:
            assert c["type"] in ("n", "s") and c["stop"] in ("", "tool_use", "end_turn")
            assert c["api_time"] >= 0 and c["think_time"] >= 0
            streaming += c["type"] == "s"
            ttft += c.get("ttft") is not None
            assert ("ttft" in c) == (c["type"] == "s")
        ts = [r["t"] for r in trace["requests"]]
        assert ts == sorted(ts) and parent[0]["t"] == 0.0
        reqs = trace["requests"]
        for k, r in enumerate(reqs):
            if r["type"] != "subagent" or r["status"] != "completed":
                continue
            last = r["requests"][-1]
            end = last["t"] + last["api_time"]
            nxt = next(q for q in reqs[k + 1 :] if q["type"] != "subagent")
            assert nxt["t"] >= end, (trace["id"], r["agent_id"])
        ids = [s["agent_id"] for s in subs]
        assert len(ids) == len(set(ids))
    assert streaming and ttft


# --- shapes ---------------------------------------------------------------------------------


def test_shapes_present(small):
    traces = small["kv-cache-tester"]
    analyses = [_analyse(t) for t in traces]
    with_subs = [t for t in traces if _calls(t)[1]]
    assert 0.15 <= len(with_subs) / len(traces) <= 0.45
    n_subs = sum(len(_calls(t)[1]) for t in with_subs)
    assert 3 <= n_subs / len(with_subs) <= 8
    assert any(x > 0 for a in analyses for x in a["sibling_share"])
    assert any(x > 0 for a in analyses for x in a["parent_share"])

    background = [s for t in traces for s in _calls(t)[1] if s["status"] == "async_launched"]
    assert background
    for s in background:
        assert s["duration_ms"] is None and s["total_tokens"] is None
        assert s["tool_use_count"] is None

    # parallel siblings: consecutive entries that share their first blocks, then diverge
    siblings = 0
    for t in traces:
        reqs = t["requests"]
        for a, b in zip(reqs, reqs[1:], strict=False):
            if a["type"] == b["type"] == "subagent":
                x, y = a["requests"][0]["hash_ids"], b["requests"][0]["hash_ids"]
                siblings += bool(x and y and x[0] == y[0] and x != y)
    assert siblings

    # compaction: the context shrinks to the fixed prefix plus a summary, then grows again
    compactions = 0
    for t in traces:
        parent, _ = _calls(t)
        declared = (t["tool_tokens"] + t["system_tokens"]) // 64
        for a, b in zip(parent, parent[1:], strict=False):
            if b["in"] < a["in"]:
                compactions += 1
                assert b["hash_ids"][:declared] == a["hash_ids"][:declared]
                assert b["hash_ids"][declared] != a["hash_ids"][declared]
    assert compactions


def test_small_size_bounds(small):
    for trace in small["semianalysis"]:
        parent, subs = _calls(trace)
        assert 4 <= len(parent) <= 15
        for c in parent + [c for s in subs for c in s["requests"]]:
            assert c["in"] <= 12_000


def test_full_size_scale():
    traces = generate_corpus("kv-cache-tester", 3, SEED, size="full")
    peak = max(c["in"] for t in traces for c in _calls(t)[0])
    assert peak > 100_000
    for t in traces:
        a = _analyse(t)
        assert a["perfect"] and a["position_violations"] == 0


# --- output formats -------------------------------------------------------------------------


def _read_jsonl(data: bytes) -> list[dict]:
    return [orjson.loads(line) for line in data.splitlines()]


def test_write_jsonl_and_gzip_round_trip(tmp_path):
    expected = generate_corpus("semianalysis", 6, SEED)
    jsonl = write_corpus(iter(expected), tmp_path / "c.jsonl")
    assert _read_jsonl(jsonl.read_bytes()) == expected
    gz1 = write_corpus(iter_corpus("semianalysis", 6, SEED), tmp_path / "c.jsonl.gz")
    gz2 = write_corpus(iter_corpus("semianalysis", 6, SEED), tmp_path / "d" / "c.jsonl.gz")
    assert gz1.read_bytes() == gz2.read_bytes()
    assert gzip.decompress(gz1.read_bytes()) == jsonl.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "c.jsonl.gz", "d"]


def test_write_directory_round_trip_and_replace(tmp_path):
    expected = generate_corpus("kv-cache-tester", 5, SEED)
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "stale.json").write_bytes(b"{}")
    assert write_corpus(iter(expected), out) == out
    files = sorted(out.iterdir())
    assert [p.name for p in files] == [f"{t['id']}.json" for t in expected]
    assert [orjson.loads(p.read_bytes()) for p in files] == expected
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]


def test_failed_write_leaves_nothing(tmp_path):
    def broken():
        yield from generate_corpus("semianalysis", 2, SEED)
        raise RuntimeError("boom")

    for name in ("x.jsonl", "x.jsonl.gz", "xdir"):
        with pytest.raises(RuntimeError):
            write_corpus(broken(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_no_dagster_in_the_generator():
    src = Path(__file__).parents[1] / "weka_assets" / "synthetic"
    for path in src.glob("*.py"):
        assert "dagster" not in path.read_text().lower(), path
