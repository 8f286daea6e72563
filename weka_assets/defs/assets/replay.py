"""The replay assets, each one core call (`weka_assets.store_chain`) then its output and
metadata:

- `legacy_scope_replay`: the unbounded replay of `legacy_scope_dataset` (the historic
  per-session scope bug), reused by its decode key like any replay;
- `capacity_curve`: the shared-LRU KV-capacity sweep of `decoded_dataset`;
- `replay_benchmark`: the unbounded replay of `decoded_dataset` (theoretical and token-level
  hit rates and their fidelity proof), set beside the legacy replay and the capacity curve.
"""

import dagster as dg

from weka_assets.defs.helpers import content_version, decoding_asset, markdown_image, pct, table
from weka_assets.defs.outputs import CapacityRef, DatasetRef, ReplayRef
from weka_assets.defs.resources import CorpusCatalog, ReplayOptions, WekaStore
from weka_assets.errors import WekaError
from weka_assets.progress import dagster_progress
from weka_assets.replay.capacity import CapacityCurve
from weka_assets.replay.sizing import CapacityReport
from weka_assets.replay.unbounded import ReplayResult, headline
from weka_assets.store_chain import (
    ReplayInStore,
    SizingError,
    capacity_in_store,
    compare_scope_policies_in_store,
    replay_in_store,
)


def registry_entry(context, catalog: CorpusCatalog, corpus: str):
    """The corpus's registry entry, for its `sizing`; None (the resource's sizing, with a
    warning) when the registry no longer lists it or cannot be read: the dataset is there, and
    the sizing alone must not fail the curve."""
    try:
        return catalog.entry(corpus)
    except (dg.Failure, WekaError) as exc:
        context.log.warning(f"sizing of {corpus!r} from replay_options: {exc}")
        return None


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


def replay_ref(dataset: DatasetRef, replayed: ReplayInStore) -> ReplayRef:
    result = replayed.result
    return ReplayRef(
        corpus=dataset.corpus,
        tokenizer=dataset.tokenizer,
        decode_key=dataset.decode_key,
        result_key=replayed.result_key,
        per_call_key=replayed.per_call_key,
        theoretical_hit_rate=result.theoretical_hit_rate,
        token_replay_hit_rate=result.token_replay_hit_rate,
        fidelity_mismatched_calls=result.fidelity_mismatched_calls,
    )


def _paths(store: WekaStore, replayed: ReplayInStore) -> dict:
    return {
        "result_path": dg.MetadataValue.path(store.url(replayed.result_key)),
        "per_call_path": dg.MetadataValue.path(store.url(replayed.per_call_key)),
        "provenance_path": dg.MetadataValue.path(store.url(replayed.provenance_key)),
    }


def _dataset_metadata(dataset: DatasetRef) -> dict:
    return {
        "decode_key": dataset.decode_key,
        "manifest_version": dataset.manifest_version,
        "tokenizer": dataset.tokenizer,
    }


def build_legacy_scope_replay(manifest_version: int) -> dg.AssetsDefinition:
    @dg.asset(**decoding_asset(manifest_version, "replay", {"python"}))
    def legacy_scope_replay(
        context: dg.AssetExecutionContext, legacy_scope_dataset: DatasetRef, store: WekaStore
    ) -> dg.Output[ReplayRef]:
        """The unbounded replay of the corpus decoded with the legacy per-session scope: the
        hit rates the historic loader bug reported (its token replay loses the hits the bug
        destroyed; the calls that lose them are its fidelity mismatches)."""
        dataset = legacy_scope_dataset
        progress = dagster_progress(context, label="legacy session scope: ")
        replayed = replay_in_store(store, dataset.key, dataset.decode_key, progress)
        result = replayed.result
        return dg.Output(
            replay_ref(dataset, replayed),
            data_version=content_version(result.model_dump(mode="json", exclude={"dataset"})),
            metadata={
                "token_replay_hit_rate": result.token_replay_hit_rate,
                "theoretical_hit_rate": result.theoretical_hit_rate,
                "calls_that_lose_hits": result.fidelity_mismatched_calls,
                "dagster/row_count": result.calls,
                "per_role": table([{"role": r, **headline(f)} for r, f in result.per_role.items()]),
                **_dataset_metadata(dataset),
                **_paths(store, replayed),
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
        ds = decoded_dataset
        entry = registry_entry(context, catalog, ds.corpus)
        try:
            cap = capacity_in_store(store, ds.key, ds.decode_key, replay_options, entry, ds.corpus)
        except SizingError as exc:
            raise dg.Failure(str(exc)) from None
        ref = CapacityRef(
            corpus=ds.corpus,
            tokenizer=ds.tokenizer,
            decode_key=ds.decode_key,
            curve_key=cap.curve_key,
            plot_key=cap.plot_key,
            traces=cap.traces,
            dataset_traces=cap.dataset_traces,
            report_key=cap.report_key,
            policy_plot_key=cap.policy_plot_key,
            report_traces=cap.report_traces,
        )
        return dg.Output(
            ref,
            data_version=content_version(cap.curve.model_dump(mode="json")),
            metadata={
                **capacity_metadata(store, ref, replay_options.capacity_max_blocks),
                **policy_metadata(store, ref),
                "dagster/row_count": len(cap.curve.points),
                **_dataset_metadata(ds),
                "curve_path": dg.MetadataValue.path(store.url(ref.curve_key)),
            },
        )

    return capacity_curve_asset


def benchmark_metadata(
    store: WekaStore, replayed: ReplayInStore, legacy: ReplayResult, comparison: list[dict],
    legacy_ref: ReplayRef, capacity: CapacityRef, options: ReplayOptions,
) -> dict:  # fmt: skip
    """What the UI shows on `replay_benchmark`: the page that sums the chain up."""
    result = replayed.result
    name, value, definition = result.headline_figure()
    roles = [
        {"role": "all", **headline(result)},
        *({"role": r, **headline(f)} for r, f in result.per_role.items()),
    ]
    return {
        "hit_rates": dg.MetadataValue.md(hit_rate_markdown(result, legacy)),
        "headline_hit_rate": value,
        "headline": f"{name}: {definition}",
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
        **capacity_metadata(store, capacity, options.capacity_max_blocks),
        "decode_key": replayed.decode_key,
        "legacy_session_decode_key": legacy_ref.decode_key,
    }


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
        ds = decoded_dataset
        replayed = replay_in_store(store, ds.key, ds.decode_key, dagster_progress(context))
        legacy, comparison = compare_scope_policies_in_store(
            store, replayed, legacy_scope_replay.result_key
        )
        result = replayed.result
        context.log.info(
            f"theoretical {pct(result.theoretical_hit_rate)}, token replay {pct(result.token_replay_hit_rate)}, "
            f"{result.fidelity_mismatched_calls} fidelity mismatches over {result.calls} calls; "
            f"legacy session scope: {pct(legacy.token_replay_hit_rate)}"
        )
        metadata = benchmark_metadata(
            store, replayed, legacy, comparison, legacy_scope_replay, capacity_curve,
            replay_options,
        )  # fmt: skip
        return dg.Output(
            replay_ref(ds, replayed),
            data_version=content_version(result.model_dump(mode="json", exclude={"dataset"})),
            metadata={
                **metadata,
                "manifest_version": ds.manifest_version,
                "tokenizer": ds.tokenizer,
                **_paths(store, replayed),
            },
        )

    return replay_benchmark


def build(manifest_version: int) -> list[dg.AssetsDefinition]:
    """The replay assets, in the chain's order."""
    return [
        build_legacy_scope_replay(manifest_version),
        build_capacity_curve(manifest_version),
        build_replay_benchmark(manifest_version),
    ]
