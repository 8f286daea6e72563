"""The replay assets, each one core call then its output and metadata:

- `legacy_scope_replay`: the unbounded replay of `legacy_scope_dataset` (the historic
  per-session scope bug), reused by its decode key like any replay;
- `capacity_curve`: the shared-LRU KV-capacity sweep of `decoded_dataset`;
- `replay_benchmark`: the unbounded replay of `decoded_dataset` (theoretical and token-level
  hit rates and their fidelity proof), set beside the legacy replay and the capacity curve.
"""

import dagster as dg
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from weka_assets.atomic import atomic_write
from weka_assets.decoding.dataset import open_dataset
from weka_assets.defs.helpers import content_version, decoding_asset, markdown_image, pct, table
from weka_assets.defs.outputs import CapacityRef, DatasetRef, ReplayRef
from weka_assets.defs.resources import CorpusCatalog, ReplayOptions, WekaStore
from weka_assets.errors import WekaError
from weka_assets.pipeline import provenance, replay, write_json
from weka_assets.progress import dagster_progress
from weka_assets.replay.capacity import (
    KV_PRESETS,
    CapacityCurve,
    plot_png,
)
from weka_assets.replay.sizing import CapacityReport, sized_report
from weka_assets.replay.sizing import plot_png as sizing_plot_png
from weka_assets.replay.unbounded import CallFigures, ReplayResult, headline


def policy_comparison(correct: ReplayResult, legacy: ReplayResult) -> list[dict]:
    """Token-replay hit rate per role under the contract's `trace` scope and the legacy `session` one."""
    rows = []
    for role, ok, bad in [("all", correct, legacy)] + [
        (r, correct.per_role[r], legacy.per_role[r]) for r in correct.per_role
    ]:
        rows.append(
            {
                "role": role,
                "calls": ok.calls,
                "token_hit_rate_trace_scope": ok.token_replay_hit_rate,
                "token_hit_rate_session_scope": bad.token_replay_hit_rate,
                "hits_lost_by_session_scope": ok.token_hits - bad.token_hits,
                "calls_that_lose_hits": bad.fidelity_mismatched_calls,
            }
        )
    return rows


# per_call.parquet column -> CallFigures field
PER_CALL_FIGURES = {
    "ids": "total",
    "hits": "hits",
    "full_blocks": "full_total",
    "full_hits": "full_hits",
    "token_blocks": "token_total",
    "token_hits": "token_hits",
}


def _write_per_call(ds, cf, path) -> None:
    c = {k: ds.column(k) for k in ("trace", "conv", "request", "inner", "role")}
    per_call = pa.table(
        {
            "trace": c["trace"], "conv": c["conv"], "request": c["request"], "inner": c["inner"],
            "role": c["role"], "ids": cf.total, "hits": cf.hits, "full_blocks": cf.full_total,
            "full_hits": cf.full_hits, "token_blocks": cf.token_total, "token_hits": cf.token_hits,
        }
    )  # fmt: skip
    with atomic_write(path) as fh:
        pq.write_table(per_call, fh)


def capacity_figures(ds, options: ReplayOptions) -> tuple[CapacityCurve, bytes, int]:
    """The shared-LRU capacity sweep of a dataset (bounded by `capacity_max_blocks`), its plot,
    and how many traces it covers: `sized_report`, the command line's `replay --capacity`,
    with the LRU policy alone."""
    try:
        report, n = sized_report(
            ds,
            max_blocks=options.capacity_max_blocks,
            arrival_mode=options.arrival,
            time_scale=options.time_scale,
            kv_model=options.kv_model or None,
            kv_model_revision=options.kv_model_revision or None,
            points=options.points,
        )
    except ValueError as exc:
        raise dg.Failure(f"kv_model: {exc} (presets: {', '.join(KV_PRESETS)})") from None
    curve = report.curve("lru")
    # drawn here, once the sweep has freed its arrays: the run's process imports matplotlib
    # (0.3 s, about 30 MB) once for this plot and the blast radius's, where a worker of its
    # own imported it again for this one (0.5 s in all)
    return curve, plot_png(curve), n


def registry_entry(context, catalog: CorpusCatalog, corpus: str):
    """The corpus's registry entry, for its `sizing`; None (the resource's sizing, with a
    warning) when the registry no longer lists it or cannot be read: the dataset is there, and
    the sizing alone must not fail the curve."""
    try:
        return catalog.entry(corpus)
    except (dg.Failure, WekaError) as exc:
        context.log.warning(f"sizing of {corpus!r} from replay_options: {exc}")
        return None


def policy_report(
    ds, options: ReplayOptions, entry, corpus: str
) -> tuple[CapacityReport, int] | None:
    """Every configured policy at the same capacities, and the tiers and fleet of the corpus's
    sizing (registry entry, else `options`), over the leading traces up to
    `policy_max_blocks`; None when only lru is asked and no tiers or fleet."""
    sizing, model, revision = options.sizing(entry)
    if sizing.policies == ["lru"] and not sizing.tiers and sizing.replicas == 1:
        return None
    try:
        return sized_report(
            ds,
            max_blocks=options.policy_max_blocks,
            arrival_mode=options.arrival,
            time_scale=options.time_scale,
            kv_model=model,
            kv_model_revision=revision,
            points=options.points,
            options=sizing,
        )
    except ValueError as exc:
        raise dg.Failure(f"capacity sizing of corpus {corpus!r}: {exc}") from None


def policy_rows(report: CapacityReport) -> list[dict]:
    """A row per capacity, a hit-rate column per policy (hit blocks / full blocks, aggregate)."""
    rows = []
    for k, base in enumerate(report.curves[0].points):
        row = {
            "capacity_blocks": base.capacity_blocks
            if base.capacity_blocks is not None
            else "unbounded"
        }
        row["capacity_gib"] = round(base.capacity_bytes / 2**30, 3) if base.capacity_bytes else None
        for c in report.curves:
            row[f"{c.policy}_hit_rate"] = c.points[k].hit_rate
        rows.append(row)
    return rows


def tier_rows(tiers: dict) -> list[dict]:
    """A row per tier, then all tiers and the misses: hit rate, GiB served, read bandwidth."""
    return [
        {
            "tier": r["name"],
            "capacity_gib": round(r["capacity_bytes"] / 2**30, 3) if r["capacity_bytes"] else None,
            "hit_rate": r["rate"],
            "gib_served": round(r["bytes"] / 2**30, 3),
            "prefill_tokens_saved": r["tokens"],
            "read_gb_per_s_p50": None
            if r["bytes_per_s_p50"] is None
            else r["bytes_per_s_p50"] / 1e9,
            "read_gb_per_s_p99": None
            if r["bytes_per_s_p99"] is None
            else r["bytes_per_s_p99"] / 1e9,
            "read_gb_per_s_max": None
            if r["bytes_per_s_max"] is None
            else r["bytes_per_s_max"] / 1e9,
        }
        for r in [*tiers["tiers"], tiers["total"], tiers["miss"]]
    ]


def policy_metadata(store: WekaStore, ref: CapacityRef) -> dict:
    """What the UI shows of the policy sweep, tiers and fleet (none when not asked)."""
    if not ref.report_key:
        return {}
    report = CapacityReport.model_validate_json(store.read_bytes(ref.report_key))
    covered = f"{ref.report_traces} of {ref.dataset_traces} traces (policy_max_blocks)"
    out = {
        "capacity_policies": table(policy_rows(report)),
        "capacity_policies_traces": dg.MetadataValue.text(covered),
        "capacity_policy_plot": dg.MetadataValue.md(
            markdown_image(store.read_bytes(ref.policy_plot_key), "hit rate per eviction policy")
        ),
        "capacity_definitions": dg.MetadataValue.md(
            "\n".join(f"- {c.definition}" for c in report.curves)
        ),
    }
    if report.tiers is not None:
        out["capacity_tiers"] = table(tier_rows(report.tiers))
        out["capacity_tiers_definition"] = dg.MetadataValue.text(report.tiers["definition"])
    if report.fleet is not None:
        f = report.fleet
        out["capacity_fleet"] = table(
            [
                {
                    "capacity_blocks_per_replica": p["capacity_blocks"]
                    if p["capacity_blocks"] is not None
                    else "unbounded",
                    "fleet_hit_rate": p["hit_rate"],
                }
                for p in f["points"]
            ]
        )
        out["capacity_fleet_routing"] = dg.MetadataValue.text(
            f"{f['replicas']} replicas, {f['routing']} routing: {f['definition']}"
        )
    return out


def curve_rows(curve: CapacityCurve) -> list[dict]:
    return [
        {
            "capacity_blocks": p.capacity_blocks if p.capacity_blocks is not None else "unbounded",
            "capacity_gib": round(p.capacity_bytes / 2**30, 3) if p.capacity_bytes else None,
            "hit_rate": p.hit_rate,
            "parent_hit_rate": p.per_role["parent"].hit_rate,
            "subagent_hit_rate": p.per_role["subagent"].hit_rate,
        }
        for p in curve.points
    ]


def capacity_metadata(store: WekaStore, ref: CapacityRef, options_max: int | None = None) -> dict:
    """What the UI shows of a capacity curve (on `capacity_curve`, and again on
    `replay_benchmark`, whose page sums the chain up)."""
    curve = CapacityCurve.model_validate_json(store.read_bytes(ref.curve_key))
    png = store.read_bytes(ref.plot_key)
    covered = f"{ref.traces} of {ref.dataset_traces} traces"
    if ref.traces != ref.dataset_traces and options_max is not None:
        covered += f" (the first, up to capacity_max_blocks={options_max:,})"
    return {
        "capacity_curve": table(curve_rows(curve)),
        "capacity_curve_traces": dg.MetadataValue.text(covered),
        # a file of requests is one trace: its sweep may cover its leading requests only
        "capacity_curve_calls": dg.MetadataValue.int(curve.calls),
        "capacity_plot": dg.MetadataValue.md(
            markdown_image(png, "hit rate against KV-cache capacity")
        ),
        "capacity_plot_path": dg.MetadataValue.path(store.url(ref.plot_key)),
    }


def hit_rate_markdown(result: ReplayResult, legacy: ReplayResult) -> str:
    """The headline: token-replay hit rate per role, the fidelity proof, the legacy figure."""
    roles = ", ".join(
        f"{role} {pct(f.token_replay_hit_rate)}" for role, f in result.per_role.items()
    )
    fidelity = (
        "identical to the theoretical full-block hits call by call"
        if result.fidelity_mismatched_calls == 0
        else f"**{result.fidelity_mismatched_calls} calls differ** from the theoretical hits"
    )
    per_trace = (
        f"**Token-replay hit rate {pct(result.token_replay_hit_rate)}** over {result.calls:,} "
        f"calls ({roles}); theoretical {pct(result.theoretical_hit_rate)}. Token replay "
        f"{fidelity}. The legacy per-session scope would report "
        f"{pct(legacy.token_replay_hit_rate)}."
    )
    if result.namespace != "corpus":
        return per_trace
    name, value, definition = result.headline_figure()
    return (
        f"**{name.capitalize()} {pct(value)}** ({definition}): the hash ids share one namespace "
        f"for the whole corpus. Per trace (each trace against its own earlier calls only): "
        + per_trace.replace("**", "")
    )


def replay_in_store(context, store: WekaStore, dataset: DatasetRef, label: str = ""):
    """The unbounded replay of a stored dataset, kept at `replay/<decode key>/` (result.json,
    per_call.parquet) with its provenance beside: (result, dataset, folder, ReplayRef)."""
    ds = open_dataset(store.pull(dataset.key), verify=True)
    with dagster_progress(context, label=label) as progress:
        result, cf = replay(ds, progress)
    result_dir = f"replay/{dataset.decode_key}"
    out_dir = store.dir(result_dir)
    write_json(result, out_dir / "result.json")
    _write_per_call(ds, cf, out_dir / "per_call.parquet")
    store.push(f"{result_dir}/result.json")
    store.push(f"{result_dir}/per_call.parquet")
    # where and when, beside the results (their bytes depend on the dataset only)
    record_key = f"provenance/{result_dir}.json"
    store.write_bytes(record_key, orjson.dumps(provenance(out_dir), option=orjson.OPT_INDENT_2))
    ref = ReplayRef(
        corpus=dataset.corpus,
        tokenizer=dataset.tokenizer,
        decode_key=dataset.decode_key,
        result_key=f"{result_dir}/result.json",
        per_call_key=f"{result_dir}/per_call.parquet",
        theoretical_hit_rate=result.theoretical_hit_rate,
        token_replay_hit_rate=result.token_replay_hit_rate,
        fidelity_mismatched_calls=result.fidelity_mismatched_calls,
    )
    return result, ds, result_dir, ref


def stored_replay(store: WekaStore, decode_key: str) -> tuple[ReplayResult, CallFigures] | None:
    """The unbounded replay of a dataset as stored by `replay_in_store` (its result and per-call
    figures), or None when it was never replayed into this store."""
    result_dir = f"replay/{decode_key}"
    if not (
        store.exists(f"{result_dir}/result.json") and store.exists(f"{result_dir}/per_call.parquet")
    ):
        return None
    result = ReplayResult.model_validate_json(store.read_bytes(f"{result_dir}/result.json"))
    t = pq.read_table(store.pull(f"{result_dir}/per_call.parquet"))
    cols = {name: t.column(name).to_numpy().astype(np.int64) for name in PER_CALL_FIGURES}
    return result, CallFigures(**{field: cols[name] for name, field in PER_CALL_FIGURES.items()})


def _paths(store: WekaStore, result_dir: str) -> dict:
    return {
        "result_path": dg.MetadataValue.path(store.url(f"{result_dir}/result.json")),
        "per_call_path": dg.MetadataValue.path(store.url(f"{result_dir}/per_call.parquet")),
        "provenance_path": dg.MetadataValue.path(store.url(f"provenance/{result_dir}.json")),
    }


def build_legacy_scope_replay(manifest_version: int) -> dg.AssetsDefinition:
    @dg.asset(**decoding_asset(manifest_version, "replay", {"python"}))
    def legacy_scope_replay(
        context: dg.AssetExecutionContext, legacy_scope_dataset: DatasetRef, store: WekaStore
    ) -> dg.Output[ReplayRef]:
        """The unbounded replay of the corpus decoded with the legacy per-session scope: the
        hit rates the historic loader bug reported (its token replay loses the hits the bug
        destroyed; the calls that lose them are its fidelity mismatches)."""
        result, _, result_dir, ref = replay_in_store(
            context, store, legacy_scope_dataset, "legacy session scope: "
        )
        return dg.Output(
            ref,
            data_version=content_version(result.model_dump(mode="json", exclude={"dataset"})),
            metadata={
                "token_replay_hit_rate": result.token_replay_hit_rate,
                "theoretical_hit_rate": result.theoretical_hit_rate,
                "calls_that_lose_hits": result.fidelity_mismatched_calls,
                "dagster/row_count": result.calls,
                "per_role": table([{"role": r, **headline(f)} for r, f in result.per_role.items()]),
                "decode_key": legacy_scope_dataset.decode_key,
                "manifest_version": legacy_scope_dataset.manifest_version,
                "tokenizer": legacy_scope_dataset.tokenizer,
                **_paths(store, result_dir),
            },
        )

    return legacy_scope_replay


def build_capacity_curve(manifest_version: int) -> dg.AssetsDefinition:
    @dg.asset(name="capacity_curve", **decoding_asset(manifest_version, "replay", {"python"}))
    def capacity_curve_asset(
        context: dg.AssetExecutionContext,
        decoded_dataset: DatasetRef,
        store: WekaStore,
        replay_options: ReplayOptions,
        catalog: CorpusCatalog,
    ) -> dg.Output[CapacityRef]:
        """Hit rate against KV-cache capacity: the corpus's sessions interleaved on one server
        timeline through a shared LRU prefix cache of each size (the figure capacity planning
        needs), bounded by `capacity_max_blocks` block accesses."""
        ds = open_dataset(store.pull(decoded_dataset.key), verify=True)
        curve, png, covered = capacity_figures(ds, replay_options)
        entry = registry_entry(context, catalog, decoded_dataset.corpus)
        sized = policy_report(ds, replay_options, entry, decoded_dataset.corpus)
        result_dir = f"replay/{decoded_dataset.decode_key}"
        out_dir = store.dir(result_dir)
        write_json(curve, out_dir / "capacity_curve.json")
        with atomic_write(out_dir / "capacity.png") as fh:
            fh.write(png)
        store.push(f"{result_dir}/capacity_curve.json")
        store.push(f"{result_dir}/capacity.png")
        if sized is not None:
            write_json(sized[0], out_dir / "capacity_report.json")
            with atomic_write(out_dir / "capacity_policies.png") as fh:
                fh.write(sizing_plot_png(sized[0]))
            store.push(f"{result_dir}/capacity_report.json")
            store.push(f"{result_dir}/capacity_policies.png")
        ref = CapacityRef(
            corpus=decoded_dataset.corpus,
            tokenizer=decoded_dataset.tokenizer,
            decode_key=decoded_dataset.decode_key,
            curve_key=f"{result_dir}/capacity_curve.json",
            plot_key=f"{result_dir}/capacity.png",
            traces=covered,
            dataset_traces=len(ds.traces),
            report_key=f"{result_dir}/capacity_report.json" if sized else None,
            policy_plot_key=f"{result_dir}/capacity_policies.png" if sized else None,
            report_traces=sized[1] if sized else None,
        )
        return dg.Output(
            ref,
            data_version=content_version(curve.model_dump(mode="json")),
            metadata={
                **capacity_metadata(store, ref, replay_options.capacity_max_blocks),
                **policy_metadata(store, ref),
                "dagster/row_count": len(curve.points),
                "decode_key": decoded_dataset.decode_key,
                "manifest_version": decoded_dataset.manifest_version,
                "tokenizer": decoded_dataset.tokenizer,
                "curve_path": dg.MetadataValue.path(store.url(ref.curve_key)),
            },
        )

    return capacity_curve_asset


def build_replay_benchmark(manifest_version: int) -> dg.AssetsDefinition:
    """`replay_benchmark` for one manifest version (injected, so tests can bump it)."""

    @dg.asset(**decoding_asset(manifest_version, "replay", {"python"}))
    def replay_benchmark(
        context: dg.AssetExecutionContext,
        decoded_dataset: DatasetRef,
        legacy_scope_replay: ReplayRef,
        capacity_curve: CapacityRef,
        store: WekaStore,
        replay_options: ReplayOptions,
    ) -> dg.Output[ReplayRef]:
        """Theoretical and token-level prefix-cache hit rates (unbounded cache), per corpus, role
        and trace; the token replay's hits must equal the theoretical full-block hits call by
        call. Beside them, what the legacy per-session scope reported for the same corpus
        (`legacy_scope_replay`) and the KV-capacity curve (`capacity_curve`)."""
        result, ds, result_dir, ref = replay_in_store(context, store, decoded_dataset)
        legacy = ReplayResult.model_validate_json(store.read_bytes(legacy_scope_replay.result_key))
        comparison = policy_comparison(result, legacy)
        both = {"trace": result.model_dump(mode="json"), "session": legacy.model_dump(mode="json")}
        write_json(
            {**both, "rows": comparison}, store.dir(result_dir) / "scope_policy_comparison.json"
        )
        store.push(f"{result_dir}/scope_policy_comparison.json")
        context.log.info(
            f"theoretical {pct(result.theoretical_hit_rate)}, token replay {pct(result.token_replay_hit_rate)}, "
            f"{result.fidelity_mismatched_calls} fidelity mismatches over {result.calls} calls; "
            f"legacy session scope: {pct(legacy.token_replay_hit_rate)}"
        )
        roles = [
            {"role": "all", **headline(result)},
            *({"role": r, **headline(f)} for r, f in result.per_role.items()),
        ]
        return dg.Output(
            ref,
            data_version=content_version(result.model_dump(mode="json", exclude={"dataset"})),
            metadata={
                "hit_rates": dg.MetadataValue.md(hit_rate_markdown(result, legacy)),
                "headline_hit_rate": result.headline_figure()[1],
                "headline": f"{result.headline_figure()[0]}: {result.headline_figure()[2]}",
                "namespace": result.namespace,
                "theoretical_hit_rate": result.theoretical_hit_rate,
                "theoretical_full_block_hit_rate": result.theoretical_full_block_hit_rate,
                "token_replay_hit_rate": result.token_replay_hit_rate,
                "token_replay_hit_rate_legacy_session_scope": legacy.token_replay_hit_rate,
                # one seen-set for the whole corpus on its timeline (replay/corpus_wide.py)
                "corpus_wide_theoretical_hit_rate": result.corpus_wide_theoretical_hit_rate,
                "aiperf_analyze_trace_hit_rate": result.aiperf_analyze_trace_hit_rate,
                "fidelity_mismatched_calls": result.fidelity_mismatched_calls,
                "cross_trace_shared_blocks": result.cross_trace_shared_blocks,
                "dagster/row_count": result.calls,
                "blocks": result.blocks,
                "per_role": table(roles),
                "scope_policy_comparison": table(comparison),
                "per_trace": table(result.per_trace),
                **capacity_metadata(store, capacity_curve, replay_options.capacity_max_blocks),
                "decode_key": decoded_dataset.decode_key,
                "legacy_session_decode_key": legacy_scope_replay.decode_key,
                "manifest_version": decoded_dataset.manifest_version,
                "tokenizer": decoded_dataset.tokenizer,
                **_paths(store, result_dir),
            },
        )

    return replay_benchmark
