"""Partitions: corpora are dynamic (added by the registry sensor or the CLI), tokenizers static."""

import re

import dagster as dg

from weka_assets import env

# Partition keys become file names and UI backfill selections: no `|` (multi-partition
# separator), `,` (breaks UI backfills) or `/` (nested storage paths).
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate_key(name: str, what: str = "corpus") -> str:
    if not KEY_RE.fullmatch(name):
        raise ValueError(
            f"invalid {what} name {name!r}: use 1-64 characters of a-z, 0-9, '.', '_', '-' "
            "starting with a letter or digit"
        )
    return name


corpus_partitions = dg.DynamicPartitionsDefinition(name="corpus")


def configured_tokenizers() -> list[str]:
    """Tokenizer partition keys, from WEKA_ASSETS_TOKENIZERS (comma-separated) or the default."""
    names = env.get("WEKA_ASSETS_TOKENIZERS")
    for name in names:
        validate_key(name, "tokenizer")
    return names


tokenizer_partitions = dg.StaticPartitionsDefinition(configured_tokenizers())
corpus_tokenizer_partitions = dg.MultiPartitionsDefinition(
    {"corpus": corpus_partitions, "tokenizer": tokenizer_partitions}
)
corpus_mapping = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="corpus")


def multi_key(corpus: str, tokenizer: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"corpus": corpus, "tokenizer": tokenizer})
