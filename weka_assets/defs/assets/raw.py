"""`raw_traces`: a pinned, verified snapshot of a corpus source in the store."""

import dagster as dg

from weka_assets import store_keys
from weka_assets.defs.helpers import table
from weka_assets.defs.outputs import RawCorpus
from weka_assets.defs.partitions import corpus_partitions
from weka_assets.defs.resources import CorpusCatalog, WekaStore
from weka_assets.errors import WekaError
from weka_assets.sources import fetch


@dg.asset(
    partitions_def=corpus_partitions,
    group_name="raw",
    kinds={"python", "json"},
    owners=["team:weka-assets"],
    io_manager_key="descriptor_io_manager",
)
def raw_traces(
    context: dg.AssetExecutionContext, store: WekaStore, catalog: CorpusCatalog
) -> dg.Output[RawCorpus]:
    """The corpus's trace files at an immutable revision (Hub commit, S3 ETag/version, or the
    sha256 of local bytes), verified and copied into the store under their content digest.

    The data version is that digest: an unchanged upstream leaves everything downstream fresh,
    a changed one makes it stale. A failed download publishes nothing and leaves the previous
    snapshot readable.
    """
    corpus = context.partition_key
    try:
        source = catalog.source(corpus)
    except WekaError as exc:
        raise dg.Failure(f"corpus {corpus!r}: {exc}") from None
    try:
        got = fetch(
            source,
            store.dir(store_keys.RAW),
            token=catalog.hf_token or None,
            s3_options=catalog.s3_options(),
        )
    except (WekaError, OSError) as exc:
        raise dg.Failure(f"corpus {corpus!r} ({source}): {exc}") from None
    snapshot = store_keys.raw_snapshot(got.sha256)
    store.push(snapshot)
    files = [{"name": f.name, "sha256": f.sha256, "bytes": f.bytes} for f in got.files]
    context.log.info(
        f"{corpus}: {got.traces} traces, {got.bytes:,} bytes at {got.revision} from {source}"
    )
    return dg.Output(
        RawCorpus(
            corpus=corpus,
            source=source,
            revision=got.revision,
            key=store.relative(got.path),
            digest=got.sha256,
            files=files,
            bytes=got.bytes,
            records=got.traces,
        ),
        data_version=dg.DataVersion(got.sha256),
        metadata={
            "dagster/row_count": got.traces,
            "source": source,
            "revision": got.revision,
            "digest": got.sha256,
            "bytes": got.bytes,
            "files": table(files),
            "snapshot": dg.MetadataValue.path(store.url(snapshot)),
        },
    )


def build(manifest_version: int) -> list[dg.AssetsDefinition]:
    """`raw_traces` (no manifest version: a snapshot is the source's bytes)."""
    return [raw_traces]
