"""The options of one live replay, defined once: `LiveOptions`.

`LiveReplay` and `run_live_replay` (weka_assets.replay.live) take one; the `replay-live` command
builds it from its options (same names, same defaults: a test checks them), and the Dagster
`LiveServer` resource holds the same fields, their defaults and descriptions taken from here,
and builds it with `LiveServer.options()`. What a result records of them is `LiveSettings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from weka_assets.decoding.dataset import DecodedDataset
    from weka_assets.replay.schedule import Arrival

DropPolicy = Literal["calls", "traces"]


class LiveOptions(BaseModel):
    """How to replay a decoded dataset against one OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="Server base URL, e.g. http://127.0.0.1:8000")
    model: str = Field(description="The served model name")
    concurrency: int = Field(default=4, ge=1, description="Requests in flight")
    time_scale: float = Field(
        default=1.0, gt=0, description="Multiply recorded times by this (0.1: ten times faster)"
    )
    arrival: str = Field(
        default="",
        description="together | staggered | poisson | recorded; empty: recorded for a "
        "dataset on a corpus-wide clock (Mooncake, Bailian), together otherwise",
    )
    interval_s: float = Field(default=60.0, description="staggered: seconds between traces")
    rate_per_s: float = Field(default=0.05, description="poisson: traces started per second")
    arrival_seed: int = Field(default=0, ge=0, description="poisson: the gaps' random seed")
    max_context: int | None = Field(
        default=None,
        ge=1,
        description="Drop calls (or traces) whose tokens_in + max_tokens exceed this (default: "
        "the model's max_model_len from the server's /v1/models; none when it states none)",
    )
    drop: DropPolicy = Field(
        default="calls", description="Over max_context: drop the call alone (calls) or its trace"
    )
    max_tokens_cap: int = Field(
        default=16, ge=1, description="max_tokens = min(recorded output tokens, this)"
    )
    block_size: int = Field(
        default=32, ge=1, description="The server's KV-cache block size (for the prediction)"
    )
    kv_blocks: int | None = Field(
        default=None,
        ge=0,
        description="The server's KV cache in blocks, vLLM's null block included, for the "
        "prediction with vLLM's own eviction (default: num_gpu_blocks from the server's "
        "/metrics; 0: predict with an unbounded cache)",
    )
    timeout_s: float = Field(default=120.0, gt=0, description="Seconds per request")
    retries: int = Field(default=2, ge=0, description="Retries of a 5xx or a lost connection")
    retry_backoff_s: float = Field(
        default=0.5, ge=0, description="Seconds before the first retry (doubled each time)"
    )
    reset_cache: bool = Field(default=True, description="POST /reset_prefix_cache before the run")
    subagent_status_from_files: bool = Field(
        default=True,
        description="Read each subagent entry's status from its trace file when still readable",
    )

    def arrival_for(self, ds: DecodedDataset) -> Arrival:
        """The arrival on the shared timeline (`schedule.arrival_for`); ValueError when an
        option is out of range."""
        from weka_assets.replay.schedule import arrival_for

        return arrival_for(
            ds,
            self.arrival,
            interval_s=self.interval_s,
            rate_per_s=self.rate_per_s,
            seed=self.arrival_seed,
        )
