"""What the assets hand each other: small descriptors of data stored under the store."""

from pydantic import BaseModel


class RawCorpus(BaseModel):
    corpus: str
    source: str
    path: str  # pinned local snapshot (content-addressed by digest)
    digest: str
    files: list[dict]
    bytes: int
    records: int


class ScopeGate(BaseModel):
    corpus: str
    digest: str
    report_path: str
    policy: str
    passed: bool
    excluded_traces: list[str]
    summary: str


class DatasetRef(BaseModel):
    corpus: str
    tokenizer: str
    path: str
    decode_key: str
    manifest_version: int
    reused: bool


class ReplayRef(BaseModel):
    corpus: str
    tokenizer: str
    decode_key: str
    result_path: str
    per_call_path: str
    theoretical_hit_rate: float | None
    token_replay_hit_rate: float | None
    fidelity_mismatched_calls: int


class BlastRef(BaseModel):
    corpus: str
    tokenizer: str
    current_key: str
    previous_key: str | None
    path: str
    calls_tokens_changed: int
    calls_cache_changed: int
