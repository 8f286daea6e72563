"""Checks of the test-side reference (reference.py): the real sample and hand-built traces."""

import gzip
import json
from pathlib import Path

import pytest

try:  # run from the project root, or with weka_assets_tests as a package
    from weka_assets_tests.reference import (
        load_raw_traces,
        reference_scope_report,
        reference_theoretical,
    )
except ModuleNotFoundError:  # pytest's default import mode puts this folder on sys.path
    from reference import load_raw_traces, reference_scope_report, reference_theoretical

REAL_SAMPLE = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "real-traces" / "kv-cache-tester-sample"
)


# --------------------------------------------------------------------------- real sample


@pytest.fixture(scope="module")
def real_report():
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real kv-cache-tester sample not found at {REAL_SAMPLE}")
    return reference_scope_report(REAL_SAMPLE)


@pytest.fixture(scope="module")
def real_theoretical():
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real kv-cache-tester sample not found at {REAL_SAMPLE}")
    return reference_theoretical(REAL_SAMPLE)


def test_real_sample_scope_report(real_report):
    r = real_report
    assert r["traces"] == 30
    assert r["traces_with_subagents"] == 8
    assert r["declared_scope"] == {"local": 30}
    assert r["verdict"] == {"shared": 30, "reset": 0, "ambiguous": 0}
    assert r["minting_order"] == {"document": 22, "parent_first": 8, "none": 0}
    assert r["perfect_traces"] == 28
    assert r["holes_traces"] == 2
    assert r["base"] == {"1": 30}
    assert r["fresh_below_events"]["parent_first"] == 0
    assert r["fresh_below_events"]["document"] > 1000  # document order would say "reset"
    assert r["hashing"] == {
        "floor": sum(r["hashing"].values()),
        "ceil": 0,
        "truncated": 0,
        "over": 0,
    }
    assert r["inner_time"] == {"absolute": 0, "relative": r["subagents"], "mixed": 0}
    assert r["reset_signature_subagents"] == 0
    assert r["parent_share"]["traces_affected"] == 0
    assert r["parent_share"]["mean"] == 0.0
    assert r["parent_share"]["median"] == 0.0
    assert r["sibling_share"]["mean"] == pytest.approx(0.145, abs=0.0005)
    assert r["sibling_share"]["median"] == pytest.approx(0.139, abs=0.0005)
    assert r["position_violations"] == 0
    per_trace = r["per_trace"]
    assert len(per_trace) == 30
    assert sum(1 for row in per_trace.values() if row["holes"] > 0) == 2
    assert all(row["verdict"] == "shared" for row in per_trace.values())


def test_real_sample_theoretical(real_theoretical):
    t = real_theoretical
    assert t["blocks"] == 2853880
    assert t["theoretical_hit_rate"] == 0.9513143509888292
    assert t["per_role"]["parent"]["blocks"] + t["per_role"]["subagent"]["blocks"] == t["blocks"]
    assert t["per_role"]["parent"]["hits"] + t["per_role"]["subagent"]["hits"] == t["hits"]
    assert sum(row[1] for row in t["per_call"].values()) == t["blocks"]
    assert sum(row[0] for row in t["per_call"].values()) == t["hits"]


# --------------------------------------------------------------------------- hand-built traces


def _call(t, n, ids):
    return {"t": t, "type": "n", "model": "m", "in": n, "out": 1, "hash_ids": ids}


def _subagent(t, agent_id, calls, status="completed"):
    return {
        "t": t,
        "type": "subagent",
        "agent_id": agent_id,
        "subagent_type": "Explore",
        "status": status,
        "models": ["m"],
        "requests": calls,
    }


def _trace(trace_id, requests):
    return {
        "id": trace_id,
        "models": ["m"],
        "block_size": 64,
        "hash_id_scope": "local",
        "requests": requests,
    }


def _write_dir(tmp_path, traces):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for trace in traces:
        (folder / (trace["id"] + ".json")).write_text(json.dumps(trace))
    return folder


# ids 1 and 2 swapped: k=0 sees 2 (gap), k=1 sees 1 (fresh-below); no walk explains it.
SWAPPED = _trace("swapped", [_call(0.0, 192, [2, 1, 3])])

# The subagent numbers its blocks from base again: S = {1, 2} = {base..max(S)}.
RESET = _trace(
    "reset",
    [
        _call(0.0, 192, [1, 2, 3]),
        _subagent(1.0, "a", [_call(0.5, 128, [1, 2])]),
        _call(9.0, 256, [1, 2, 3, 4]),
    ],
)

# Minted in document order: 1, 2, 3 | subagent 4 | 5. Parent-first walk: 1, 2, 3, 5 (gap),
# 4 (fresh-below), so only the document walk qualifies. The subagent's set {1, 2, 4} is not
# {base..max}, so no reset signature.
DOCUMENT = _trace(
    "document",
    [
        _call(0.0, 192, [1, 2, 3]),
        _subagent(1.0, "a", [_call(2.0, 192, [1, 2, 4])]),  # absolute inner time
        _call(5.0, 256, [1, 2, 3, 5]),
    ],
)

# Id 4 never sent: after the hole every new id (5 and 6) is a gap event.
HOLE = _trace("hole", [_call(0.0, 192, [1, 2, 3]), _call(1.0, 320, [1, 2, 3, 5, 6])])

# Background subagent; relative inner time 1.0 -> absolute 6.0, after the parent call at
# 5.5 although it precedes it in the document. ceil-hashed calls exercise the full-block
# variant.
TIMING = _trace(
    "timing",
    [
        _call(0.0, 130, [1, 2, 3]),  # 130 // 64 = 2, ceil 3: ceil
        _subagent(5.0, "bg", [_call(1.0, 200, [1, 2, 4, 5])], status="async_launched"),  # ceil
        _call(5.5, 256, [1, 2, 4, 6]),  # floor
    ],
)


def test_swapped_ids_are_ambiguous(tmp_path):
    r = reference_scope_report(_write_dir(tmp_path, [SWAPPED]))
    assert r["per_trace"]["swapped"] == {
        "minting_order": "none",
        "perfect": False,
        "verdict": "ambiguous",
        "base": 1,
        "holes": 0,
    }
    assert r["minting_order"] == {"document": 0, "parent_first": 0, "none": 1}
    assert r["verdict"] == {"shared": 0, "reset": 0, "ambiguous": 1}
    assert r["fresh_below_events"] == {"document": 1, "parent_first": 1}
    assert r["gap_events"] == {"document": 1, "parent_first": 1}
    assert r["perfect_traces"] == 0
    assert r["traces_with_subagents"] == 0
    assert r["subagent_first_block"] == {
        "equal_base": 0,
        "min": None,
        "median": None,
        "p90": None,
        "max": None,
    }
    assert r["parent_share"] == {"traces_affected": 0, "mean": None, "median": None}
    assert r["sibling_share"] == {"traces_affected": 0, "mean": None, "median": None}
    assert r["position_violations"] == 0  # every id at one block index


def test_swapped_position_violations(tmp_path):
    # [2, 1, 3] alone has every id at one index; add [1, 2, 3] and ids 1, 2 move.
    trace = _trace("swapped2", [_call(0.0, 192, [2, 1, 3]), _call(1.0, 192, [1, 2, 3])])
    r = reference_scope_report(_write_dir(tmp_path, [trace]))
    assert r["position_violations"] == 2
    assert r["per_trace"]["swapped2"]["verdict"] == "ambiguous"


def test_reset_signature(tmp_path):
    r = reference_scope_report(_write_dir(tmp_path, [RESET]))
    assert r["reset_signature_subagents"] == 1
    assert r["verdict"] == {"shared": 0, "reset": 1, "ambiguous": 0}
    # the ids themselves are minted in order: both walks are event-free, tie -> document
    assert r["per_trace"]["reset"] == {
        "minting_order": "document",
        "perfect": True,
        "verdict": "reset",
        "base": 1,
        "holes": 0,
    }
    assert r["subagent_first_block"] == {
        "equal_base": 1,
        "min": 1,
        "median": 1.0,
        "p90": 1.0,
        "max": 1,
    }
    assert r["parent_share"] == {"traces_affected": 1, "mean": 1.0, "median": 1.0}
    assert r["sibling_share"] == {"traces_affected": 0, "mean": None, "median": None}
    assert r["inner_time"] == {"absolute": 0, "relative": 1, "mixed": 0}


def test_document_minted_trace_with_subagent(tmp_path):
    r = reference_scope_report(_write_dir(tmp_path, [DOCUMENT]))
    assert r["per_trace"]["document"] == {
        "minting_order": "document",
        "perfect": True,
        "verdict": "shared",
        "base": 1,
        "holes": 0,
    }
    assert r["fresh_below_events"] == {"document": 0, "parent_first": 1}
    assert r["gap_events"] == {"document": 0, "parent_first": 1}
    assert r["inner_time"] == {"absolute": 1, "relative": 0, "mixed": 0}
    assert r["parent_share"] == {"traces_affected": 1, "mean": 2 / 3, "median": 2 / 3}
    assert r["reset_signature_subagents"] == 0
    assert r["subagent_first_block"]["equal_base"] == 1


def test_hole_is_not_perfect(tmp_path):
    r = reference_scope_report(_write_dir(tmp_path, [HOLE]))
    assert r["per_trace"]["hole"] == {
        "minting_order": "document",
        "perfect": False,
        "verdict": "shared",
        "base": 1,
        "holes": 1,
    }
    assert r["holes_traces"] == 1
    assert r["perfect_traces"] == 0
    assert r["fresh_below_events"] == {"document": 0, "parent_first": 0}
    assert r["gap_events"] == {"document": 2, "parent_first": 2}
    assert r["hashing"] == {"floor": 2, "ceil": 0, "truncated": 0, "over": 0}


def test_theoretical_time_order_and_full_blocks(tmp_path):
    folder = _write_dir(tmp_path, [TIMING])
    t = reference_theoretical(folder)
    # time order: parent@0 [1,2,3], parent@5.5 [1,2,4,6], subagent@6.0 [1,2,4,5]
    assert t["per_call"] == {
        ("timing", 0, 0, -1): (0, 3, 0, 2),
        ("timing", 0, 2, -1): (2, 4, 2, 4),
        ("timing", 1, 1, 0): (3, 4, 3, 3),
    }
    assert (t["hits"], t["blocks"]) == (5, 11)
    assert (t["full_block_hits"], t["full_blocks"]) == (5, 9)
    assert t["theoretical_hit_rate"] == 5 / 11
    assert t["theoretical_full_block_hit_rate"] == 5 / 9
    assert t["per_role"]["parent"] == {
        "theoretical_hit_rate": 2 / 7,
        "theoretical_full_block_hit_rate": 2 / 6,
        "blocks": 7,
        "hits": 2,
        "full_block_hits": 2,
        "full_blocks": 6,
    }
    assert t["per_role"]["subagent"]["hits"] == 3
    assert t["per_role"]["subagent"]["full_blocks"] == 3
    r = reference_scope_report(folder)
    assert r["per_trace"]["timing"]["minting_order"] == "document"
    assert r["per_trace"]["timing"]["perfect"] is True
    assert r["hashing"] == {"floor": 1, "ceil": 2, "truncated": 0, "over": 0}
    assert r["inner_time"] == {"absolute": 0, "relative": 1, "mixed": 0}


def test_partial_block_never_makes_a_full_block_hit(tmp_path):
    # call 1 hashes its partial block as id 2; call 2 has id 2 as a full block.
    trace = _trace("partial", [_call(0.0, 100, [1, 2]), _call(1.0, 128, [1, 2])])
    t = reference_theoretical(_write_dir(tmp_path, [trace]))
    assert t["per_call"][("partial", 0, 1, -1)] == (2, 2, 1, 2)
    assert (t["hits"], t["blocks"], t["full_block_hits"], t["full_blocks"]) == (2, 4, 1, 3)


def test_loader_jsonl_gz_drops_nulls_and_matches_directory(tmp_path):
    traces = [SWAPPED, RESET, DOCUMENT, HOLE, TIMING]
    folder = _write_dir(tmp_path, traces)
    padded = []
    for trace in traces:
        trace = json.loads(json.dumps(trace))
        for request in trace["requests"]:
            request["ttft"] = None
            request["agent_id"] = request.get("agent_id")  # None on model calls
            for inner in request.get("requests", []):
                inner["subagent_type"] = None
        padded.append(trace)
    jsonl = tmp_path / "traces.jsonl.gz"
    with gzip.open(jsonl, "wt") as handle:
        for trace in padded:
            handle.write(json.dumps(trace) + "\n\n")
    loaded = load_raw_traces(jsonl)
    assert [name for name, _ in loaded] == [f"traces.jsonl.gz:{2 * i + 1}" for i in range(5)]
    assert [trace for _, trace in loaded] == traces
    by_dir = reference_scope_report(folder)
    by_file = reference_scope_report(jsonl)
    # directory is read in file-name order, the jsonl in line order: same per-trace rows
    assert by_dir == by_file
    assert by_dir["verdict"] == {"shared": 3, "reset": 1, "ambiguous": 1}
    assert by_dir["minting_order"] == {"document": 4, "parent_first": 0, "none": 1}
