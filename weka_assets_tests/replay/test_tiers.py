"""Tiered KV caches: model geometry from config files, tier specs, per-tier hits against a direct
multi-tier exclusive LRU simulation, and the bandwidth windows on a hand-made case."""

import json
import time
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weka_assets.replay.accesses import Timeline, timeline
from weka_assets.replay.capacity import KV_PRESETS, KVGeometry, parse_capacity, reuse_profile
from weka_assets.replay.schedule import Arrival, call_start_times
from weka_assets.replay.tiers import (
    ModelGeometry,
    TierReport,
    _percentile_with_zeros,
    geometry_from_config,
    parse_tiers,
    resolve_geometry,
    tier_blocks,
    tier_hits,
    tier_report,
    timeline_profile,
    timeline_tier_report,
)
from weka_assets_tests.corpora import decoded, synthetic

# ---- geometry from config.json ---------------------------------------------------------------


def _config(tmp_path, name, fields):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


LLAMA = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_size": 4096,
    "torch_dtype": "bfloat16",
}
DEEPSEEK_V3 = {
    "model_type": "deepseek_v3",
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,  # MLA ignores it: one latent per token and layer
    "hidden_size": 7168,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "torch_dtype": "bfloat16",
}
# Gemma-2-like: every other layer windowed (the class's layer_types), head_dim given
GEMMA2 = {
    "model_type": "gemma2",
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_size": 2304,
    "sliding_window": 4096,
    "torch_dtype": "float32",
}
# Mistral-7B-v0.1-like: every layer windowed
MISTRAL = {
    "model_type": "mistral",
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_size": 4096,
    "sliding_window": 4096,
}


def test_dense_gqa_config_matches_the_preset(tmp_path):
    g = geometry_from_config(_config(tmp_path, "llama", LLAMA))
    assert g.attention == "gqa" and (g.layers, g.kv_heads, g.head_dim) == (32, 8, 128)
    assert g.bytes_per_token == KV_PRESETS["llama-3.1-8b"].bytes_per_token == 131072
    assert g.sliding_layers == 0 and g.sliding_window is None and g.name == "llama"
    # a path to the file itself; an fp8 KV cache halves it
    assert geometry_from_config(tmp_path / "llama" / "config.json").bytes_per_token == 131072
    assert geometry_from_config(tmp_path / "llama", kv_dtype_bytes=1).bytes_per_token == 65536
    # still a KVGeometry: the capacity parser takes it
    assert isinstance(g, KVGeometry) and parse_capacity("16GiB", 64, g) == 16 * 128
    # no num_key_value_heads: multi-head attention; no model_type: the fields as they are
    mha = {k: v for k, v in LLAMA.items() if k not in ("num_key_value_heads", "model_type")}
    g = geometry_from_config(_config(tmp_path, "mha", mha))
    assert g.kv_heads == 32 and g.bytes_per_token == 2 * 32 * 32 * 128 * 2
    # a model type this transformers does not know: the standard fields still read
    new = geometry_from_config(_config(tmp_path, "new", {**LLAMA, "model_type": "not_yet_known"}))
    assert new.bytes_per_token == 131072
    # GPT-2 names its fields n_layer / n_head / n_embd: the class's aliases count
    gpt2 = {"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768}
    g = geometry_from_config(_config(tmp_path, "gpt2", gpt2))
    assert g.bytes_per_token == 2 * 12 * 12 * 64 * 2


def test_mla_config(tmp_path):
    g = geometry_from_config(_config(tmp_path, "dsv3", DEEPSEEK_V3))
    assert g.attention == "mla" and (g.kv_lora_rank, g.qk_rope_head_dim) == (512, 64)
    assert g.bytes_per_token == 61 * 576 * 2 == 70272
    assert g.bytes_per_block(64) == 64 * 70272
    assert resolve_geometry(str(tmp_path / "dsv3")).bytes_per_token == 70272


def test_sliding_window_configs(tmp_path):
    g = geometry_from_config(_config(tmp_path, "gemma2", GEMMA2))
    layer = 2 * 4 * 256 * 4  # float32
    assert (g.sliding_window, g.sliding_layers, g.dtype_bytes) == (4096, 13, 4)
    assert g.bytes_per_token == 26 * layer  # the upper bound: windowed layers at full size
    assert g.full_bytes_per_token == 13 * layer
    assert g.bytes_for_sequence(100) == 26 * layer * 100
    assert g.bytes_for_sequence(10_000) == 13 * layer * 10_000 + 13 * layer * 4096
    m = geometry_from_config(_config(tmp_path, "mistral", MISTRAL))
    assert (m.sliding_window, m.sliding_layers, m.full_bytes_per_token) == (4096, 32, 0)
    assert m.bytes_per_token == 131072
    # Mistral v0.3: "sliding_window": null: no window (the class's 4096 default is not taken)
    v3 = geometry_from_config(_config(tmp_path, "v03", {**MISTRAL, "sliding_window": None}))
    assert (v3.sliding_window, v3.sliding_layers) == (None, 0)
    # Qwen2: the window applies only with use_sliding_window, to layers >= max_window_layers
    qwen = {**LLAMA, "model_type": "qwen2", "sliding_window": 1000, "max_window_layers": 20}
    q = geometry_from_config(_config(tmp_path, "qwen-off", qwen))
    assert q.sliding_layers == 0 and q.sliding_window is None
    q = geometry_from_config(_config(tmp_path, "qwen-on", {**qwen, "use_sliding_window": True}))
    assert (q.sliding_window, q.sliding_layers) == (1000, 12)
    # explicit layer_types win
    types = ["sliding_attention", "full_attention"] * 2
    small = {**LLAMA, "num_hidden_layers": 4, "model_type": "qwen2", "layer_types": types}
    small.update(sliding_window=128, use_sliding_window=True)
    assert geometry_from_config(_config(tmp_path, "types", small)).sliding_layers == 2


def test_nested_text_config(tmp_path):
    """Gemma-3-like multimodal config: the language model's fields sit in text_config, and
    head_dim (absent) is the model class's own 256, not hidden_size / heads = 320."""
    cfg = {
        "model_type": "gemma3",
        "text_config": {
            "model_type": "gemma3_text",
            "num_hidden_layers": 34,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "hidden_size": 2560,
            "sliding_window": 1024,
        },
        "torch_dtype": "float32",  # at the top only: it applies to the text model too
    }
    g = geometry_from_config(_config(tmp_path, "gemma3", cfg))
    assert (g.layers, g.kv_heads, g.head_dim, g.dtype_bytes) == (34, 4, 256, 4)
    assert (g.sliding_window, g.sliding_layers) == (1024, 34 - 34 // 6)


@pytest.mark.parametrize(
    "fields, missing",
    [
        ({k: v for k, v in LLAMA.items() if k != "num_hidden_layers"}, "num_hidden_layers"),
        ({k: v for k, v in DEEPSEEK_V3.items() if k != "qk_rope_head_dim"}, "qk_rope_head_dim"),
        (
            {"model_type": "llama", "num_hidden_layers": 4, "num_key_value_heads": 2},
            "head_dim",
        ),
        ({"num_hidden_layers": 4, "hidden_size": 64}, "num_key_value_heads"),
    ],
    ids=["layers", "mla-rope", "head-dim", "kv-heads"],
)
def test_broken_config_names_file_and_field(tmp_path, fields, missing):
    folder = _config(tmp_path, "broken", fields)
    with pytest.raises(ValueError) as err:
        geometry_from_config(folder)
    text = str(err.value)
    assert "\n" not in text and str(folder / "config.json") in text and missing in text


def test_bad_sources(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    for source in (tmp_path / "junk", tmp_path / "empty-dir"):
        if not source.exists():
            source.mkdir()
        with pytest.raises(ValueError) as err:
            geometry_from_config(source)
        assert "\n" not in str(err.value) and str(source) in str(err.value)
    with pytest.raises(ValueError, match="not a Hugging Face repo id"):
        geometry_from_config(str(tmp_path / "no" / "such" / "place"))


def test_hub_id_needs_a_revision_and_fails_fast_offline(monkeypatch):
    with pytest.raises(ValueError, match="pinned revision") as err:
        geometry_from_config("deepseek-ai/DeepSeek-V3")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="pinned revision"):
        resolve_geometry("meta-llama/Llama-3.1-8B")
    # offline: only the local cache is looked at, whatever huggingface_hub read at import
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.monotonic()
    with pytest.raises(ValueError) as err:
        geometry_from_config("weka-assets-tests/no-such-model", revision="0" * 40)
    assert time.monotonic() - t < 10
    text = str(err.value)
    assert "\n" not in text and "weka-assets-tests/no-such-model@" + "0" * 40 in text
    assert "HF_HUB_OFFLINE" in text


def test_resolve_preset():
    g = resolve_geometry("qwen2.5-32b")
    assert isinstance(g, ModelGeometry)
    assert g.bytes_per_token == KV_PRESETS["qwen2.5-32b"].bytes_per_token
    assert g.bytes_per_block(64) == KV_PRESETS["qwen2.5-32b"].bytes_per_block(64)


# ---- tier specs -------------------------------------------------------------------------------


def test_parse_tiers():
    assert parse_tiers("gpu=80GiB,host=1TiB,storage=50TiB") == [
        ("gpu", 80 * 2**30),
        ("host", 2**40),
        ("storage", 50 * 2**40),
    ]
    assert parse_tiers(" gpu = 1.5GB , disk=2tb ") == [("gpu", 1_500_000_000), ("disk", 2 * 10**12)]
    g = KV_PRESETS["llama-3.1-8b"]
    assert parse_tiers("gpu=5000blocks,host=7", g, 16) == [
        ("gpu", 5000 * 16 * 131072),
        ("host", 7 * 16 * 131072),
    ]
    assert tier_blocks(parse_tiers("gpu=5000blocks,host=1GiB", g, 64), g, 64) == [5000, 128]
    bad = [
        "",
        "gpu",
        "=80GiB",
        "gpu=80GiB,gpu=1TiB",
        "gpu=80GiB,",
        "gpu=80parsecs",
        "gpu=0GiB",
        "gpu=-5GiB",
        "gpu=0blocks",
        "gpu=1.5blocks",
        "gpu=",
    ]
    for spec in bad:
        with pytest.raises(ValueError) as err:
            parse_tiers(spec, g, 64)
        assert "\n" not in str(err.value), spec
    with pytest.raises(ValueError, match="geometry"):
        parse_tiers("gpu=5000blocks")


# ---- tier hits against a direct multi-tier simulation -----------------------------------------


def simulate_tiers(keys, lengths, capacities) -> np.ndarray:
    """[calls, tiers] hits of an explicit exclusive multi-tier LRU: one OrderedDict per tier
    (oldest first); a block enters tier 1 as its most recent; a tier over capacity demotes its
    least recent block to the next tier (the last tier drops it); a touched block found in any
    tier is removed there and put back into tier 1, demoting as needed. A call's hits are the
    leading run of its keys present in some tier at its start, each attributed to that tier."""
    tiers = [OrderedDict() for _ in capacities]
    out = np.zeros((len(lengths), len(capacities)), dtype=np.int64)
    keys = np.asarray(keys).tolist()
    start = 0
    for c, n in enumerate(np.asarray(lengths).tolist()):
        call = keys[start : start + n]
        start += n
        for k in call:
            where = next((t for t, tier in enumerate(tiers) if k in tier), None)
            if where is None:
                break
            out[c, where] += 1
        for k in call:
            for tier in tiers:
                if k in tier:
                    del tier[k]
                    break
            tiers[0][k] = None
            for t, tier in enumerate(tiers):
                while len(tier) > capacities[t]:
                    old, _ = tier.popitem(last=False)
                    if t + 1 < len(tiers):
                        tiers[t + 1][old] = None
    return out


def _timeline(keys, lengths, start_s=None, block_size=4):
    lengths = np.asarray(lengths, dtype=np.int64)
    n = lengths.size
    zeros = np.zeros(n, dtype=np.int64)
    return Timeline(
        order=np.arange(n, dtype=np.int64),
        keys=np.asarray(keys, dtype=np.uint64),
        lengths=lengths,
        start_s=np.arange(n, dtype=np.float64) if start_s is None else np.asarray(start_s, float),
        tokens_in=lengths * block_size,
        tokens_out=zeros,
        block_size=np.full(n, block_size, dtype=np.int64),
        role=np.zeros(n, dtype=np.int8),
        session=zeros,
        session_ids=["0"],
    )


TINY = KVGeometry("tiny", layers=1, kv_heads=1, head_dim=8, dtype_bytes=2)  # 32 bytes per token


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    calls=st.integers(1, 20),
    key_range=st.integers(1, 30),
    caps=st.lists(st.integers(0, 12), min_size=1, max_size=4),
)
def test_tier_hits_equal_the_direct_simulation_on_arbitrary_accesses(seed, calls, key_range, caps):
    """Any keys, repeats within a call included; zero-sized tiers included."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 8, calls)
    keys = rng.integers(0, key_range, int(lengths.sum())).astype(np.uint64)
    prof = timeline_profile(_timeline(keys, lengths))
    ref = simulate_tiers(keys, lengths, caps)
    got = tier_hits(prof, caps)
    assert (got == ref).all()
    # the report's rows are the same sums
    spec = ",".join(f"t{k}={c}blocks" for k, c in enumerate(caps) if c > 0)
    if spec and all(c > 0 for c in caps):
        rep = timeline_tier_report(_timeline(keys, lengths), TINY, spec)
        assert [r.blocks for r in rep.tiers] == ref.sum(axis=0).tolist()
        assert rep.total.blocks + rep.miss.blocks == rep.blocks_total == lengths.sum()


@pytest.mark.parametrize(
    "arrival", [Arrival(), Arrival("poisson", rate_per_s=0.05, seed=3)], ids=lambda a: a.mode
)
def test_tier_report_equals_the_direct_simulation_on_a_decoded_dataset(arrival):
    ds = decoded(synthetic("kv-cache-tester", traces=4, seed=11))
    prof = reuse_profile(ds, arrival)
    tl = timeline(ds, arrival)
    assert (tl.order == prof.order).all()
    d = prof.distinct_blocks
    g = KV_PRESETS["llama-3.1-8b"]
    per_block = g.bytes_per_block(64)
    start_s = call_start_times(ds, arrival)[prof.order]
    assert (start_s == tl.start_s).all()
    for caps in ([d // 20, d // 10, d // 5], [1, d // 8], [d // 3], [d // 50, 0, d // 50, d]):
        ref = simulate_tiers(tl.keys, tl.lengths, caps)
        spec = ",".join(f"tier{k}={c * per_block}B" for k, c in enumerate(caps) if c > 0)
        live = [c for c in caps if c > 0]
        rep = tier_report(prof, start_s, g, spec, 64)
        assert [r.capacity_blocks for r in rep.tiers] == live
        assert [r.blocks for r in rep.tiers] == ref.sum(axis=0)[np.array(caps) > 0].tolist()
        assert rep.total.blocks == int(ref.sum()) == int(prof.call_hits(sum(caps)).sum())
        assert rep.miss.blocks == prof.blocks - rep.total.blocks
        assert rep.blocks_total == prof.blocks and rep.calls == ds.n_calls
        for r in rep.tiers:
            assert r.bytes == r.blocks * per_block and r.tokens == r.blocks * 64
            assert r.rate == r.blocks / prof.blocks
        # the same from the timeline's own depth pass
        assert timeline_tier_report(tl, g, spec).model_dump() == rep.model_dump()
    json.dumps(rep.model_dump(mode="json"))
    assert TierReport.model_json_schema()["properties"]["tiers"]["description"]


# ---- bandwidth windows ------------------------------------------------------------------------


def test_bandwidth_windows_on_a_hand_made_case():
    """Block size 4, 32 bytes per token: X = 128 bytes per block; gpu holds 1 block, host 2.

        A t=0.2 [1 2]      no hits                    stack after (most recent first): 2 1
        B t=0.7 [1 2 3]    key 1 depth 1: host, key 2 depth 0: gpu; key 3 new      3 2 1
        C t=3.5 [1 2 3 4]  depths 2, 1, 0: host, host, gpu; key 4 new

    1 s windows 0..3: gpu [X, 0, 0, X], host [X, 0, 0, 2X], all tiers [2X, 0, 0, 3X],
    misses (A's 2 blocks and B's key 3; C's key 4) [3X, 0, 0, X]."""
    x = 128
    tl = _timeline([1, 2, 1, 2, 3, 1, 2, 3, 4], [2, 3, 4], start_s=[0.2, 0.7, 3.5])
    rep = timeline_tier_report(tl, TINY, "gpu=1blocks,host=256B")
    gpu, host = rep.tiers
    assert rep.windows == 4 and rep.bytes_per_block == x and rep.blocks_total == 9
    assert (gpu.capacity_blocks, host.capacity_blocks) == (1, 2)
    assert (gpu.depth_from, gpu.depth_to, host.depth_from, host.depth_to) == (0, 1, 1, 3)
    assert (gpu.blocks, host.blocks, rep.total.blocks, rep.miss.blocks) == (2, 3, 5, 4)
    assert gpu.tokens == 8 and host.bytes == 3 * x and gpu.rate == 2 / 9
    # numpy linear percentiles of [X 0 0 X]: sorted 0 0 X X
    assert (gpu.bytes_per_s_p50, gpu.bytes_per_s_p99, gpu.bytes_per_s_max) == (x / 2, x, x)
    assert host.bytes_per_s_p50 == pytest.approx(np.percentile([x, 0, 0, 2 * x], 50))
    assert host.bytes_per_s_p99 == pytest.approx(1.97 * x)
    assert host.bytes_per_s_max == 2 * x
    assert (rep.total.bytes_per_s_p50, rep.total.bytes_per_s_max) == (x, 3 * x)
    assert rep.miss.bytes_per_s_max == 3 * x and rep.miss.tokens == 16
    # 2 s windows: [0, 2) holds A and B, [2, 4) holds C; bytes per second halve
    wide = timeline_tier_report(tl, TINY, "gpu=1blocks,host=2blocks", window_s=2.0)
    assert wide.windows == 2
    assert wide.tiers[1].bytes_per_s_max == 2 * x / 2 and wide.tiers[1].bytes_per_s_p50 == 0.75 * x
    # one call: one window
    one = timeline_tier_report(_timeline([1], [1], start_s=[5.0]), TINY, "gpu=1blocks")
    assert one.windows == 1 and one.tiers[0].bytes_per_s_max == 0.0
    with pytest.raises(ValueError):
        timeline_tier_report(tl, TINY, "gpu=1blocks", window_s=0.0)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(1, 1000), max_size=20),
    zeros=st.integers(0, 20),
    q=st.sampled_from([0, 1, 50, 90, 99, 100]),
)
def test_percentile_with_implicit_zeros_is_numpys(values, zeros, q):
    if not values and not zeros:
        return
    full = np.array(values + [0] * zeros, dtype=np.float64)
    got = _percentile_with_zeros(np.array(values, dtype=np.float64), full.size, q)
    assert got == pytest.approx(float(np.percentile(full, q)))
