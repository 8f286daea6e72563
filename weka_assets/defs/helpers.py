"""Shared helpers of the asset modules: metadata tables, inline images, the `@dg.asset`
arguments of every asset built on a decoded dataset, and decoding into the store."""

import base64
import dataclasses
import hashlib

import dagster as dg
import orjson

from weka_assets.decoding.dataset import read_manifest
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.defs.automation import rebuild_condition
from weka_assets.defs.partitions import corpus_mapping, corpus_tokenizer_partitions
from weka_assets.defs.resources import WekaStore
from weka_assets.pipeline import Variant, decode_variants
from weka_assets.traces.scope import ScopeReport

_TYPES = {bool: "bool", int: "int", float: "float"}


def table(rows: list[dict], limit: int = 500) -> dg.MetadataValue:
    """A list of flat dicts as a table (None shown as empty; at most `limit` rows)."""
    rows = rows[:limit]
    if not rows:
        return dg.MetadataValue.md("_(none)_")
    columns = list(rows[0])
    types = {}
    for c in columns:
        kinds = {type(r[c]) for r in rows if r.get(c) is not None}
        types[c] = (
            _TYPES[kinds.pop()]
            if len(kinds) == 1 and next(iter(kinds), None) in _TYPES
            else "string"
        )
    records = []
    for r in rows:
        rec = {}
        for c in columns:
            v = r.get(c)
            rec[c] = "" if v is None else (v if types[c] != "string" else str(v))
        records.append(dg.TableRecord(rec))
    schema = dg.TableSchema(columns=[dg.TableColumn(c, types[c]) for c in columns])
    return dg.MetadataValue.table(records, schema=schema)


def key_values(d: dict) -> dg.MetadataValue:
    """A flat or nested dict as a two-column table."""
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows.extend({"figure": f"{k}.{kk}", "value": str(vv)} for kk, vv in v.items())
        else:
            rows.append({"figure": k, "value": str(v)})
    return table(rows)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def markdown_image(png: bytes, alt: str) -> str:
    """A PNG as an inline markdown image (tens of KB: what the UI renders without a file)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def manifest_code_version(manifest_version: int) -> str:
    """The code version of every asset whose bytes depend on decoding."""
    return f"manifest-v{manifest_version}"


def decoding_asset(
    manifest_version: int,
    group: str,
    kinds: set[str],
    *,
    corpus_inputs: bool = False,
    automated: bool = True,
) -> dict:
    """`@dg.asset` arguments shared by every corpus x tokenizer asset built on a decoded dataset:
    the manifest version in the code version, the partitions, and (optionally) the corpus-level
    inputs mapped onto the corpus dimension. An automated asset always depends on
    `trace_scope`, so it is rebuilt only when the scope gate's checks passed."""
    kwargs = dict(
        partitions_def=corpus_tokenizer_partitions,
        code_version=manifest_code_version(manifest_version),
        group_name=group,
        kinds=kinds,
        owners=["team:weka-assets"],
        io_manager_key="descriptor_io_manager",
    )
    if corpus_inputs:
        kwargs["ins"] = {
            "raw_traces": dg.AssetIn(partition_mapping=corpus_mapping),
            "trace_scope": dg.AssetIn(partition_mapping=corpus_mapping),
        }
    if automated:
        kwargs["automation_condition"] = rebuild_condition()
        if not corpus_inputs:
            # the scope gate upstream, so a rebuild waits for its blocking checks too (the
            # condition looks at direct dependencies only)
            kwargs["deps"] = [dg.AssetDep("trace_scope", partition_mapping=corpus_mapping)]
    return kwargs


def decode_in_store(
    store: WekaStore,
    corpus_path,
    settings: DecodeSettings,
    report: ScopeReport,
    manifest_version: int,
    measure_drift: bool = True,
    **kw,
):
    """`decode_variants_in_store` of one dataset."""
    variant = Variant(settings, measure_drift)
    return decode_variants_in_store(store, corpus_path, [variant], report, manifest_version, **kw)[
        0
    ]


def decode_variants_in_store(
    store: WekaStore,
    corpus_path,
    variants: list[Variant],
    report: ScopeReport,
    manifest_version: int,
    **kw,
) -> list:
    """decode_variants into the store's datasets/ (one pass for every dataset not stored yet):
    an existing key (also a remote one) is reused; a new dataset is published exclusively (its
    manifest last, with conditional writes on S3), so of two machines decoding one key at
    once, one publishes and the other adopts its dataset. Its provenance goes to
    `provenance/datasets/<key>.json`, beside it."""

    def fetch_existing(key: str) -> bool:
        if store.exists(f"datasets/{key}/manifest.json"):
            store.pull(f"datasets/{key}")
            return True
        return False

    outs = decode_variants(
        corpus_path, store.dir("datasets"), variants, report, manifest_version=manifest_version,
        fetch_existing=fetch_existing, provenance_dir=store.dir("provenance/datasets"), **kw,
    )  # fmt: skip
    return [_stored(store, out) for out in outs]


def _stored(store: WekaStore, out):
    """A decode's outcome once its new dataset is published in the store (or adopted: another
    machine's copy was there first)."""
    if out.reused:
        return out
    record = f"provenance/datasets/{out.key}.json"
    won = store.publish(f"datasets/{out.key}")
    if won and out.published:
        store.push(record)
        return out
    if not out.published:  # another process here published it first (out tells its dataset)
        return out
    # another machine published first: the local copy is now its dataset, and our provenance
    # record describes a dataset that was never stored
    store.local(record).unlink(missing_ok=True)
    return dataclasses.replace(
        out, manifest=read_manifest(out.path), published=False, provenance={}
    )


def content_version(figures) -> dg.DataVersion:
    """A data version from what an asset computed (sorted JSON), so an unchanged result is
    recognised as unchanged whichever run computed it."""
    body = orjson.dumps(figures, option=orjson.OPT_SORT_KEYS)
    return dg.DataVersion(hashlib.sha256(body).hexdigest()[:24])
