"""The scope report against the contract's published figures and an independent implementation."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weka_assets.pipeline import scope_report
from weka_assets.traces.scope import CONTRACT_FIGURES
from weka_assets_tests.corpora import REAL_SAMPLE, synthetic
from weka_assets_tests.reference import reference_scope_report

COMPARED = CONTRACT_FIGURES  # every figure of the contract's corpus report


def _close(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=1e-12)
    return a == b


def assert_matches_reference(path):
    ours = scope_report(path).model_dump(mode="json")
    ref = reference_scope_report(path)
    for key in COMPARED:
        assert _close(ours[key], ref[key]), f"{key}: product {ours[key]} != reference {ref[key]}"
    per = {r["trace"]: r for r in ours["per_trace"]}
    for tid, r in ref["per_trace"].items():
        assert (
            per[tid]["minting_order"],
            per[tid]["perfect"],
            per[tid]["verdict"],
            per[tid]["base"],
            per[tid]["holes"],
        ) == (r["minting_order"], r["perfect"], r["verdict"], r["base"], r["holes"]), tid


def test_real_sample_reproduces_the_contract_figures():
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real sample missing at {REAL_SAMPLE}")
    r = scope_report(REAL_SAMPLE)
    assert r.passed and r.traces == 30 and r.verdict == {"shared": 30, "reset": 0, "ambiguous": 0}
    assert r.traces_with_subagents == 8 and r.minting_order == {
        "document": 22,
        "parent_first": 8,
        "none": 0,
    }
    assert r.perfect_traces == 28 and r.holes_traces == 2 and r.base == {"1": 30}
    assert r.hashing == {"floor": 1950, "ceil": 0, "truncated": 0, "over": 0}
    assert r.inner_time == {"absolute": 0, "relative": 24, "mixed": 0}
    assert r.fresh_below_events["parent_first"] == 0 and r.fresh_below_events["document"] > 1000
    assert r.parent_share.traces_affected == 0 and r.parent_share.mean == 0
    assert round(r.sibling_share.mean, 3) == 0.145 and round(r.sibling_share.median, 3) == 0.139
    assert r.ids == 2_853_880 and r.conventions == {"kv-cache-tester": 30}


def test_real_sample_matches_reference():
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real sample missing at {REAL_SAMPLE}")
    assert_matches_reference(REAL_SAMPLE)


@pytest.mark.parametrize("profile", ["semianalysis", "kv-cache-tester"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_synthetic_corpora_match_reference(profile, seed):
    assert_matches_reference(synthetic(profile, traces=8, seed=seed))


@pytest.mark.parametrize(
    "profile, convention, minting",
    [
        ("semianalysis", "semianalysis", "document"),
        ("kv-cache-tester", "kv-cache-tester", "parent_first"),
    ],
)
def test_synthetic_profiles_are_detected(profile, convention, minting):
    r = scope_report(synthetic(profile, traces=8, seed=1))
    assert r.passed and r.conventions == {convention: 8}
    with_subs = r.traces_with_subagents
    assert r.perfect_traces == 8 and with_subs > 0
    expected = {"document": 8 - with_subs, "parent_first": with_subs, "none": 0}
    if minting == "document":
        expected = {"document": 8, "parent_first": 0, "none": 0}
    assert r.minting_order == expected


def _broken(tmp_path, mutate):
    lines = [
        json.loads(x)
        for x in synthetic("kv-cache-tester", traces=8, seed=1).read_text().splitlines()
    ]
    target = next(t for t in lines if any(r["type"] == "subagent" for r in t["requests"]))
    mutate(target, lines)
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(json.dumps(t) for t in lines) + "\n")
    return path, target["id"]


def _reset(t, _):
    sub = next(r for r in t["requests"] if r["type"] == "subagent")
    for c in sub["requests"]:
        c["hash_ids"] = list(range(1, len(c["hash_ids"]) + 1))


def _swap(t, _):
    c = next(r for r in t["requests"] if r["type"] != "subagent" and len(r["hash_ids"]) > 3)
    c["hash_ids"][1], c["hash_ids"][2] = c["hash_ids"][2], c["hash_ids"][1]


@pytest.mark.parametrize("mutate, verdict", [(_reset, "reset"), (_swap, "ambiguous")])
def test_reset_and_ambiguous_fail_by_default_and_can_be_excluded(tmp_path, mutate, verdict):
    path, tid = _broken(tmp_path, mutate)
    r = scope_report(path)
    assert not r.passed and r.verdict[verdict] == 1 and tid in r.failure_reasons[0]
    ex = scope_report(path, "exclude")
    assert ex.passed and ex.excluded_traces == [tid]


def test_duplicate_trace_id_and_over_hashing_are_hard_errors(tmp_path):
    def mutate(t, lines):
        lines.append(dict(lines[0]))
        c = next(r for r in t["requests"] if r["type"] != "subagent")
        c["hash_ids"] = c["hash_ids"] + [10**9, 10**9 + 1]

    path, tid = _broken(tmp_path, mutate)
    r = scope_report(path)
    rules = {e["rule"]: e for e in r.hard_errors}
    assert set(rules) == {"duplicate_trace_id", "hash_ids_over"} and not r.passed
    assert rules["hash_ids_over"]["trace"] == tid and rules["hash_ids_over"]["request"] is not None
    assert rules["duplicate_trace_id"]["line"] == 9


@given(profile=st.sampled_from(["semianalysis", "kv-cache-tester"]), seed=st.integers(100, 10**6))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_corpora_never_seen_before_match_reference(profile, seed):
    """Fresh seeds each run (hypothesis): the product and the reference agree on all figures."""
    assert_matches_reference(synthetic(profile, traces=5, seed=seed))
