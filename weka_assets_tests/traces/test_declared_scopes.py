"""Every declared hash_id_scope (local, global, per_context, absent) proven from the data and
decoded in its layout (formats.md): no sharing lost, none invented."""

import json
from pathlib import Path

import numpy as np
import pytest

from weka_assets.decoding.dataset import open_dataset
from weka_assets.decoding.decoder import CORPUS_SCOPE
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.errors import CorpusRejected
from weka_assets.pipeline import decode_corpus, replay, scope_report
from weka_assets_tests.corpora import synthetic

KVT = "kv-cache-tester"


def rewrite(src: Path, out: Path, change) -> Path:
    """The corpus at `src` (a folder of .json or a .jsonl) with `change(trace, index)` applied
    to every trace, as a .jsonl file."""
    if src.is_dir():
        traces = [json.loads(f.read_text()) for f in sorted(src.glob("*.json"))]
    else:
        traces = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    for k, t in enumerate(traces):
        change(t, k)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(t) + "\n" for t in traces))
    return out


def calls_of(t: dict):
    for r in t["requests"]:
        yield from (r["requests"] if r["type"] == "subagent" else [r])


def absent(t, _k):
    t.pop("hash_id_scope")


def per_context(t, _k):
    """What older traces look like: each subagent numbers its own blocks from the base, so an
    id shared by the parent and a subagent is two different blocks. No declaration."""
    t.pop("hash_id_scope")
    base = min(min(c["hash_ids"]) for c in calls_of(t) if c["hash_ids"])
    for r in t["requests"]:
        if r["type"] == "subagent":
            renumber: dict[int, int] = {}
            for c in r["requests"]:
                c["hash_ids"] = [
                    renumber.setdefault(h, base + len(renumber)) for h in c["hash_ids"]
                ]


def corpus_wide(t, k):
    """One namespace across the corpus: every trace's first two blocks (its system prompt)
    are the same two blocks; everything else is the trace's own, far from other traces'."""
    t["hash_id_scope"] = "global"
    head = next(c["hash_ids"][:2] for c in calls_of(t) if len(c["hash_ids"]) >= 2)
    shared = {head[0]: 7, head[1]: 8}
    for c in calls_of(t):
        c["hash_ids"] = [shared.get(h, h + (k + 1) * 10**7) for h in c["hash_ids"]]


def test_absent_declaration_on_per_trace_data_is_inferred_per_trace(real_sample, tmp_path):
    r = scope_report(rewrite(real_sample, tmp_path / "absent.jsonl", absent))
    assert r.passed and r.declared_scope == {"absent": 30}
    assert r.inferred_scope_traces == 30 and r.layout == "trace"
    assert r.decode_scopes == {"trace": 30}
    assert {row["decode_scope"] for row in r.per_trace} == {"trace"}
    assert all(row["inferred"] for row in r.per_trace)
    assert "layout trace, 30 inferred" in r.summary()


def test_per_context_data_is_inferred_per_context(real_sample, tmp_path):
    r = scope_report(rewrite(real_sample, tmp_path / "ctx.jsonl", per_context))
    assert r.passed and r.layout == "context", r.failure_reasons
    with_subagents = [row for row in r.per_trace if row["subagents"]]
    assert len(with_subagents) == 8
    assert {row["decode_scope"] for row in with_subagents} == {"context"}
    # a trace of one context decodes alike either way; it does not decide the layout
    assert r.decode_scopes == {"context": 8, "trace": 22}


def test_per_context_data_declared_local_is_rejected_with_the_evidence(real_sample, tmp_path):
    def declared_local(t, k):
        per_context(t, k)
        t["hash_id_scope"] = "local"

    r = scope_report(rewrite(real_sample, tmp_path / "ctx-local.jsonl", declared_local))
    assert not r.passed and r.verdict["reset"] >= 1
    reason = r.failure_reasons[0]
    assert "renumbers from the base 1" in reason and "subagent" in reason, reason


def test_per_trace_data_declared_per_context_is_a_hard_error(real_sample, tmp_path):
    def declared(t, _k):
        t["hash_id_scope"] = "per_context"

    r = scope_report(rewrite(real_sample, tmp_path / "pc.jsonl", declared))
    errors = [e for e in r.hard_errors if e["rule"] == "scope_contradicted"]
    assert not r.passed and len(errors) == 8  # the 8 traces with subagents
    assert "does not number its own blocks" in errors[0]["message"]
    assert errors[0]["trace"] and errors[0]["file"].endswith("pc.jsonl")


def test_per_trace_data_declared_global_is_a_hard_error_naming_both_traces(real_sample, tmp_path):
    def declared(t, _k):
        t["hash_id_scope"] = "global"

    r = scope_report(rewrite(real_sample, tmp_path / "g.jsonl", declared))
    assert not r.passed and r.corpus_wide["position_conflicts"] > 0
    err = next(e for e in r.hard_errors if e["rule"] == "scope_contradicted")
    assert "hash_id_scope 'global'" in err["message"] and "in trace 'trace_" in err["message"]
    assert err["trace"] != "trace_0001"  # the later trace is named, the earlier one cited


def test_global_data_is_proven_corpus_wide(tmp_path):
    r = scope_report(rewrite(synthetic(KVT, traces=4, seed=3), tmp_path / "g.jsonl", corpus_wide))
    assert r.passed, r.failure_reasons
    assert r.layout == "corpus" and r.decode_scopes == {"corpus": 4}
    assert r.declared_scope == {"global": 4} and r.inferred_scope_traces == 0
    assert r.corpus_wide["position_conflicts"] == 0
    assert r.corpus_wide["ids_in_several_traces"] == 2


def test_global_corpus_shares_blocks_across_traces_and_nothing_else(tmp_path):
    corpus = rewrite(synthetic(KVT, traces=4, seed=3), tmp_path / "g.jsonl", corpus_wide)
    out = decode_corpus(corpus, tmp_path / "ds", measure_drift=False)
    ds = open_dataset(out.path)
    assert out.manifest["decode_scope"] == "corpus"
    assert out.material["decode_scopes"] == {"corpus": 4}
    assert {t["decode_scope"] for t in ds.traces} == {"corpus"}
    assert {tuple(t["scopes"]) for t in ds.traces} == {(CORPUS_SCOPE,)}
    slices = ds.trace_slices()
    bs = int(ds.calls["block_size"][0])
    a, b = ds.expand_call(slices[0].start), ds.expand_call(slices[1].start)
    assert np.array_equal(a[: 2 * bs], b[: 2 * bs])  # the shared system prompt
    assert not np.array_equal(a[2 * bs : 3 * bs], b[2 * bs : 3 * bs])  # the traces' own blocks
    result, _ = replay(ds)
    assert result.fidelity_mismatched_calls == 0
    assert result.cross_trace_shared_blocks == 2 * 3  # 2 blocks in 4 traces: 3 repeats each


def test_per_context_corpus_decodes_one_scope_per_context(tmp_path):
    corpus = rewrite(synthetic(KVT, traces=4, seed=3), tmp_path / "ctx.jsonl", per_context)
    out = decode_corpus(corpus, tmp_path / "ds", measure_drift=False)
    ds = open_dataset(out.path)
    assert out.manifest["decode_scope"] == "context"
    assert "context" in out.material["decode_scopes"]
    # each context its own scope: exactly what the legacy session policy does, so decoding it
    # "per session" changes nothing (there is no sharing between contexts to lose)
    legacy = decode_corpus(
        corpus, tmp_path / "ds", DecodeSettings(scope_policy="session"), measure_drift=False
    )
    old = open_dataset(legacy.path)
    assert np.array_equal(np.asarray(ds.block_offsets), np.asarray(old.block_offsets))
    # the theoretical figure keys ids by context too, so the decoded tokens reproduce it
    result, _ = replay(ds)
    assert result.fidelity_mismatched_calls == 0
    assert result.cross_trace_shared_blocks == 0


def test_per_context_corpus_cannot_be_decoded_with_one_scope_per_trace(tmp_path):
    """The mirror image of the historic bug: invented sharing between a parent and its
    subagents. Declared local, the same data fails the gate; nothing is published."""

    def declared_local(t, k):
        per_context(t, k)
        t["hash_id_scope"] = "local"

    corpus = rewrite(synthetic(KVT, traces=4, seed=3), tmp_path / "ctx.jsonl", declared_local)
    with pytest.raises(CorpusRejected, match="renumbers from the base"):
        decode_corpus(corpus, tmp_path / "ds", measure_drift=False)
    assert not any(p.name != ".filler-cache" for p in (tmp_path / "ds").iterdir())


def test_absent_declaration_decodes_the_same_blocks_as_local(tmp_path):
    local = synthetic(KVT, traces=4, seed=3)
    corpus = rewrite(local, tmp_path / "absent.jsonl", absent)
    a = open_dataset(decode_corpus(corpus, tmp_path / "ds", measure_drift=False).path)
    b = open_dataset(decode_corpus(local, tmp_path / "ds", measure_drift=False).path)
    assert np.array_equal(np.asarray(a.block_offsets), np.asarray(b.block_offsets))
    assert a.manifest["decode_scope"] == b.manifest["decode_scope"] == "trace"
    assert a.manifest["inferred_scope_traces"] == 4 and b.manifest["inferred_scope_traces"] == 0
