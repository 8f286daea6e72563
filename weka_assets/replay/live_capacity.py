"""What a live run would have hit with a smaller or larger KV cache: its calls as they were sent,
with the durations and completion lengths the server measured, through vLLM's block pool
(`block_pool`, the compiled `vllm_curve_hits`) of each size, keyed by the tokens sent at the
server's block size.

At the server's own size this is the live replay's bounded prediction, so the same run checks
the pool model call by call (test_live_bounded); the other sizes answer "what would this
workload have reused with N blocks" with the timings of a real run instead of a service model.
"""

import numpy as np
from pydantic import BaseModel, Field

from weka_assets.decoding.dataset import DecodedDataset
from weka_assets.replay.block_pool import vllm_curve_hits
from weka_assets.replay.live import LiveResult, PrefixPredictor

DEFINITION = (
    "vllm policy over the live run's answered calls in send order, each started when it was "
    "sent and ended when its answer arrived, with the completion tokens the server reported; "
    "hit rate = cached prompt tokens / prompt tokens of those calls (aggregate, tokens); "
    "kv_blocks counts vLLM's null block, as --num-gpu-blocks-override does"
)


class LiveCapacityPoint(BaseModel):
    kv_blocks: int | None = Field(description="the pool, null block included; None: never full")
    cached_tokens: int
    hit_rate: float | None


class LiveCapacityCurve(BaseModel):
    definition: str = DEFINITION
    block_size: int
    calls: int = Field(description="answered calls replayed")
    prompt_tokens: int
    server_kv_blocks: int | None = Field(description="the size the run itself had")
    points: list[LiveCapacityPoint]


def default_sizes(server_kv_blocks: int | None) -> list[int | None]:
    """A quarter, half, the same, twice and four times the server's pool, and unbounded."""
    if not server_kv_blocks:
        return [None]
    k = int(server_kv_blocks)
    return sorted({max(2, k // 4), max(2, k // 2), k, 2 * k, 4 * k}) + [None]


def live_call_hits(
    ds: DecodedDataset,
    result: LiveResult,
    kv_blocks: list[int | None],
    sent_keys: dict[int, list[bytes]] | None = None,
) -> tuple[list[int], dict[int | None, np.ndarray]]:
    """(the answered calls' dataset indices in send order, {kv_blocks: hit blocks per call}).
    `sent_keys`: the block keys the run computed for each call it sent (`LiveReplay`), else
    computed again from the expanded prompts."""
    b = result.settings.block_size
    calls = sorted(
        (
            c
            for c in result.calls
            if c.status == "ok" and c.sent_s is not None and c.finished_s is not None
        ),
        key=lambda c: c.send_order,
    )
    keyer = PrefixPredictor(b)
    ids: dict[bytes, int] = {}
    keys: list[int] = []
    lengths = np.zeros(len(calls), dtype=np.int64)
    for k, c in enumerate(calls):
        if sent_keys is not None and c.index in sent_keys:
            call_keys = sent_keys[c.index]
        else:
            call_keys = keyer.keys(ds.expand_call(c.index))
        keys.extend(ids.setdefault(key, len(ids)) for key in call_keys)
        lengths[k] = len(call_keys)
    sent = np.array([c.sent_s for c in calls], dtype=np.float64)
    ended = np.array([c.finished_s for c in calls], dtype=np.float64)
    tokens_in = np.array([c.prompt_tokens or c.tokens_in for c in calls], dtype=np.int64)
    tokens_out = np.array([c.completion_tokens or 1 for c in calls], dtype=np.int64)
    for size in kv_blocks:
        if size is not None and size < 1:
            raise ValueError(f"kv_blocks must be >= 1 (the null block included), got {size}")
    hits = vllm_curve_hits(
        np.asarray(keys, dtype=np.uint64),
        lengths,
        sent,
        tokens_in,
        tokens_out,
        b,
        [None if size is None else size - 1 for size in kv_blocks],
        ends=np.maximum(ended, sent),
    )
    return [c.index for c in calls], {
        size: hits[None if size is None else size - 1] for size in kv_blocks
    }


def live_capacity_curve(
    ds: DecodedDataset,
    result: LiveResult,
    kv_blocks: list[int | None] | None = None,
    sent_keys: dict[int, list[bytes]] | None = None,
) -> LiveCapacityCurve:
    """The run's cached tokens at each pool size (`default_sizes` of the server's by default)."""
    server = result.settings.kv_blocks
    sizes = default_sizes(server) if kv_blocks is None else list(kv_blocks)
    order, hits = live_call_hits(ds, result, sizes, sent_keys)
    by_index = {c.index: c for c in result.calls}
    prompt = sum(int(by_index[i].prompt_tokens or by_index[i].tokens_in) for i in order)
    b = result.settings.block_size
    points = []
    for size in sizes:
        cached = int(hits[size].sum()) * b
        points.append(
            LiveCapacityPoint(
                kv_blocks=size, cached_tokens=cached, hit_rate=cached / prompt if prompt else None
            )
        )
    return LiveCapacityCurve(
        block_size=b, calls=len(order), prompt_tokens=prompt, server_kv_blocks=server, points=points
    )
