"""`trace_scope`: the corpus report, one asset check per contract rule, and the hard gate.

The gate raises inside the asset (a blocking check does not stop a backfill's downstream
partitions): a corpus that fails the contract is never materialized, so nothing is decoded.
The checks are emitted before that, so the UI shows per partition which rule failed.
"""

import hashlib

import dagster as dg
import orjson

from weka_assets.defs.automation import on_new_data
from weka_assets.defs.metadata import key_values, pct, table
from weka_assets.defs.outputs import RawCorpus, ScopeGate
from weka_assets.defs.partitions import corpus_partitions
from weka_assets.defs.resources import CorpusCatalog, WekaStore
from weka_assets.pipeline import scope_report
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
        f"- declared scope: {report.declared_scope}",
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


def attention_rows(report: ScopeReport) -> list[dict]:
    """Per-trace rows a person should look at: not perfect, holes, truncated, violations."""
    return [
        r
        for r in report.per_trace
        if r["verdict"] != "shared"
        or not r["perfect"]
        or r["holes"]
        or r["truncated_calls"]
        or r["position_violations"]
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
    report = scope_report(store.pull(raw_traces.key), catalog.policy(raw_traces.corpus))
    report_key = f"scope/{raw_traces.digest}-{report.policy}.json"
    store.write_bytes(
        report_key, orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
    )
    checks = list(check_results(report))
    metadata = {
        "summary": dg.MetadataValue.md(report_markdown(report)),
        "report": key_values({k: _plain(getattr(report, k)) for k in REPORT_FIGURES}),
        "per_trace": table(report.per_trace),
        "needs_attention": table(attention_rows(report)),
        "hard_errors": table(report.hard_errors[:200]),
        "report_path": dg.MetadataValue.path(store.url(report_key)),
        "dagster/row_count": report.traces,
        "passed": report.passed,
    }
    if not report.passed:
        # the checks are recorded for this partition, then the step fails: nothing downstream runs
        yield from checks
        raise dg.Failure(
            description=f"corpus {raw_traces.corpus!r} fails the scope contract: "
            + "; ".join(report.failure_reasons),
            metadata=metadata,
        )
    version = hashlib.sha256(
        orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()[:24]
    context.log.info(report.summary())
    yield dg.Output(
        ScopeGate(
            corpus=raw_traces.corpus,
            digest=raw_traces.digest,
            report_key=report_key,
            policy=report.policy,
            passed=report.passed,
            excluded_traces=report.excluded_traces,
            summary=report.summary(),
        ),
        data_version=dg.DataVersion(version),
        metadata=metadata,
    )
    # after the output, so they target this materialization (blocking-check automation reads that)
    yield from checks


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
                "examples": table(examples) if examples else dg.MetadataValue.md("_none_"),
            },
        )


def _plain(v):
    return v.model_dump() if hasattr(v, "model_dump") else v
