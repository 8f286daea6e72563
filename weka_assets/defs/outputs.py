"""What the assets hand each other: small descriptors of data kept in the store.

Every `*_key` is a store-relative key (`raw/<digest>/traces.jsonl`, `datasets/<decode key>`),
valid for a local store and for S3 alike; an asset turns it into a local path with `pull`.
"""

from pydantic import BaseModel


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
    format: str | None = None  # weka | mooncake, as read (None: written before formats)
    block_size: int | None = None  # a Mooncake corpus's block size


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


class CapacityRef(BaseModel):
    corpus: str
    tokenizer: str
    decode_key: str
    curve_key: str  # replay/<decode key>/capacity_curve.json
    plot_key: str  # replay/<decode key>/capacity.png
    traces: int  # the leading traces the sweep covers
    dataset_traces: int


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
