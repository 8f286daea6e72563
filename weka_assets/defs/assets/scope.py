"""`trace_scope`: the corpus report, one asset check per contract rule, and the hard gate.

The gate raises inside the asset (a blocking check does not stop a backfill's downstream
partitions): a corpus that fails the contract is never materialized, so nothing is decoded.
The checks are emitted before that, so the UI shows per partition which rule failed.
"""

import hashlib

import dagster as dg
import orjson

from weka_assets.defs.automation import on_new_data
from weka_assets.defs.helpers import key_values, pct, table
from weka_assets.defs.outputs import RawCorpus, ScopeGate
from weka_assets.defs.partitions import corpus_partitions
from weka_assets.defs.resources import CorpusCatalog, WekaStore
from weka_assets.progress import dagster_progress
from weka_assets.store_chain import ScopeInStore, scope_in_store
from weka_assets.traces.scope import CONTRACT_FIGURES, CONTRACT_RULES, ScopeReport

CHECK_SPECS = [
    dg.AssetCheckSpec(
        rule.name,
        asset="trace_scope",
        description=rule.description,
        partitions_def=corpus_partitions,
        blocking=rule.hard,
    )
    for rule in CONTRACT_RULES
]

REPORT_FIGURES = (*CONTRACT_FIGURES, "conventions", "findings", "null_keys_dropped")


def report_markdown(report: ScopeReport) -> str:
    v, mo = report.verdict, report.minting_order
    ss, ps = report.sibling_share, report.parent_share
    lines = [
        f"**{report.summary()}**",
        "",
        f"- declared scope: {report.declared_scope}; layout decoded: **{report.layout}** "
        f"{report.decode_scopes} ({report.inferred_scope_traces} inferred from the data)",
        f"- minting order: document {mo['document']}, parent-first {mo['parent_first']}, none {mo['none']}; "
        f"{report.perfect_traces} perfect; {report.holes_traces} with holes",
        f"- verdicts: shared {v['shared']}, reset {v['reset']}, ambiguous {v['ambiguous']}",
        f"- sharing: parent {ps.traces_affected}/{report.traces_with_subagents} traces (mean {pct(ps.mean)}), "
        f"sibling {ss.traces_affected}/{report.traces_with_subagents} traces (mean {pct(ss.mean)}, median {pct(ss.median)})",
        f"- hashing: {report.hashing}; inner time: {report.inner_time}",
        f"- policy `{report.policy}`; excluded traces: {len(report.excluded_traces)}",
    ]
    for reason in report.failure_reasons:
        lines.append(f"- **failure:** {reason}")
    return "\n".join(lines)


def verdict_markdown(report: ScopeReport) -> str:
    """The gate's verdict in one line: `PASS: 12/12 shared, document order, 0 fresh-below, ...`."""
    v, f = report.verdict, report.findings
    total = v["shared"] + v["reset"] + v["ambiguous"]
    orders = {k: n for k, n in report.minting_order.items() if n}
    if len(orders) == 1:
        order = f"{next(iter(orders)).replace('_', '-')} order"
    else:
        order = "minting " + " / ".join(f"{k.replace('_', '-')} {n}" for k, n in orders.items())
    parts = [
        f"{v['shared']}/{total} shared",
        order,
        f"{f.get('fresh_below_events_minting_walk', 0)} fresh-below",
        f"{f.get('gap_events_minting_walk', 0)} gaps",
        f"{report.holes_traces} with holes",
        f"{f.get('truncated_calls', 0)} truncated lists",
        f"{report.position_violations} position violations",
        f"{len(report.hard_errors)} hard errors",
    ]
    if v["reset"] or v["ambiguous"]:
        parts.insert(1, f"{v['reset']} reset, {v['ambiguous']} ambiguous")
    head = "PASS" if report.passed else "FAIL"
    tail = f"policy `{report.policy}`, {len(report.excluded_traces)} excluded"
    return f"**{head}**: " + ", ".join(parts) + f"; {tail}"


def attention_reasons(row: dict) -> list[str]:
    """Why a per-trace row needs a person's attention (empty: it does not)."""
    why = []
    if row["verdict"] != "shared":
        why.append(row["verdict"])
    if row["holes"]:
        why.append("holes")
    if row["truncated_calls"]:
        why.append("truncated lists")
    if row["position_violations"]:
        why.append("position violations")
    if not row["perfect"] and not why:
        why.append("not perfect")
    return why


def attention_rows(report: ScopeReport) -> list[dict]:
    """Per-trace rows a person should look at (reset, ambiguous, holes, truncated lists,
    position violations, not perfect), each with the reasons first."""
    return [
        {"needs_attention": ", ".join(why), **r}
        for r in report.per_trace
        if (why := attention_reasons(r))
    ]


@dg.asset(
    partitions_def=corpus_partitions,
    check_specs=CHECK_SPECS,
    automation_condition=on_new_data(),
    group_name="scope",
    kinds={"python"},
    owners=["team:weka-assets"],
    io_manager_key="descriptor_io_manager",
)
def trace_scope(
    context: dg.AssetExecutionContext,
    raw_traces: RawCorpus,
    store: WekaStore,
    catalog: CorpusCatalog,
):
    """Proof of the hash-id namespace layout (scope-contract.md), per trace and per corpus.

    Fails the partition, and so stops decoding, when the corpus breaks the contract.
    """
    progress = dagster_progress(context)
    progress.expect("scope", raw_traces.records)
    corpus = raw_traces.corpus
    scoped = scope_in_store(
        store, raw_traces.key, raw_traces.digest, catalog.policy(corpus),
        catalog.corpus_format(corpus), progress,
    )  # fmt: skip
    report, metadata = scoped.report, scope_metadata(store, raw_traces, scoped)
    checks = list(check_results(report))
    if not report.passed:
        # the checks are recorded for this partition, then the step fails: nothing downstream runs
        yield from checks
        raise dg.Failure(
            description=f"corpus {corpus!r} fails the scope contract: "
            + "; ".join(report.failure_reasons),
            metadata=metadata,
        )
    context.log.info(report.summary())
    yield dg.Output(
        scope_gate(raw_traces, scoped),
        data_version=dg.DataVersion(report_version(report)),
        metadata=metadata,
    )
    # after the output, so they target this materialization (blocking-check automation reads that)
    yield from checks


def scope_gate(raw_traces: RawCorpus, scoped: ScopeInStore) -> ScopeGate:
    """What `trace_scope` hands on: where its report and kept parse are, and its verdict."""
    report = scoped.report
    return ScopeGate(
        corpus=raw_traces.corpus,
        digest=raw_traces.digest,
        report_key=scoped.report_key,
        policy=report.policy,
        passed=report.passed,
        excluded_traces=report.excluded_traces,
        summary=report.summary(),
        format=scoped.fmt.format,
        block_size=scoped.fmt.corpus_block_size,  # None: the traces state their own (Weka)
        parsed_key=scoped.parsed_key,
    )


def report_version(report: ScopeReport) -> str:
    """The data version of a report: its content."""
    body = orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()[:24]


def scope_metadata(store: WekaStore, raw_traces: RawCorpus, scoped: ScopeInStore) -> dict:
    """What the UI shows of a scope pass, passed or failed."""
    report = scoped.report
    attention = attention_rows(report)
    return {
        "verdict": dg.MetadataValue.md(verdict_markdown(report)),
        "dagster/row_count": report.traces,
        "passed": report.passed,
        "traces_needing_attention": len(attention),
        "summary": dg.MetadataValue.md(report_markdown(report)),
        "report": key_values({k: _plain(getattr(report, k)) for k in REPORT_FIGURES}),
        "needs_attention": table(attention),
        "per_trace": table(report.per_trace),
        "hard_errors": table(report.hard_errors[:200]),
        "corpus_digest": raw_traces.digest,
        "layout": report.layout,
        "decode_scopes": report.decode_scopes,
        "inferred_scope_traces": report.inferred_scope_traces,
        **({"corpus_wide": key_values(report.corpus_wide)} if report.corpus_wide else {}),
        "format": scoped.fmt.format,
        "report_path": dg.MetadataValue.path(store.url(scoped.report_key)),
        "snapshot_path": dg.MetadataValue.path(store.url(raw_traces.key)),
        # the parse the decodes read instead of the JSON (absent: a record did not parse)
        **(
            {"parsed_path": dg.MetadataValue.path(store.url(scoped.parsed_key))}
            if scoped.parsed_key
            else {}
        ),
    }


def build(manifest_version: int) -> list[dg.AssetsDefinition]:
    """`trace_scope` (no manifest version: it reads the bytes only)."""
    return [trace_scope]


def check_results(report: ScopeReport):
    """One check result per contract rule; hard rules are errors (warnings for reset/ambiguous
    traces under policy `exclude`, which drops them instead of failing the corpus)."""
    for rule in CONTRACT_RULES:
        passed, count, examples = rule.evaluate(report)
        hard = bool(rule.error_rules) or (rule.hard and report.policy == "fail")
        yield dg.AssetCheckResult(
            check_name=rule.name,
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR if hard else dg.AssetCheckSeverity.WARN,
            description=rule.description,
            metadata={
                "violations": count,
                "blocking": rule.hard,
                "policy": report.policy,
                "examples": table(examples) if examples else dg.MetadataValue.md("_none_"),
            },
        )


def _plain(v):
    return v.model_dump() if hasattr(v, "model_dump") else v
