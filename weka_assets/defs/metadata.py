"""Turn plain results into Dagster metadata a person can read in the UI."""

import dagster as dg

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
