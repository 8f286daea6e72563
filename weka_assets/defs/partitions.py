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

# The corpus of a run, whatever partitions it covers: the run queue's per-corpus limit
# (deploy/dagster.yaml) reads this tag. Dagster's own partition tags cannot serve: a run of the
# corpus-partitioned assets carries only `dagster/partition` (the corpus), a corpus x tokenizer
# run `dagster/partition` ("corpus|tokenizer") and `dagster/partition/corpus`; no key is common
# to both. Every run request and backfill this project creates sets it (corpus_tags).
CORPUS_TAG = "weka-assets/corpus"


def multi_key(corpus: str, tokenizer: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"corpus": corpus, "tokenizer": tokenizer})


def corpus_of(partition_key: str) -> str:
    """The corpus of a `corpus` key ("sample") or a corpus x tokenizer key ("sample|deepseek")."""
    key = str(partition_key)
    if "|" in key:
        return corpus_tokenizer_partitions.get_partition_key_from_str(key).keys_by_dimension[
            "corpus"
        ]
    return key


def corpus_tags(partition_key: str) -> dict[str, str]:
    """The tag that puts a run of this partition under its corpus's run limit."""
    return {CORPUS_TAG: corpus_of(partition_key)}
