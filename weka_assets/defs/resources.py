"""Resources: where data lives, which corpora exist, how to decode. Chosen per environment in
`definitions.py`; everything else reads them, never environment variables."""

import functools
import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from weka_assets import env
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.defs.partitions import validate_key
from weka_assets.replay.live_options import LiveOptions
from weka_assets.sources import CorpusEntry, default_registry_path, load_registry
from weka_assets.store import Store, s3_options_from_env
from weka_assets.traces.reader import CorpusFormat


def resolve_base_path(value: str) -> str:
    """Configured base, else $WEKA_ASSETS_STORE, else ./.weka-store (absolute when local)."""
    base = value or env.store_base()
    return base if base.startswith("s3://") else str(Path(base).expanduser().resolve())


@functools.cache
def _open_store(base: str, cache_dir: str, options: str) -> Store:
    return Store(base, cache_dir or None, json.loads(options) or None)


class WekaStore(dg.ConfigurableResource):
    """One base location for everything the assets write, content-addressed below it: a local
    folder or s3://bucket/prefix (then local working copies live in `cache_dir`)."""

    base_path: str = Field(
        default="",
        description="Folder or s3://bucket/prefix; empty: $WEKA_ASSETS_STORE or ./.weka-store",
    )
    cache_dir: str = Field(
        default="",
        description="Local working copies of a remote store (default ~/.cache/weka-assets/store)",
    )
    endpoint_url: str = Field(
        default="", description="S3 endpoint (default: $AWS_ENDPOINT_URL or AWS)"
    )
    region: str = Field(default="", description="S3 region (default: $AWS_DEFAULT_REGION)")
    aws_access_key_id: str = Field(
        default="", description="S3 key id; pass dg.EnvVar, never a literal"
    )
    aws_secret_access_key: str = Field(
        default="", description="S3 secret; pass dg.EnvVar, never a literal"
    )

    def open_store(self) -> Store:
        """The store this resource names (opened once per process and configuration)."""
        base = resolve_base_path(self.base_path)
        opts: dict = {}
        if base.startswith("s3://"):
            opts = s3_options_from_env()
            if self.endpoint_url:
                opts["endpoint_url"] = self.endpoint_url
            if self.region:
                opts["client_kwargs"] = {"region_name": self.region}
            if self.aws_access_key_id:
                opts["key"] = self.aws_access_key_id
            if self.aws_secret_access_key:
                opts["secret"] = self.aws_secret_access_key
        return _open_store(base, self.cache_dir, json.dumps(opts, sort_keys=True))

    def check(self) -> None:
        """Fail now, with one line, when the store cannot be used (an S3 bucket that does not
        exist): before a run starts rather than in its first step."""
        self.open_store().fs  # noqa: B018  (opens the S3 store: its bucket is looked up)

    def dir(self, name: str) -> Path:
        return self.open_store().dir(name)

    def local(self, key: str) -> Path:
        return self.open_store().local(key)

    def relative(self, path: Path | str) -> str:
        return self.open_store().relative(path)

    def url(self, key: str) -> str:
        return self.open_store().url(key)

    def pull(self, key: str) -> Path:
        return self.open_store().pull(key)

    def push(self, key: str) -> str:
        return self.open_store().push(key)

    def publish(self, key: str) -> bool:
        return self.open_store().publish(key)

    def exists(self, key: str) -> bool:
        return self.open_store().exists(key)

    def write_bytes(self, key: str, data: bytes) -> str:
        return self.open_store().write_bytes(key, data)

    def read_bytes(self, key: str) -> bytes:
        return self.open_store().read_bytes(key)

    def manifests(self, prefix: str) -> dict[str, dict]:
        return self.open_store().manifests(prefix)


class CorpusCatalog(dg.ConfigurableResource):
    """The corpora (partition keys), their sources and scope policies: the registry YAML, or an
    explicit `corpora` mapping (tests, ad-hoc runs) that replaces it."""

    registry_path: str = Field(
        default="",
        description="Registry YAML; empty: $WEKA_ASSETS_REGISTRY or the repo's corpora.yaml",
    )
    corpora: dict[str, str] = Field(
        default_factory=dict, description="name -> source; when set, used instead of the registry"
    )
    scope_policy: str = Field(
        default="", description="fail | exclude; overrides the registry's per-corpus policy"
    )
    hf_token: str = Field(
        default="", description="Hugging Face token; pass dg.EnvVar('HF_TOKEN'), never a literal"
    )

    def entries(self) -> dict[str, CorpusEntry]:
        if self.corpora:
            return {n: CorpusEntry(name=n, source=src) for n, src in self.corpora.items()}
        path = self.registry_path or env.get("WEKA_ASSETS_REGISTRY") or str(default_registry_path())
        return {e.name: e for e in load_registry(path).corpora}

    def entry(self, corpus: str) -> CorpusEntry:
        entries = self.entries()
        if corpus not in entries:
            raise dg.Failure(
                f"corpus {corpus!r} is not in the catalog (known: {', '.join(sorted(entries))})"
            )
        return entries[corpus]

    def source(self, corpus: str) -> str:
        return self.entry(corpus).source

    def policy(self, corpus: str) -> str:
        return self.scope_policy or self.entry(corpus).scope_policy

    def corpus_format(self, corpus: str) -> CorpusFormat:
        """The registry's format and block size for the corpus (format None: detected)."""
        return self.entry(corpus).corpus_format()

    def names(self) -> list[str]:
        return [validate_key(n) for n in sorted(self.entries())]

    def s3_options(self) -> dict | None:
        """None: sources read S3 settings from the standard AWS environment variables."""
        return None


class DecodeOptions(dg.ConfigurableResource):
    """Decode settings other than the tokenizer (a partition dimension)."""

    seed: int = 0
    sub_blocks: int = 4
    filler_text: str | None = None

    def settings(self, tokenizer: str, scope_policy: str = "trace") -> DecodeSettings:
        return DecodeSettings(
            tokenizer=tokenizer,
            scope_policy=scope_policy,
            seed=self.seed,
            sub_blocks=self.sub_blocks,
            filler_text=self.filler_text,
        )


class ReplayOptions(dg.ConfigurableResource):
    """How `replay_benchmark` sweeps KV-cache capacity: the shared-server timeline and the
    model geometry that turns blocks into bytes."""

    kv_model: str = Field(
        default="llama-3.1-8b",
        description="the model's KV geometry: a preset (weka_assets.replay.capacity.KV_PRESETS), "
        "a model folder or config.json, or a Hugging Face repo id with kv_model_revision",
    )
    arrival: str = Field(
        default="",
        description="together | staggered | poisson | recorded; empty: recorded for a "
        "dataset on a corpus-wide clock (Mooncake, Bailian), together otherwise",
    )
    time_scale: float = 1.0
    points: int = Field(default=12, description="capacities in the log-spaced sweep")
    capacity_max_blocks: int = Field(
        default=8_000_000,
        description=(
            "the sweep replays whole traces, in corpus order, up to this many block accesses "
            "(its memory is about 100 bytes each); 0: every trace"
        ),
    )
    policies: list[str] = Field(
        default_factory=lambda: ["lru", "opt", "vllm"],
        description="eviction policies drawn together (lru, vllm, opt, ttl): "
        "weka_assets.replay.sizing; only lru: no policy sweep",
    )
    policy_max_blocks: int = Field(
        default=500_000,
        description="the policy sweep, tiers and fleet replay the leading traces up to this "
        "many block accesses (opt and vllm simulate each capacity: about 1 s per 100,000 "
        "accesses for 13 capacities); 0: every trace",
    )
    kv_model_revision: str = Field(
        default="", description="the pinned commit when kv_model is a Hugging Face repo id"
    )
    ttl_s: float = Field(default=300.0, description="ttl: seconds after a block's last use")
    prefill_tokens_per_s: float = Field(
        default=10_000.0, description="vllm: prefill throughput of one call, uncached tokens/s"
    )
    decode_tokens_per_s: float = Field(
        default=50.0, description="vllm: decoding speed of one call, output tokens/s"
    )
    tiers: str = Field(
        default="", description='tiers to size, fastest first, e.g. "gpu=80GiB,host=1TiB"'
    )
    replicas: int = Field(default=1, description="a fleet of replicas, each with its own cache")
    routing: str = Field(default="session", description="round_robin | session | prefix")

    def sizing(self, entry: CorpusEntry | None):
        """(SizingOptions, kv_model, kv_model_revision) for a corpus: its registry entry's
        `sizing` where stated, these fields otherwise."""
        from weka_assets.replay.block_pool import ServiceModel
        from weka_assets.replay.sizing import SizingOptions

        given = entry.sizing.model_dump(exclude_none=True) if entry and entry.sizing else {}
        options = SizingOptions(
            policies=self.policies,
            ttl_s=self.ttl_s,
            service=ServiceModel(
                prefill_tokens_per_s=self.prefill_tokens_per_s,
                decode_tokens_per_s=self.decode_tokens_per_s,
            ),
            tiers=given.get("tiers", self.tiers) or None,
            replicas=given.get("replicas", self.replicas),
            routing=given.get("routing", self.routing),
        )
        model = given.get("kv_model", self.kv_model) or None
        return options, model, given.get("kv_model_revision", self.kv_model_revision) or None


def _live(name: str):
    """The resource field of live option `name`: its default and description, from
    `LiveOptions` (the one definition)."""
    field = LiveOptions.model_fields[name]
    return Field(default=field.default, description=field.description)


class LiveServer(dg.ConfigurableResource):
    """The OpenAI-compatible server to replay against (e.g. `scripts/vllm-cpu-server start`):
    every field of `LiveOptions`, as simple config; `options()` builds it."""

    url: str = Field(
        default="", description="Base URL, e.g. http://127.0.0.1:8000; empty: not configured"
    )
    model: str = Field(default="", description="Served model name")
    concurrency: int = _live("concurrency")
    time_scale: float = _live("time_scale")
    arrival: str = _live("arrival")
    interval_s: float = _live("interval_s")
    rate_per_s: float = _live("rate_per_s")
    arrival_seed: int = _live("arrival_seed")
    max_context: int | None = _live("max_context")
    drop: str = _live("drop")
    max_tokens_cap: int = _live("max_tokens_cap")
    block_size: int = _live("block_size")
    kv_blocks: int | None = _live("kv_blocks")
    timeout_s: float = _live("timeout_s")
    retries: int = _live("retries")
    retry_backoff_s: float = _live("retry_backoff_s")
    reset_cache: bool = _live("reset_cache")
    subagent_status_from_files: bool = _live("subagent_status_from_files")

    def options(self) -> LiveOptions:
        """These fields as the core's `LiveOptions` (checked: a bad value raises)."""
        return LiveOptions(**{name: getattr(self, name) for name in LiveOptions.model_fields})
