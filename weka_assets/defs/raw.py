"""`raw_traces`: a pinned, checksummed snapshot of a corpus source."""

import shutil
import tempfile
from pathlib import Path

import dagster as dg

from weka_assets.defs.outputs import RawCorpus
from weka_assets.defs.partitions import corpus_partitions
from weka_assets.defs.resources import CorpusCatalog, WekaStore
from weka_assets.errors import WekaError
from weka_assets.sources import resolve_source
from weka_assets.traces.reader import JSONL_SUFFIXES, corpus_digest, corpus_files, file_digests


def _count_records(path: Path) -> int:
    files = corpus_files(path)
    if len(files) == 1 and files[0].name.endswith(JSONL_SUFFIXES):
        import gzip

        opener = gzip.open if files[0].name.endswith(".gz") else open
        with opener(files[0], "rb") as fh:
            return sum(1 for line in fh if line.strip())
    return len(files)


def snapshot(local: Path, target: Path) -> Path:
    """Copy the corpus files into `target` (atomically: aside, then rename) unless present."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        for f in corpus_files(local):
            shutil.copy2(f, tmp / f.name)
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dg.asset(
    partitions_def=corpus_partitions,
    automation_condition=dg.AutomationCondition.on_missing(),
    group_name="raw",
    kinds={"python", "json"},
    owners=["team:weka-assets"],
    io_manager_key="descriptor_io_manager",
)
def raw_traces(
    context: dg.AssetExecutionContext, store: WekaStore, catalog: CorpusCatalog
) -> dg.Output[RawCorpus]:
    """The corpus's trace files, copied into the store under their content digest.

    The data version is that digest: an unchanged source leaves everything downstream fresh.
    """
    corpus = context.partition_key
    source = catalog.source(corpus)
    try:
        local = resolve_source(source, store.dir("builtin"))
        digests = file_digests(local)
    except WekaError as exc:
        raise dg.Failure(f"corpus {corpus!r}: {exc}") from None
    digest = corpus_digest(digests)
    snap = snapshot(local, store.root / "raw" / digest)
    single = len(digests) == 1 and digests[0].name.endswith((*JSONL_SUFFIXES, ".json"))
    path = snap / digests[0].name if single else snap
    records = _count_records(path)
    files = [{"name": d.name, "sha256": d.sha256, "bytes": d.bytes} for d in digests]
    total = sum(d.bytes for d in digests)
    context.log.info(
        f"{corpus}: {records} traces, {total:,} bytes, digest {digest[:16]} from {source}"
    )
    return dg.Output(
        RawCorpus(
            corpus=corpus,
            source=source,
            path=str(path),
            digest=digest,
            files=files,
            bytes=total,
            records=records,
        ),
        data_version=dg.DataVersion(digest),
        metadata={
            "dagster/row_count": records,
            "source": source,
            "digest": digest,
            "bytes": total,
            "files": len(files),
            "snapshot": dg.MetadataValue.path(str(path)),
        },
    )
