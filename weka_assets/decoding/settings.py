"""Decode settings and the decode key: one typed object, hashed with everything else that
determines a dataset's bytes. A setting added here is in the key automatically."""

import hashlib
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from weka_assets.decoding.dataset import DATASET_FORMAT
from weka_assets.decoding.prf import PRF_NAME
from weka_assets.decoding.tokenizers import DEFAULT_TOKENIZER, TokenizerSpec
from weka_assets.versions import MANIFEST_VERSION

ScopePolicy = Literal["trace", "session"]


class DecodeSettings(BaseModel):
    """What a user chooses. `session` scope exists only to reproduce the historic bug."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokenizer: str = DEFAULT_TOKENIZER
    scope_policy: ScopePolicy = "trace"
    seed: int = Field(0, ge=0, lt=2**64)
    filler_text: str | None = None
    sub_blocks: int = Field(4, ge=1, le=16)


def decode_key_material(
    settings: DecodeSettings,
    *,
    corpus_digest: str,
    tokenizer: TokenizerSpec,
    filler_sha256: str,
    block_sizes: list[int],
    excluded_traces: list[str],
    manifest_version: int = MANIFEST_VERSION,
    decode_scopes: dict[str, int] | None = None,
    corpus_format: str | None = None,
) -> dict:
    """`decode_scopes`: how many traces decode in each scope (trace, corpus, context): the
    layout the scope proof decided, which determines the bytes as much as any setting.
    `corpus_format`: the trace format's `key_name`, for a format whose bytes another format
    also reads (a Bailian file is valid Mooncake) or whose layout changed (a Mooncake file
    became one trace of requests); None (Weka) leaves it out, so Weka keys are those they had
    before formats named themselves."""
    extra = {} if corpus_format is None else {"corpus_format": corpus_format}
    return {
        **extra,
        "decode_scopes": dict(sorted((decode_scopes or {"trace": 0}).items())),
        "manifest_version": manifest_version,
        "format": DATASET_FORMAT,
        "prf": PRF_NAME,
        "corpus_digest": corpus_digest,
        "tokenizer": tokenizer.identity(),
        "filler_sha256": filler_sha256,
        "block_sizes": sorted(set(block_sizes)),
        "excluded_traces": sorted(excluded_traces),
        "settings": settings.model_dump(mode="json", exclude={"tokenizer", "filler_text"}),
    }


def decode_key(material: dict) -> str:
    """24 hex digits of sha256 over the canonical JSON of the key material."""
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
