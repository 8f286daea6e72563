"""Blast radius of a decoder change: finding the earlier dataset of a corpus, identical decodes
compare as unchanged, the historic scope fix on real and synthetic traces against an
independent count, exact token comparison against full expansion, and misaligned datasets."""

import dataclasses
import json

import numpy as np
import orjson
import pytest

from weka_assets.decoding.dataset import DecodedDataset, open_dataset
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.errors import DecodeError
from weka_assets.pipeline import decode_corpus, scope_report
from weka_assets.replay.blast_radius import (
    CAUSES,
    BlastRadius,
    blast_radius,
    find_previous_dataset,
)
from weka_assets.replay.unbounded import replay_unbounded
from weka_assets.versions import MANIFEST_VERSION
from weka_assets_tests.corpora import REAL_SAMPLE, decoded, synthetic, truncated

needs_real = pytest.mark.skipif(
    not REAL_SAMPLE.is_dir(), reason=f"real sample missing at {REAL_SAMPLE}"
)


def decode(corpus, root, version=MANIFEST_VERSION, **settings):
    out = decode_corpus(
        corpus, root, DecodeSettings(**settings), manifest_version=version, measure_drift=False
    )
    return out.path


def assert_unchanged(br: BlastRadius, arrays: dict) -> None:
    assert br.calls_tokens_changed == br.full_blocks_changed == br.distinct_blocks_changed == 0
    assert br.calls_cache_changed == 0 and br.hit_rate_change == 0
    assert br.by_cause == br.tokens_changed_by_cause == dict.fromkeys(CAUSES, 0)
    assert not arrays["tokens_changed"].any() and not arrays["cache_changed"].any()
    assert (arrays["cause"] == -1).all() and (arrays["token_cause"] == -1).all()
    assert (arrays["hits_current"] == arrays["hits_previous"]).all()


# ---- 1. identical decodes, and finding the previous dataset ---------------------------------


def test_a_dataset_against_itself_changes_nothing():
    ds = decoded(synthetic("semianalysis", traces=6, seed=4))
    br, arrays = blast_radius(ds, ds)
    assert_unchanged(br, arrays)
    assert br.calls == ds.n_calls and br.previous_key == br.current_key


def test_a_version_bump_with_identical_bytes_is_found_and_changes_nothing(tmp_path):
    corpus = synthetic("kv-cache-tester", traces=6, seed=4)
    root = tmp_path / "datasets"
    v0 = decode(corpus, root)
    v1 = decode(corpus, root, MANIFEST_VERSION + 1)
    # decodes of other inputs, and folders that are not datasets, are never candidates
    decode(corpus, root, scope_policy="session")
    decode(corpus, root, seed=5)
    decode(synthetic("kv-cache-tester", traces=5, seed=8), root)
    (root / "partial").mkdir()
    (root / "partial" / "calls.parquet").write_bytes(b"")
    (root / "garbage").mkdir()
    (root / "garbage" / "manifest.json").write_text("{not json")
    (root / "a-file").write_text("x")
    current = open_dataset(v1)
    assert find_previous_dataset(root, current) == v0
    assert find_previous_dataset(tmp_path / "missing", current) is None
    assert find_previous_dataset(root, open_dataset(root / v0.name)) == v1
    assert find_previous_dataset(root, open_dataset(decode(corpus, root, seed=5))) is None
    # with three versions, the newest other one wins
    v2 = decode(corpus, root, MANIFEST_VERSION + 2)
    assert find_previous_dataset(root, open_dataset(v2)) == v1
    br, arrays = blast_radius(current, open_dataset(v0))
    # a dataset folder with a listed file missing is skipped
    (v1 / "calls.parquet").unlink()
    assert find_previous_dataset(root, open_dataset(v2)) == v0

    assert_unchanged(br, arrays)
    assert (br.current_manifest_version, br.previous_manifest_version) == (
        MANIFEST_VERSION + 1,
        MANIFEST_VERSION,
    )
    assert br.current_key == v1.name and br.previous_key == v0.name
    assert br.token_replay_hit_rate == br.previous_token_replay_hit_rate is not None
    json.loads(br.model_dump_json())
    assert "0 of" in br.markdown()


def test_without_a_previous_dataset_everything_is_zero():
    ds = decoded(synthetic("semianalysis", traces=6, seed=4))
    br, arrays = blast_radius(ds, None)
    assert br.previous_key is None and br.previous_manifest_version is None
    assert br.calls_tokens_changed == br.calls_cache_changed == 0
    assert br.hit_rate_change is None and br.token_replay_hit_rate is not None
    assert (arrays["hits_previous"] == -1).all()
    assert "no earlier dataset" in br.markdown()


# ---- 2./3. the historic scope fix: trace policy against session policy ----------------------


def cross_conversation_calls(ds: DecodedDataset, full_hits: np.ndarray) -> set[int]:
    """Calls whose leading run of theoretical full-block hits reaches an id that their own
    conversation had not sent before (so the hit came from another conversation of the trace):
    exactly the hits a per-conversation scope loses. Plain Python, per trace in replay order."""
    out = set()
    c = ds.calls
    for sl in ds.trace_slices():
        senders: dict[int, set[int]] = {}
        for i in range(sl.start, sl.stop):
            conv = int(c["conv"][i])
            ids = ds.call_ids(i)[: int(c["n_full"][i])].tolist()
            if any(conv not in senders[x] for x in ids[: int(full_hits[i])]):
                out.add(i)
            for x in ids:
                senders.setdefault(x, set()).add(conv)
    return out


def first_full_sender(ds: DecodedDataset) -> list[dict[int, int]]:
    """Per trace: hash id -> conversation that first sent it as a full block (replay order)."""
    out = []
    for sl in ds.trace_slices():
        first: dict[int, int] = {}
        for i in range(sl.start, sl.stop):
            for x in ds.call_ids(i)[: int(ds.calls["n_full"][i])].tolist():
                first.setdefault(x, int(ds.calls["conv"][i]))
        out.append(first)
    return out


def check_scope_fix(path) -> tuple[BlastRadius, dict]:
    cur, prev = decoded(path), decoded(path, "session")
    br, arrays = blast_radius(cur, prev)
    sub = cur.role_mask("subagent")
    # tokens: every subagent call changed (its scope changed), no parent call
    assert arrays["tokens_changed"][sub].all() and not arrays["tokens_changed"][~sub].any()
    assert br.per_role["parent"].calls_tokens_changed == 0
    assert br.calls_tokens_changed == br.per_role["subagent"].calls_tokens_changed == sub.sum()
    # every full block of a subagent call changed
    assert br.full_blocks_changed == int(cur.calls["n_full"][sub].sum())
    # cache: exactly the calls that hit a block another conversation sent
    _, cf = replay_unbounded(cur)
    expected = cross_conversation_calls(cur, cf.full_hits)
    assert set(np.flatnonzero(arrays["cache_changed"]).tolist()) == expected
    assert br.calls_cache_changed == len(expected) > 0
    assert (arrays["hits_current"] == cf.token_hits).all()
    assert (arrays["hits_current"] >= arrays["hits_previous"]).all()
    # cause of each cache change: the first full sender of the id where the two runs part
    firsts = first_full_sender(cur)
    for i in expected:
        t, conv = int(cur.calls["trace"][i]), int(cur.calls["conv"][i])
        q = int(arrays["hits_previous"][i])
        sender = firsts[t][int(cur.call_ids(i)[q])]
        assert sender != conv
        assert CAUSES[arrays["cause"][i]] == ("parent" if sender == 0 else "sibling")
    assert br.by_cause["own"] == 0
    assert sum(br.by_cause.values()) == br.calls_cache_changed
    assert sum(br.tokens_changed_by_cause.values()) == br.calls_tokens_changed
    assert br.hit_rate_change > 0 and br.per_role["parent"].hit_rate_change == 0
    table = {(r["role"], r["cause"]): r for r in br.table}
    assert sum(r["calls_cache_changed"] for r in br.table) == br.calls_cache_changed
    assert table["subagent", "sibling"]["calls_cache_changed"] == br.by_cause["sibling"]
    hit_blocks = int((arrays["hits_current"] - arrays["hits_previous"]).sum())
    assert sum(r["hit_blocks_change"] for r in br.table) == hit_blocks > 0
    return br, arrays


@needs_real
def test_scope_fix_on_the_real_sample():
    br, _ = check_scope_fix(REAL_SAMPLE)
    # the real sample has parent share 0: every lost hit is a sibling's block
    assert br.by_cause == {"parent": 0, "sibling": br.calls_cache_changed, "own": 0}
    assert br.calls == 1950 and br.calls_tokens_changed == 264
    assert br.token_replay_hit_rate == 0.9513143509888292
    assert "264 of 1950 calls change tokens (all subagent)" in br.markdown()


def test_scope_fix_on_a_synthetic_corpus_with_forks():
    path = synthetic("semianalysis", traces=12, seed=3)
    assert scope_report(path).model_dump()["parent_share"]["traces_affected"] > 0  # the premise
    br, _ = check_scope_fix(path)
    assert br.by_cause["parent"] > 0 and br.by_cause["sibling"] > 0


# ---- token comparison is exact: against a full expansion of every call ----------------------


def brute_force(cur: DecodedDataset, prev: DecodedDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per current call: changed full-block positions and whether any token differs,
    from fully expanded calls aligned by (trace id, conv, request, inner)."""

    def keys(ds):
        c = ds.calls
        return {
            (
                ds.traces[int(c["trace"][i])]["id"],
                *(int(c[k][i]) for k in ("conv", "request", "inner")),
            ): i
            for i in range(ds.n_calls)
        }

    prev_of = keys(prev)
    full = np.zeros(cur.n_calls, dtype=np.int64)
    any_token = np.zeros(cur.n_calls, dtype=bool)
    for key, i in keys(cur).items():
        tc, tp = cur.expand_call(i), prev.expand_call(prev_of[key])
        bs = int(cur.calls["block_size"][i])
        n = tc.size // bs * bs
        full[i] = (tc[:n] != tp[:n]).reshape(-1, bs).any(axis=1).sum()
        any_token[i] = (tc != tp).any()
    return full, any_token


def relayout(ds: DecodedDataset) -> DecodedDataset:
    """The same dataset with some calls laid out differently (a hypothetical decoder change):
    partial blocks turned into tail filler, and a last full block turned into tail filler."""
    calls = {k: v.copy() for k, v in ds.calls.items()}
    partial = np.flatnonzero(calls["partial_len"] > 0)[::2]
    calls["tail_len"][partial] = calls["partial_len"][partial]
    calls["partial_len"][partial] = 0
    calls["tail_offset"][partial] = 12345
    shorter = np.flatnonzero((calls["partial_len"] == 0) & (calls["n_full"] > 2))[::3]
    calls["n_full"][shorter] -= 1
    calls["tail_len"][shorter] += calls["block_size"][shorter]
    return dataclasses.replace(ds, calls=calls, path=None)


@pytest.mark.parametrize("case", ["session", "seed", "truncated-seed", "relayout"])
def test_token_changes_equal_a_full_expansion(case):
    if case == "session":
        path = synthetic("semianalysis", traces=12, seed=4)  # hashed partial blocks
        cur, prev = decoded(path), decoded(path, "session")
        assert (cur.calls["partial_len"] > 0).any()
    elif case == "seed":
        path = synthetic("kv-cache-tester", traces=6, seed=4)  # unhashed tails
        cur, prev = decoded(path), decoded(path, seed=1)
    elif case == "truncated-seed":
        path = truncated()
        cur, prev = decoded(path), decoded(path, seed=1)
        assert (cur.calls["tail_len"] >= 64).any()
    else:
        cur = decoded(synthetic("semianalysis", traces=6, seed=4))
        prev = relayout(cur)
    br, arrays = blast_radius(cur, prev)
    full, any_token = brute_force(cur, prev)
    assert (arrays["full_blocks_changed"] == full).all()
    assert (arrays["tokens_changed"] == any_token).all()
    assert br.full_blocks_changed == full.sum() and br.calls_tokens_changed == any_token.sum()
    assert any_token.any()
    changed = arrays["tokens_changed"]
    assert ((arrays["token_cause"] >= 0) == changed).all()


# ---- 4. datasets of different corpora --------------------------------------------------------


def test_misaligned_datasets_raise():
    a = decoded(synthetic("kv-cache-tester", traces=6, seed=4))
    b = decoded(synthetic("semianalysis", traces=6, seed=5))
    with pytest.raises(DecodeError, match="different traces"):
        blast_radius(a, b)
    # a prefix of the same corpus: the missing traces are named
    with pytest.raises(DecodeError, match="only in the previous"):
        blast_radius(decoded(synthetic("kv-cache-tester", traces=4, seed=4)), a)
    # same traces, another call
    calls = {k: v.copy() for k, v in a.calls.items()}
    calls["request"][3] += 1000
    with pytest.raises(DecodeError, match="different calls.*request"):
        blast_radius(dataclasses.replace(a, calls=calls, path=None), a)
    # same calls, another recording
    calls = {k: v.copy() for k, v in a.calls.items()}
    calls["tokens_in"][5] += 1
    with pytest.raises(DecodeError, match="tokens_in"):
        blast_radius(dataclasses.replace(a, calls=calls, path=None), a)


def test_the_summary_is_json():
    path = synthetic("semianalysis", traces=6, seed=4)
    br, _ = blast_radius(decoded(path), decoded(path, "session"))
    again = BlastRadius.model_validate(orjson.loads(orjson.dumps(br.model_dump(mode="json"))))
    assert again == br
    assert len(br.table) == 6 and br.markdown().startswith("**Blast radius**")
