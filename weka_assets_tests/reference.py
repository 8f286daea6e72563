"""Test-side reference implementation of the definitions in docs/definitions.md.

Written independently of the product code (``weka_assets``), on purpose: the tests
compare the product's figures with the ones computed here. Everything is a plain
per-id loop over sets and dicts, so that each figure can be checked against the
wording of docs/definitions.md (and ../shared/docs/scope-contract.md, decoder.md)
by reading it.

Only valid corpora (no hard errors) are supported; input is not validated.
"""

import gzip
import json
import math
import os
import statistics

import numpy

# --------------------------------------------------------------------------- loading


def _drop_none(value):
    """Return a copy of value with every None-valued dict key removed, recursively."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if item is None:
                continue
            out[key] = _drop_none(item)
        return out
    if isinstance(value, list):
        return [_drop_none(item) for item in value]
    return value


def _clean_trace(trace):
    """Drop None-valued keys from every request dict (and the subagents' inner requests)."""
    trace = dict(trace)
    requests = trace.get("requests")
    if isinstance(requests, list):
        trace["requests"] = [_drop_none(request) for request in requests]
    return trace


def load_raw_traces(path):
    """Return (source_name, trace_dict) pairs.

    path is a directory of *.json files (one trace per file, sorted by file name),
    or a .jsonl / .jsonl.gz file (one trace per non-empty line; source name is
    "<file name>:<1-based line number>").
    """
    path = os.fspath(path)
    result = []
    if os.path.isdir(path):
        names = sorted(name for name in os.listdir(path) if name.endswith(".json"))
        for name in names:
            with open(os.path.join(path, name), encoding="utf-8") as handle:
                trace = json.load(handle)
            result.append((name, _clean_trace(trace)))
        return result
    if path.endswith(".gz"):
        handle = gzip.open(path, "rt", encoding="utf-8")
    else:
        handle = open(path, encoding="utf-8")
    with handle:
        base_name = os.path.basename(path)
        line_number = 0
        for line in handle:
            line_number += 1
            if line.strip() == "":
                continue
            trace = json.loads(line)
            result.append((base_name + ":" + str(line_number), _clean_trace(trace)))
    return result


# --------------------------------------------------------------------------- small helpers


def _is_subagent(request):
    return request.get("type") == "subagent"


def _ids(call):
    return call.get("hash_ids") or []


def _subagents(trace):
    """The subagent entries of a trace, in document order."""
    return [request for request in trace["requests"] if _is_subagent(request)]


def _parent_calls(trace):
    return [request for request in trace["requests"] if not _is_subagent(request)]


def _document_walk(trace):
    """Model calls in document order (subagent inner calls inlined at their entry)."""
    calls = []
    for request in trace["requests"]:
        if _is_subagent(request):
            for inner in request.get("requests") or []:
                calls.append(inner)
        else:
            calls.append(request)
    return calls


def _parent_first_walk(trace):
    """All parent calls, then each subagent's calls in entry order."""
    calls = list(_parent_calls(trace))
    for entry in _subagents(trace):
        for inner in entry.get("requests") or []:
            calls.append(inner)
    return calls


def _all_ids(trace):
    """Set of every id of the trace (parent and subagents)."""
    seen = set()
    for call in _document_walk(trace):
        for x in _ids(call):
            seen.add(x)
    return seen


def _subagent_id_set(entry):
    ids = set()
    for inner in entry.get("requests") or []:
        for x in _ids(inner):
            ids.add(x)
    return ids


def _first_appearance(calls, base):
    """(fresh_below, gap) event counts of the first-appearance sequence of a walk."""
    seen = set()
    fresh_below = 0
    gap = 0
    for call in calls:
        for x in _ids(call):
            if x in seen:
                continue
            expected = base + len(seen)
            if x < expected:
                fresh_below += 1
            elif x > expected:
                gap += 1
            seen.add(x)
    return fresh_below, gap


def _inner_time_convention(entry):
    """'absolute', 'relative' or 'mixed' for a subagent with calls; None without calls."""
    inner_calls = entry.get("requests") or []
    if not inner_calls:
        return None
    entry_t = entry["t"]
    all_absolute = True
    all_relative = True
    for inner in inner_calls:
        if inner["t"] >= entry_t:
            all_relative = False
        else:
            all_absolute = False
    if all_absolute:
        return "absolute"
    if all_relative:
        return "relative"
    return "mixed"


def _hashing_class(call, block_size):
    n = call["in"]
    length = len(_ids(call))
    ceil_blocks = math.ceil(n / block_size)
    floor_blocks = n // block_size
    if length > ceil_blocks:
        return "over"
    if length == floor_blocks:
        return "floor"
    if length == ceil_blocks:
        return "ceil"
    return "truncated"


def _median(values):
    if not values:
        return None
    return float(statistics.median(values))


def _mean(values):
    if not values:
        return None
    return float(statistics.fmean(values))


def _p90(values):
    if not values:
        return None
    return float(numpy.percentile(values, 90))


# --------------------------------------------------------------------------- per trace


def _analyse_trace(trace):
    """Every per-trace figure; a plain dict."""
    subagents = _subagents(trace)
    all_ids = _all_ids(trace)
    info = {
        "has_ids": len(all_ids) > 0,
        "base": None,
        "max": None,
        "holes": 0,
        "fresh_below": {"document": 0, "parent_first": 0},
        "gap": {"document": 0, "parent_first": 0},
        "minting_order": "document",
        "perfect": True,
        "first_blocks": [],  # (first id, equals base)
        "reset_subagents": 0,
        "parent_shares": [],
        "sibling_shares": [],
        "position_violations": 0,
    }
    if not all_ids:
        # No id at all: no base; left out of every id statistic. Both walks are
        # trivially event-free, so the trace counts as document-minted and perfect
        # in its own per-trace row.
        info["verdict"] = "shared"
        return info

    base = min(all_ids)
    top = max(all_ids)
    info["base"] = base
    info["max"] = top

    # holes
    holes = 0
    for x in range(base, top + 1):
        if x not in all_ids:
            holes += 1
    info["holes"] = holes

    # walks
    doc_fresh, doc_gap = _first_appearance(_document_walk(trace), base)
    pf_fresh, pf_gap = _first_appearance(_parent_first_walk(trace), base)
    info["fresh_below"] = {"document": doc_fresh, "parent_first": pf_fresh}
    info["gap"] = {"document": doc_gap, "parent_first": pf_gap}

    if not subagents:
        if doc_fresh == 0:
            minting = "document"
        else:
            minting = "none"
    else:
        if doc_fresh == 0 and pf_fresh == 0:
            if pf_gap < doc_gap:
                minting = "parent_first"
            else:
                minting = "document"  # fewer gaps, or a tie
        elif doc_fresh == 0:
            minting = "document"
        elif pf_fresh == 0:
            minting = "parent_first"
        else:
            minting = "none"
    info["minting_order"] = minting
    if minting == "document":
        info["perfect"] = doc_gap == 0
    elif minting == "parent_first":
        info["perfect"] = pf_gap == 0
    else:
        info["perfect"] = False

    # subagent first block and reset signature
    reset_count = 0
    for entry in subagents:
        first = None
        for inner in entry.get("requests") or []:
            if _ids(inner):
                first = _ids(inner)[0]
                break
        if first is not None:
            info["first_blocks"].append((first, first == base))
        own = _subagent_id_set(entry)
        if len(own) > 1:
            expected = set(range(base, max(own) + 1))
            if own == expected:
                reset_count += 1
    info["reset_subagents"] = reset_count

    # parent share and sibling share
    parent_ids = set()
    for call in _parent_calls(trace):
        for x in _ids(call):
            parent_ids.add(x)
    sub_sets = [_subagent_id_set(entry) for entry in subagents]
    for index, own in enumerate(sub_sets):
        if not own:
            continue
        common = 0
        for x in own:
            if x in parent_ids:
                common += 1
        info["parent_shares"].append(common / len(own))
        if len(subagents) >= 2:
            others = set()
            for other_index, other in enumerate(sub_sets):
                if other_index != index:
                    for x in other:
                        others.add(x)
            common = 0
            for x in own:
                if x in others:
                    common += 1
            info["sibling_shares"].append(common / len(own))

    # position consistency
    positions = {}
    for call in _document_walk(trace):
        ids = _ids(call)
        for index in range(len(ids)):
            x = ids[index]
            if x not in positions:
                positions[x] = set()
            positions[x].add(index)
    violations = 0
    for x in positions:
        if len(positions[x]) > 1:
            violations += 1
    info["position_violations"] = violations

    # verdict
    if reset_count > 0:
        info["verdict"] = "reset"
    elif minting != "none":
        info["verdict"] = "shared"
    else:
        info["verdict"] = "ambiguous"
    return info


# --------------------------------------------------------------------------- scope report


def reference_scope_report(path):
    """Corpus scope report (valid corpora only) per docs/definitions.md."""
    traces = [trace for _source, trace in load_raw_traces(path)]

    declared_scope = {}
    minting_counts = {"document": 0, "parent_first": 0, "none": 0}
    base_counts = {}
    fresh_below = {"document": 0, "parent_first": 0}
    gap_events = {"document": 0, "parent_first": 0}
    verdicts = {"shared": 0, "reset": 0, "ambiguous": 0}
    hashing = {"floor": 0, "ceil": 0, "truncated": 0, "over": 0}
    inner_time = {"absolute": 0, "relative": 0, "mixed": 0}
    perfect_traces = 0
    holes_traces = 0
    traces_with_subagents = 0
    subagent_count = 0
    first_blocks = []
    equal_base = 0
    reset_subagents = 0
    parent_shares = []
    sibling_shares = []
    parent_affected = 0
    sibling_affected = 0
    prefix_declared = 0
    position_violations = 0
    per_trace = {}

    for trace in traces:
        scope = trace.get("hash_id_scope")
        if scope is not None:
            declared_scope[scope] = declared_scope.get(scope, 0) + 1

        subagents = _subagents(trace)
        if subagents:
            traces_with_subagents += 1
        subagent_count += len(subagents)

        if (trace.get("tool_tokens") or 0) + (trace.get("system_tokens") or 0) > 0:
            prefix_declared += 1

        block_size = trace["block_size"]
        for call in _document_walk(trace):
            hashing[_hashing_class(call, block_size)] += 1
        for entry in subagents:
            convention = _inner_time_convention(entry)
            if convention is not None:
                inner_time[convention] += 1

        info = _analyse_trace(trace)
        verdicts[info["verdict"]] += 1
        per_trace[trace["id"]] = {
            "minting_order": info["minting_order"],
            "perfect": info["perfect"],
            "verdict": info["verdict"],
            "base": info["base"],
            "holes": info["holes"],
        }
        if not info["has_ids"]:
            continue  # left out of every id statistic

        minting_counts[info["minting_order"]] += 1
        if info["perfect"]:
            perfect_traces += 1
        key = str(info["base"])
        base_counts[key] = base_counts.get(key, 0) + 1
        for walk in ("document", "parent_first"):
            fresh_below[walk] += info["fresh_below"][walk]
            gap_events[walk] += info["gap"][walk]
        if info["holes"] > 0:
            holes_traces += 1
        for first, is_base in info["first_blocks"]:
            first_blocks.append(first)
            if is_base:
                equal_base += 1
        reset_subagents += info["reset_subagents"]
        parent_shares.extend(info["parent_shares"])
        sibling_shares.extend(info["sibling_shares"])
        if any(share > 0 for share in info["parent_shares"]):
            parent_affected += 1
        if any(share > 0 for share in info["sibling_shares"]):
            sibling_affected += 1
        position_violations += info["position_violations"]

    return {
        "traces": len(traces),
        "traces_with_subagents": traces_with_subagents,
        "subagents": subagent_count,
        "declared_scope": declared_scope,
        "minting_order": minting_counts,
        "perfect_traces": perfect_traces,
        "base": base_counts,
        "fresh_below_events": fresh_below,
        "gap_events": gap_events,
        "holes_traces": holes_traces,
        "subagent_first_block": {
            "equal_base": equal_base,
            "min": min(first_blocks) if first_blocks else None,
            "median": _median(first_blocks),
            "p90": _p90(first_blocks),
            "max": max(first_blocks) if first_blocks else None,
        },
        "reset_signature_subagents": reset_subagents,
        "parent_share": {
            "traces_affected": parent_affected,
            "mean": _mean(parent_shares),
            "median": _median(parent_shares),
        },
        "sibling_share": {
            "traces_affected": sibling_affected,
            "mean": _mean(sibling_shares),
            "median": _median(sibling_shares),
        },
        "prefix_declared_traces": prefix_declared,
        "verdict": verdicts,
        "position_violations": position_violations,
        "hashing": hashing,
        "inner_time": inner_time,
        "per_trace": per_trace,
    }


# --------------------------------------------------------------------------- theoretical


def _timed_calls(trace):
    """(call, key, role) for every call of the trace, sorted by absolute start time.

    key = (trace_id, conv, request, inner). Ties keep document order (stable sort
    over a list built in document order).
    """
    rows = []
    conv = 0
    for request_index, request in enumerate(trace["requests"]):
        if _is_subagent(request):
            conv += 1
            convention = _inner_time_convention(request)
            for inner_index, inner in enumerate(request.get("requests") or []):
                start = inner["t"]
                if convention == "relative":
                    start = start + request["t"]
                key = (trace["id"], conv, request_index, inner_index)
                rows.append((start, inner, key, "subagent"))
        else:
            key = (trace["id"], 0, request_index, -1)
            rows.append((request["t"], request, key, "parent"))
    rows = sorted(rows, key=lambda row: row[0])
    return [(call, key, role) for _start, call, key, role in rows]


def _leading_hits(ids, seen):
    hits = 0
    for x in ids:
        if x in seen:
            hits += 1
        else:
            break
    return hits


def _rate(hits, total):
    if total == 0:
        return None
    return hits / total


def _summary(hits, total, full_hits, full_total):
    return {
        "theoretical_hit_rate": _rate(hits, total),
        "theoretical_full_block_hit_rate": _rate(full_hits, full_total),
        "blocks": total,
        "hits": hits,
        "full_block_hits": full_hits,
        "full_blocks": full_total,
    }


def reference_theoretical(path):
    """Unbounded-cache theoretical prefix-cache figures per docs/definitions.md."""
    traces = [trace for _source, trace in load_raw_traces(path)]
    per_call = {}
    sums = {
        "parent": [0, 0, 0, 0],
        "subagent": [0, 0, 0, 0],
    }
    for trace in traces:
        block_size = trace["block_size"]
        seen = set()
        seen_full = set()
        for call, key, role in _timed_calls(trace):
            ids = _ids(call)
            hits = _leading_hits(ids, seen)
            total = len(ids)
            for x in ids:
                seen.add(x)

            full_count = min(len(ids), call["in"] // block_size)
            full_ids = ids[:full_count]
            full_hits = _leading_hits(full_ids, seen_full)
            for x in full_ids:
                seen_full.add(x)

            per_call[key] = (hits, total, full_hits, full_count)
            sums[role][0] += hits
            sums[role][1] += total
            sums[role][2] += full_hits
            sums[role][3] += full_count

    hits = sums["parent"][0] + sums["subagent"][0]
    total = sums["parent"][1] + sums["subagent"][1]
    full_hits = sums["parent"][2] + sums["subagent"][2]
    full_total = sums["parent"][3] + sums["subagent"][3]
    result = _summary(hits, total, full_hits, full_total)
    result["per_role"] = {
        "parent": _summary(*sums["parent"]),
        "subagent": _summary(*sums["subagent"]),
    }
    result["per_call"] = per_call
    return result
