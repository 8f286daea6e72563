"""Resources: where data lives, which corpora exist, how to decode. Chosen per environment in
`definitions.py`; everything else reads them, never environment variables."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from weka_assets.decoding.settings import DecodeSettings
from weka_assets.defs.partitions import validate_key
from weka_assets.sources import BUILTIN_CORPORA

DEFAULT_STORE = ".weka-store"


def resolve_base_path(value: str) -> Path:
    """Configured path, else $WEKA_ASSETS_STORE, else ./.weka-store (absolute)."""
    return (
        Path(value or os.environ.get("WEKA_ASSETS_STORE") or DEFAULT_STORE).expanduser().resolve()
    )


class WekaStore(dg.ConfigurableResource):
    """One base folder for everything the assets write; content-addressed below it."""

    base_path: str = Field(
        default="", description="Folder for all data; empty: $WEKA_ASSETS_STORE or ./.weka-store"
    )

    @property
    def root(self) -> Path:
        return resolve_base_path(self.base_path)

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


class CorpusCatalog(dg.ConfigurableResource):
    """Corpus name (partition key) -> source URI, and the policy for reset/ambiguous traces."""

    corpora: dict[str, str] = Field(
        default_factory=lambda: {name: f"builtin:{name}" for name in BUILTIN_CORPORA},
        description="name -> source (local path, file://PATH or builtin:NAME)",
    )
    scope_policy: str = Field(
        default="fail", description="fail: reject the corpus; exclude: drop and list those traces"
    )

    def source(self, corpus: str) -> str:
        if corpus not in self.corpora:
            raise dg.Failure(
                f"corpus {corpus!r} is not in the catalog (known: {', '.join(sorted(self.corpora))})"
            )
        return self.corpora[corpus]

    def names(self) -> list[str]:
        return [validate_key(n) for n in sorted(self.corpora)]


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
