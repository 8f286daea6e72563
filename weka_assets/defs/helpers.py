"""Shared helpers of the asset modules: metadata tables, inline images, content data versions
and the `@dg.asset` arguments of every asset built on a decoded dataset. What the chain reads
and writes in the store is the core's (`weka_assets.store_chain`)."""

import base64
import hashlib

import dagster as dg
import orjson

from weka_assets.defs.automation import rebuild_condition
from weka_assets.defs.partitions import corpus_mapping, corpus_tokenizer_partitions

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


def content_version(figures) -> dg.DataVersion:
    """A data version from what an asset computed (sorted JSON), so an unchanged result is
    recognised as unchanged whichever run computed it."""
    body = orjson.dumps(figures, option=orjson.OPT_SORT_KEYS)
    return dg.DataVersion(hashlib.sha256(body).hexdigest()[:24])
