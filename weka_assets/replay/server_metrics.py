"""What a vLLM server says about its own prefix cache on `/metrics` (Prometheus text):

- `vllm:cache_config_info`: a gauge whose labels carry the cache configuration, among them
  `num_gpu_blocks` (the pool, vLLM's null block included) and `block_size`;
- `vllm:prefix_cache_queries` and `vllm:prefix_cache_hits`: counters in tokens, the prompt
  tokens of every scheduled request and those of them served from the cache.

Parsed with the Prometheus client library's own text parser; a sample family repeated per
engine is summed.
"""

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class ServerCache:
    num_gpu_blocks: int | None  # the pool, null block included
    block_size: int | None
    prefix_cache_queries: float | None  # tokens, since the server started
    prefix_cache_hits: float | None


def _int_label(labels: dict, name: str) -> int | None:
    value = labels.get(name)
    try:
        return int(value) if value not in (None, "", "None") else None
    except ValueError:
        return None


def parse_metrics(text: str) -> ServerCache:
    """The cache size and prefix-cache counters in a `/metrics` page (None where absent)."""
    blocks = size = None
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:cache_config_info":
            for s in family.samples:
                blocks = _int_label(s.labels, "num_gpu_blocks") or blocks
                size = _int_label(s.labels, "block_size") or size
        elif family.name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
            for s in family.samples:
                if s.name.endswith("_total"):
                    counters[family.name] = counters.get(family.name, 0.0) + float(s.value)
    return ServerCache(
        num_gpu_blocks=blocks,
        block_size=size,
        prefix_cache_queries=counters.get("vllm:prefix_cache_queries"),
        prefix_cache_hits=counters.get("vllm:prefix_cache_hits"),
    )
