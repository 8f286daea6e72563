"""What the assets hand each other: small descriptors of data kept in the store.

Every `*_key` is a store-relative key (`raw/<digest>/traces.jsonl`, `datasets/<decode key>`),
valid for a local store and for S3 alike; an asset turns it into a local path with `pull`.
"""

from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:  # pandas and the store load only when a frame is asked for
    import pandas as pd

    from weka_assets.store import Store


def _store(store: "Store | None") -> "Store":
    """The given store, else the one the definitions use by default ($WEKA_ASSETS_STORE or
    ./.weka-store), as a notebook next to the project would."""
    if store is not None:
        return store
    from weka_assets.defs.resources import WekaStore

    return WekaStore().open_store()


class RawCorpus(BaseModel):
    corpus: str
    source: str
    revision: str  # immutable: Hub commit sha, S3 etag/version, or sha256 of local bytes
    key: str  # the pinned snapshot: a file or folder under raw/<digest>/
    digest: str
    files: list[dict]
    bytes: int
    records: int


class ScopeGate(BaseModel):
    corpus: str
    digest: str
    report_key: str
    policy: str
    passed: bool
    excluded_traces: list[str]
    summary: str
    format: str | None = None  # a trace format's name, as read (None: written before formats)
    block_size: int | None = None  # the corpus's block size when its traces state none
    # the corpus as the scope pass parsed it (traces/parsed.py), for the decodes; None: not kept
    parsed_key: str | None = None


class DatasetRef(BaseModel):
    corpus: str
    tokenizer: str
    key: str  # datasets/<decode key>
    decode_key: str
    manifest_version: int
    reused: bool


class ReplayRef(BaseModel):
    corpus: str
    tokenizer: str
    decode_key: str
    result_key: str
    per_call_key: str
    theoretical_hit_rate: float | None
    token_replay_hit_rate: float | None
    fidelity_mismatched_calls: int

    def per_call_frame(self, store: "Store | None" = None) -> "pd.DataFrame":
        """The per-call table as a DataFrame, one row per call in dataset order: trace, conv,
        request, inner, role, ids, hits, full_blocks, full_hits, token_blocks, token_hits.
        In a notebook: `defs.load_asset_value("replay_benchmark", partition_key=...)
        .per_call_frame()`."""
        import pandas as pd

        return pd.read_parquet(_store(store).pull(self.per_call_key))


class CapacityRef(BaseModel):
    corpus: str
    tokenizer: str
    decode_key: str
    curve_key: str  # replay/<decode key>/capacity_curve.json
    plot_key: str  # replay/<decode key>/capacity.png
    traces: int  # the leading traces the sweep covers
    dataset_traces: int
    # the policy sweep, tiers and fleet (sizing.CapacityReport), when configured
    report_key: str | None = None  # replay/<decode key>/capacity_report.json
    policy_plot_key: str | None = None  # replay/<decode key>/capacity_policies.png
    report_traces: int | None = None  # the leading traces it covers (policy_max_blocks)

    def frame(self, store: "Store | None" = None) -> "pd.DataFrame":
        """The curve as a DataFrame, one row per capacity (increasing; the unbounded point last,
        its capacity_blocks missing): capacity_blocks, capacity_bytes, hits, blocks, hit_rate,
        and the hit rate per role."""
        import orjson
        import pandas as pd

        curve = orjson.loads(_store(store).read_bytes(self.curve_key))
        rows = [
            {
                **{k: p[k] for k in ("capacity_blocks", "capacity_bytes", "hits", "blocks")},
                "hit_rate": p["hit_rate"],
                **{f"{role}_hit_rate": r["hit_rate"] for role, r in p["per_role"].items()},
            }
            for p in curve["points"]
        ]
        return pd.DataFrame(rows).astype({"capacity_blocks": "Int64", "capacity_bytes": "Int64"})


class BlastRef(BaseModel):
    corpus: str
    tokenizer: str
    current_key: str
    previous_key: str | None
    key: str
    calls_tokens_changed: int
    calls_cache_changed: int


class LiveRef(BaseModel):
    corpus: str
    tokenizer: str
    decode_key: str
    result_key: str
    matched_calls: int
    mismatched_calls: int


class ExportRef(BaseModel):
    corpus: str
    tokenizer: str
    decode_key: str
    format: str  # mooncake | aiperf-payload | text
    key: str  # exports/<decode key>/<format>.jsonl; its sidecar: key + ".meta.json"
    meta_key: str
    lines: int
    sha256: str
