"""Tiered KV caches (GPU, host memory, storage...) sized in bytes for a given model: what each
tier serves, from one LRU depth pass.

Model geometry (`ModelGeometry`, `geometry_from_config`, `resolve_geometry`): the KV bytes one
token takes, for
- dense / GQA attention: `2 x layers x kv_heads x head_dim x dtype_bytes` (keys and values);
- MLA (DeepSeek-V2/V3, config fields `kv_lora_rank`, `qk_rope_head_dim`): one latent per token
  and layer, `layers x (kv_lora_rank + qk_rope_head_dim) x dtype_bytes` (what vLLM's MLA
  backends store);
- sliding-window layers (config `sliding_window`, per-layer `layer_types` entries
  "sliding_attention" / "full_attention", or Qwen2's `use_sliding_window` / `max_window_layers`):
  such a layer holds at most the window's tokens of a sequence. That makes the bytes of a block
  depend on where it lies in its sequence, which a cache of uniform blocks cannot express.
  The simplification chosen here: `bytes_per_token` counts every layer at full size, an upper
  bound on the bytes a block takes (and so a lower bound on the blocks a tier of a given size
  holds). `full_bytes_per_token` (the full-attention layers only) is the lower bound, and
  `bytes_for_sequence(n)` the exact size of one sequence of n tokens (full layers x n plus
  windowed layers x min(n, window)); the report states the geometry it used.

Tiers (`parse_tiers`, `tier_report`): exclusive tiers with LRU demotion (a block evicted from
tier k moves to tier k + 1, a hit in tier k > 1 is loaded back into tier 1, which demotes as
needed) keep LRU's inclusion property: tier 1 holds the C1 most recently used blocks, tiers
1..k the C1 + ... + Ck most recent. So with the depths of `capacity.reuse_profile` (a block's
depth at its call's start: distinct blocks touched since its last touch):
- a call's hits are its leading positions whose running maximum of depth is < C1 + ... + Cn
  (the whole hierarchy is one LRU cache of the summed capacity);
- each hit position is served by the tier k whose depth range [C1 + ... + C(k-1),
  C1 + ... + Ck) holds its own depth at the call's start: where the block sits when the call
  arrives (a real server looks every hit up when the request arrives, then loads them).

Read bandwidth: each call's hits are charged at its start time (`start_s`) and bucketed into
windows of `window_s` seconds from the first call's start; p50 / p99 / max run over every
window up to the last call's start, empty windows counted as 0 (numpy's linear percentile).
Calls are instantaneous, as in `capacity`: no transfer time, no queueing, no pinned blocks.
"""

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from weka_assets.replay.accesses import Timeline
from weka_assets.replay.capacity import (
    KV_PRESETS,
    KVGeometry,
    ReuseProfile,
    parse_size,
    segmented_cummax,
    start_depths,
)

# ---- model geometry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelGeometry(KVGeometry):
    """KV-cache size of one token, for dense/GQA, MLA and sliding-window models.

    A `KVGeometry` (usable wherever one is: `parse_capacity`, `capacity_curve`). For MLA,
    `kv_heads` is 1 and `head_dim` the latent width `kv_lora_rank + qk_rope_head_dim` (one
    latent, no separate keys and values). `sliding_layers` of the `layers` hold at most
    `sliding_window` tokens of a sequence; `bytes_per_token` still counts them at full size
    (an upper bound, see the module doc).
    """

    attention: str = "gqa"  # "gqa" (dense, MHA included) or "mla"
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    sliding_window: int | None = None  # tokens a windowed layer keeps per sequence
    sliding_layers: int = 0  # how many of `layers` are windowed
    source: str | None = None  # the config it was read from (a path, or repo@revision)

    @property
    def layer_bytes_per_token(self) -> int:
        """KV bytes of one token in one layer."""
        if self.attention == "mla":
            return (int(self.kv_lora_rank) + int(self.qk_rope_head_dim)) * self.dtype_bytes
        return 2 * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def bytes_per_token(self) -> int:
        """Every layer at full size: exact without windowed layers, an upper bound with them."""
        return self.layers * self.layer_bytes_per_token

    @property
    def full_bytes_per_token(self) -> int:
        """The full-attention layers only: a lower bound with windowed layers."""
        return (self.layers - self.sliding_layers) * self.layer_bytes_per_token

    def bytes_for_sequence(self, tokens: int) -> int:
        """The KV bytes of one sequence of `tokens` tokens, windowed layers capped at the window."""
        tokens = int(tokens)
        windowed = min(tokens, self.sliding_window) if self.sliding_window else tokens
        return (
            self.full_bytes_per_token * tokens
            + self.sliding_layers * self.layer_bytes_per_token * windowed
        )

    def describe(self) -> dict:
        """The fields a report records (JSON-ready)."""
        return {
            "name": self.name,
            "attention": self.attention,
            "layers": self.layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "dtype_bytes": self.dtype_bytes,
            "kv_lora_rank": self.kv_lora_rank,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "sliding_window": self.sliding_window,
            "sliding_layers": self.sliding_layers,
            "bytes_per_token": self.bytes_per_token,
            "full_bytes_per_token": self.full_bytes_per_token,
            "source": self.source,
        }


def as_model_geometry(g: KVGeometry) -> ModelGeometry:
    """A dense `KVGeometry` (a preset) as a `ModelGeometry` with the same bytes per token."""
    if isinstance(g, ModelGeometry):
        return g
    return ModelGeometry(g.name, g.layers, g.kv_heads, g.head_dim, g.dtype_bytes)


_DTYPE_BYTES = {
    "float64": 8,
    "double": 8,
    "float32": 4,
    "float": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "fp16": 2,
    "bf16": 2,
    "fp8": 1,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_OFFLINE = {"1", "on", "yes", "true"}


def _offline() -> bool:
    """HF_HUB_OFFLINE as the environment says now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - no hub library: nothing says offline
        return False


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _load_config(source: str, revision: str | None):
    """(transformers config, raw config dict, label) of a local folder / config.json / hub id."""
    from transformers import AutoConfig, PretrainedConfig

    path = Path(source).expanduser()
    local = path.exists()
    if local:
        file = path / "config.json" if path.is_dir() else path
        label = str(file)
        if not file.is_file():
            raise ValueError(f"{label}: no config.json there")
        try:
            raw = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{label}: not a readable JSON config ({_one_line(e)})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{label}: not a JSON object")
        target, kwargs = str(file), {}
    else:
        if not _HUB_ID.match(source):
            raise ValueError(f"{source}: no such file or folder, and not a Hugging Face repo id")
        if not revision:
            raise ValueError(
                f"{source}: not a local path; a Hugging Face repo id needs a pinned revision "
                "(a commit hash)"
            )
        label = f"{source}@{revision}"
        # offline: straight to the local cache (no network retries, no stall)
        kwargs = {"revision": revision, "local_files_only": _offline()}
        target = source
        try:
            raw, _ = PretrainedConfig.get_config_dict(source, **kwargs)
        except Exception as e:  # noqa: BLE001 - hub, cache and network errors alike
            if _offline():
                raise ValueError(
                    f"{label}: its config is not in the local Hugging Face cache and "
                    "HF_HUB_OFFLINE is set"
                ) from None
            raise ValueError(f"{label}: cannot load its config: {_one_line(e)}") from None
    try:
        cfg = AutoConfig.from_pretrained(target, **kwargs)
    except (ValueError, KeyError) as e:
        if not any(w in str(e) for w in ("model_type", "model type", "Unrecognized", "recognize")):
            raise ValueError(f"{label}: {_one_line(e)}") from None
        # no model_type, or one this transformers does not know: the fields as they are, with
        # no model class's defaults or derived fields
        cfg = PretrainedConfig.from_dict(dict(raw))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{label}: cannot load its config: {_one_line(e)}") from None
    return cfg, raw, label


def _text_part(cfg, raw: dict) -> tuple[object, dict]:
    """The language model's config and raw dict (a multimodal config nests it, `text_config`)."""
    get = getattr(cfg, "get_text_config", None)
    text = get() if callable(get) else cfg
    if text is cfg:
        return cfg, raw
    for key, value in raw.items():
        if isinstance(value, dict) and getattr(cfg, key, None) is text:
            return text, value
    return text, raw.get("text_config", {}) if isinstance(raw.get("text_config"), dict) else {}


def _given(raw: dict, cfg, field: str) -> bool:
    """The field (or an alias the config class maps to it) is set in the file itself: class
    defaults (a different model size) do not count."""
    alias = (getattr(cfg, "attribute_map", None) or {}).get(field)  # e.g. GPT-2's n_layer
    return raw.get(field) is not None or (alias is not None and raw.get(alias) is not None)


def _class_default(cfg, field: str) -> int | None:
    """The model class's own default for a field (Gemma's head_dim 256), if it has one."""
    value = getattr(type(cfg), field, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dtype_bytes(cfg, raw: dict, outer: dict, label: str) -> int:
    """Bytes per element of the model's dtype: the text config's, else the outer config's."""
    value = (
        raw.get("dtype")
        or raw.get("torch_dtype")
        or outer.get("dtype")
        or outer.get("torch_dtype")
        or getattr(cfg, "dtype", None)
    )
    if value is None:
        return 2  # bf16
    name = str(value).removeprefix("torch.").lower()
    if name == "auto":
        return 2
    if name not in _DTYPE_BYTES:
        raise ValueError(f"{label}: unknown dtype {value!r}")
    return _DTYPE_BYTES[name]


def _layer_types(cfg, raw: dict, layers: int, window: int | None, label: str) -> int:
    """How many layers are windowed."""
    if window is None:
        return 0
    types = getattr(cfg, "layer_types", None) or raw.get("layer_types")
    if types is None and raw.get("max_window_layers") is not None:  # Qwen2 without its class
        types = [
            "sliding_attention" if i >= int(raw["max_window_layers"]) else "full_attention"
            for i in range(layers)
        ]
    if types is None:  # Mistral v0.1: every layer windowed
        return layers
    types = list(types)
    if len(types) != layers:
        raise ValueError(f"{label}: layer_types has {len(types)} entries for {layers} layers")
    unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
    if unknown:
        raise ValueError(f"{label}: unsupported layer type {unknown[0]!r}")
    return sum(t == "sliding_attention" for t in types)


def geometry_from_config(
    source: str | os.PathLike,
    revision: str | None = None,
    *,
    name: str | None = None,
    kv_dtype_bytes: int | None = None,
) -> ModelGeometry:
    """The KV geometry of a model from its config: `source` is a local folder holding
    config.json, a path to a config.json, or a Hugging Face repo id with a pinned `revision`
    (read with `transformers.AutoConfig`; under HF_HUB_OFFLINE only the local cache is tried).

    Fields: `num_hidden_layers`; MLA when `kv_lora_rank` is set (`kv_lora_rank`,
    `qk_rope_head_dim`); otherwise `num_key_value_heads` (missing: `num_attention_heads`, MHA)
    and `head_dim` (else the model class's own default, else `hidden_size //
    num_attention_heads`); `sliding_window` with `layer_types` / Qwen2's `use_sliding_window`
    and `max_window_layers`; `dtype` / `torch_dtype` for the bytes (bf16 when absent), or
    `kv_dtype_bytes` (e.g. 1 for an fp8 KV cache). A nested text config (`text_config`) is
    used when there is one. The size fields must be in the file itself: a missing one is a
    `ValueError` naming the file and the field, never a model class's default.
    """
    source = str(source)
    cfg, outer, label = _load_config(source, revision)
    cfg, raw = _text_part(cfg, outer)

    def need(field: str) -> int:
        if not _given(raw, cfg, field):
            raise ValueError(f"{label}: missing {field}")
        value = getattr(cfg, field, None)
        if value is None:
            value = raw.get(field, raw.get((getattr(cfg, "attribute_map", None) or {}).get(field)))
        return int(value)

    layers = need("num_hidden_layers")
    dtype_bytes = int(kv_dtype_bytes) if kv_dtype_bytes else _dtype_bytes(cfg, raw, outer, label)
    model = (
        name
        or raw.get("_name_or_path")
        or (Path(label).parent.name if Path(label).name == "config.json" else source)
    )
    if layers <= 0:
        raise ValueError(f"{label}: num_hidden_layers must be > 0, got {layers}")
    if getattr(cfg, "kv_lora_rank", None) is not None or raw.get("kv_lora_rank") is not None:
        rank, rope = need("kv_lora_rank"), need("qk_rope_head_dim")
        return ModelGeometry(
            str(model),
            layers=layers,
            kv_heads=1,
            head_dim=rank + rope,
            dtype_bytes=dtype_bytes,
            attention="mla",
            kv_lora_rank=rank,
            qk_rope_head_dim=rope,
            source=label,
        )
    if _given(raw, cfg, "num_key_value_heads"):
        kv_heads = need("num_key_value_heads")
    elif _given(raw, cfg, "num_attention_heads"):
        kv_heads = need("num_attention_heads")  # no GQA field: multi-head attention
    else:
        raise ValueError(f"{label}: missing num_key_value_heads (or num_attention_heads)")
    if _given(raw, cfg, "head_dim"):
        head_dim = need("head_dim")
    elif _class_default(cfg, "head_dim") is not None:
        head_dim = int(_class_default(cfg, "head_dim"))  # e.g. Gemma's 256, not hidden / heads
    elif _given(raw, cfg, "hidden_size") and _given(raw, cfg, "num_attention_heads"):
        head_dim = need("hidden_size") // need("num_attention_heads")
    else:
        raise ValueError(f"{label}: missing head_dim (or hidden_size and num_attention_heads)")
    window = None
    if _given(raw, cfg, "sliding_window"):
        # the class may switch it off (Qwen2 without use_sliding_window)
        value = getattr(cfg, "sliding_window", raw.get("sliding_window"))
        if raw.get("use_sliding_window") is False:
            value = None
        window = int(value) if value is not None else None
    sliding = _layer_types(cfg, raw, layers, window, label)
    return ModelGeometry(
        str(model),
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype_bytes=dtype_bytes,
        sliding_window=window if sliding else None,
        sliding_layers=sliding,
        source=label,
    )


def resolve_geometry(name_or_path: str | os.PathLike, revision: str | None = None) -> ModelGeometry:
    """A preset of `capacity.KV_PRESETS` by name, else `geometry_from_config(name_or_path,
    revision)`."""
    key = str(name_or_path)
    if key in KV_PRESETS and not Path(key).exists():
        return as_model_geometry(KV_PRESETS[key])
    return geometry_from_config(key, revision)


# ---- tier specs -------------------------------------------------------------------------------


def parse_tiers(
    text: str, geometry: KVGeometry | None = None, block_size: int | None = None
) -> list[tuple[str, int]]:
    """`"gpu=80GiB,host=1TiB,storage=50TiB"` -> `[("gpu", bytes), ("host", bytes), ...]`, fastest
    tier first. Sizes as `capacity.parse_capacity`: decimal KB/MB/GB/TB, binary KiB/MiB/GiB/TiB,
    B, or a whole number of blocks (`gpu=5000blocks`, or a bare number), which needs `geometry`
    and `block_size` to become bytes. Anything else is a one-line `ValueError`: an empty or
    duplicate name, a missing '=', an unknown unit, a zero or negative size."""
    if not str(text).strip():
        raise ValueError("tiers: empty spec; expected name=size[,name=size...], e.g. gpu=80GiB")
    out: list[tuple[str, int]] = []
    for item in str(text).split(","):
        if "=" not in item:
            raise ValueError(f"tier {item.strip()!r}: expected name=size, e.g. gpu=80GiB")
        name, size = (s.strip() for s in item.split("=", 1))
        if not name:
            raise ValueError(f"tier {item.strip()!r}: empty name")
        if any(name == n for n, _ in out):
            raise ValueError(f"tier {name!r}: duplicate name")
        parsed = parse_size(size, f"tier {name!r}")
        if parsed is None:
            raise ValueError(f"tier {name!r}: size {size!r} is not a positive size like 80GiB")
        kind, value = parsed
        if kind == "blocks":
            if value == 0:
                raise ValueError(f"tier {name!r}: size must be > 0, got {size!r}")
            if geometry is None or not block_size or block_size <= 0:
                raise ValueError(f"tier {name!r}: a size in blocks needs a geometry and block size")
            n_bytes = int(value) * geometry.bytes_per_block(block_size)
        else:
            n_bytes = math.floor(value)
        if n_bytes <= 0:
            raise ValueError(f"tier {name!r}: size must be > 0, got {size!r}")
        out.append((name, int(n_bytes)))
    return out


def tier_blocks(
    tiers: Sequence[tuple[str, int]], geometry: KVGeometry, block_size: int
) -> list[int]:
    """Whole blocks each tier holds (its bytes rounded down to whole blocks)."""
    per_block = geometry.bytes_per_block(block_size)
    return [int(b) // per_block for _, b in tiers]


# ---- tier hits --------------------------------------------------------------------------------


def tier_hits(profile: ReuseProfile, capacities: Sequence[int]) -> np.ndarray:
    """int64 [calls, tiers]: each call's hits served by each tier, calls in timeline order
    (`profile.order`), for tiers of `capacities` blocks, fastest first."""
    caps = np.asarray([int(c) for c in capacities], dtype=np.int64)
    if caps.size == 0:
        raise ValueError("tiers: at least one tier is needed")
    if (caps < 0).any():
        raise ValueError(f"tier capacity must be >= 0 blocks, got {int(caps.min())}")
    bounds = np.cumsum(caps)  # tier k serves depths in [bounds[k-1], bounds[k])
    # `never` (an unseen key) is above every real depth: never a hit, whatever the capacity
    limit = profile.run_max.dtype.type(profile._limit(int(bounds[-1])))
    hit = np.flatnonzero(profile.run_max < limit)
    tier = np.searchsorted(bounds, profile.depth[hit].astype(np.int64), side="right")
    lengths = np.asarray(profile.lengths, dtype=np.int64)[profile.order]
    call = np.searchsorted(np.cumsum(lengths), hit, side="right")
    n_t = caps.size
    flat = np.bincount(call * n_t + tier, minlength=lengths.size * n_t)
    return flat.reshape(lengths.size, n_t).astype(np.int64)


def timeline_profile(tl: Timeline) -> ReuseProfile:
    """The `ReuseProfile` of a timeline (a whole one or a `Timeline.subset`). Its `order` is the
    identity: its "ds order" is the timeline's own positions."""
    lengths = np.asarray(tl.lengths, dtype=np.int64)
    depth, distinct = start_depths(np.asarray(tl.keys), lengths)
    never = int(depth.size) + 1
    depth[depth < 0] = never
    return ReuseProfile(
        order=np.arange(lengths.size, dtype=np.int64),
        lengths=lengths,
        depth=depth,
        run_max=segmented_cummax(depth, lengths, never),
        role=np.repeat(np.asarray(tl.role, dtype=np.int8), lengths),
        distinct_blocks=distinct,
        never=never,
    )


# ---- the report -------------------------------------------------------------------------------

DEFINITION = (
    "Aggregate over full blocks (not tokens, not per-request means): a tier's rate is the full "
    "blocks it serves / the full blocks of all calls. A call's hits are the leading run of its "
    "full blocks present in any tier at its start (LRU over the summed capacity, exclusive "
    "tiers with LRU demotion); each hit is served by the tier it sits in at the call's start. "
    "bytes = blocks x bytes per block (every layer at full size); tokens = blocks x block size "
    "(partial last blocks never count). Bandwidth: each call's bytes at its start time, in "
    "windows of window_s seconds from the first call's start to the last's, empty windows "
    "counted; bytes per second, numpy linear percentiles."
)


class TierRow(BaseModel):
    name: str = Field(description="the tier; 'total': every tier; 'miss': blocks in no tier")
    capacity_bytes: int | None = Field(description="the tier's size as given (None: miss)")
    capacity_blocks: int | None = Field(description="whole blocks the tier holds (None: miss)")
    depth_from: int | None = Field(description="first LRU depth (blocks) this tier serves")
    depth_to: int | None = Field(description="end (exclusive) of the depths it serves")
    blocks: int = Field(description="full blocks served (miss: full blocks prefilled)")
    rate: float | None = Field(description="blocks / full blocks of all calls (aggregate)")
    bytes: int = Field(description="blocks x bytes per block: KV bytes read (miss: computed)")
    tokens: int = Field(description="blocks x block size: prefill tokens saved (miss: computed)")
    bytes_per_s_p50: float | None = Field(description="median over windows of bytes / window_s")
    bytes_per_s_p99: float | None = Field(description="99th percentile over windows")
    bytes_per_s_max: float | None = Field(description="busiest window")


class TierReport(BaseModel):
    definition: str = DEFINITION
    geometry: dict = Field(description="the model geometry used (bytes per token and fields)")
    block_size: int = Field(description="tokens per block")
    bytes_per_block: int
    window_s: float = Field(description="bandwidth window, seconds")
    windows: int = Field(description="windows from the first call's start to the last's")
    calls: int
    blocks_total: int = Field(description="full blocks of all calls: every rate's denominator")
    tiers: list[TierRow] = Field(description="fastest first")
    total: TierRow = Field(description="all tiers together (hits of the summed capacity)")
    miss: TierRow = Field(description="full blocks in no tier: prefilled")


def _percentile_with_zeros(nonzero: np.ndarray, windows: int, q: float) -> float:
    """numpy's linear percentile of `windows` values: `nonzero` plus zeros for the rest."""
    v = np.sort(np.asarray(nonzero, dtype=np.float64))
    zeros = windows - v.size
    rank = q / 100.0 * (windows - 1)
    lo, hi = math.floor(rank), math.ceil(rank)

    def at(i: int) -> float:
        return 0.0 if i < zeros else float(v[i - zeros])

    return at(lo) + (at(hi) - at(lo)) * (rank - lo)


def _window_stats(
    blocks_per_call: np.ndarray, window_of_call: np.ndarray, windows: int, scale: float
) -> tuple[float | None, float | None, float | None]:
    """p50, p99, max over every window of (blocks in the window) x scale."""
    if windows == 0:
        return None, None, None
    take = blocks_per_call > 0
    w, inverse = np.unique(window_of_call[take], return_inverse=True)
    per_window = np.bincount(inverse, weights=blocks_per_call[take], minlength=w.size) * scale
    return (
        _percentile_with_zeros(per_window, windows, 50),
        _percentile_with_zeros(per_window, windows, 99),
        float(per_window.max()) if per_window.size else 0.0,
    )


def tier_report(
    profile: ReuseProfile,
    start_s: np.ndarray,
    geometry: KVGeometry,
    tiers: str | Sequence[tuple[str, int]],
    block_size: int,
    window_s: float = 1.0,
) -> TierReport:
    """What each tier serves, from one depth pass (`capacity.reuse_profile` or
    `timeline_profile`).

    `start_s`: each call's start in timeline order (`Timeline.start_s`, or
    `schedule.call_start_times(ds, ...)[profile.order]`). `tiers`: a spec for `parse_tiers` or
    its result, (name, bytes) fastest first. `block_size`: tokens per block (one for the whole
    profile). Definitions: `DEFINITION` and the fields of `TierRow`.
    """
    if block_size is None or int(block_size) <= 0:
        raise ValueError(f"block_size must be > 0, got {block_size}")
    block_size = int(block_size)
    if not np.isfinite(window_s) or window_s <= 0:
        raise ValueError(f"window_s must be finite and > 0, got {window_s}")
    specs = parse_tiers(tiers, geometry, block_size) if isinstance(tiers, str) else list(tiers)
    caps = tier_blocks(specs, geometry, block_size)
    lengths = np.asarray(profile.lengths, dtype=np.int64)[profile.order]
    start_s = np.asarray(start_s, dtype=np.float64)
    if start_s.shape != lengths.shape:
        raise ValueError(f"start_s has {start_s.size} calls, the profile {lengths.size}")
    per_call = tier_hits(profile, caps)  # [calls, tiers]
    misses = lengths - per_call.sum(axis=1)
    per_block = geometry.bytes_per_block(block_size)
    blocks_total = int(lengths.sum())
    if start_s.size:
        t0 = float(start_s.min())
        window_of_call = np.floor((start_s - t0) / window_s).astype(np.int64)
        windows = int(window_of_call.max()) + 1
    else:
        window_of_call, windows = np.zeros(0, dtype=np.int64), 0

    def row(name, cap_bytes, cap_blocks, d_from, d_to, blocks_per_call) -> TierRow:
        blocks = int(blocks_per_call.sum())
        p50, p99, top = _window_stats(
            blocks_per_call, window_of_call, windows, per_block / window_s
        )
        return TierRow(
            name=name,
            capacity_bytes=cap_bytes,
            capacity_blocks=cap_blocks,
            depth_from=d_from,
            depth_to=d_to,
            blocks=blocks,
            rate=blocks / blocks_total if blocks_total else None,
            bytes=blocks * per_block,
            tokens=blocks * block_size,
            bytes_per_s_p50=p50,
            bytes_per_s_p99=p99,
            bytes_per_s_max=top,
        )

    bounds = np.concatenate([[0], np.cumsum(caps)]).astype(np.int64)
    rows = [
        row(name, int(b), caps[k], int(bounds[k]), int(bounds[k + 1]), per_call[:, k])
        for k, (name, b) in enumerate(specs)
    ]
    geo = as_model_geometry(geometry).describe()
    return TierReport(
        geometry=geo,
        block_size=block_size,
        bytes_per_block=per_block,
        window_s=float(window_s),
        windows=windows,
        calls=int(lengths.size),
        blocks_total=blocks_total,
        tiers=rows,
        total=row(
            "total",
            int(sum(b for _, b in specs)),
            int(bounds[-1]),
            0,
            int(bounds[-1]),
            per_call.sum(axis=1),
        ),
        miss=row("miss", None, None, None, None, misses),
    )


def timeline_tier_report(
    tl: Timeline,
    geometry: KVGeometry,
    tiers: str | Sequence[tuple[str, int]],
    window_s: float = 1.0,
) -> TierReport:
    """`tier_report` of a timeline (its own depth pass, its own start times); its calls must
    share one block size."""
    sizes = np.unique(np.asarray(tl.block_size))
    if sizes.size > 1:
        raise ValueError(f"timeline mixes block sizes {sizes.tolist()}: one tier report per size")
    block_size = int(sizes[0]) if sizes.size else 1
    return tier_report(timeline_profile(tl), tl.start_s, geometry, tiers, block_size, window_s)
