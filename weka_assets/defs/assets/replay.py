"""`replay_benchmark`: prefix-cache hit rates of a decoded dataset, their fidelity proof, and
what the historic per-session scope bug would have reported for the same corpus."""

import hashlib

import dagster as dg
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from weka_assets.decoding.dataset import open_dataset
from weka_assets.defs.helpers import decode_in_store, decoding_asset, markdown_image, pct, table
from weka_assets.defs.outputs import DatasetRef, RawCorpus, ReplayRef, ScopeGate
from weka_assets.defs.resources import DecodeOptions, ReplayOptions, WekaStore
from weka_assets.pipeline import provenance, replay, write_json
from weka_assets.progress import dagster_progress
from weka_assets.replay.capacity import (
    KV_PRESETS,
    CapacityCurve,
    capacity_curve,
    default_capacities,
    plot_png,
)
from weka_assets.replay.schedule import arrival_for
from weka_assets.replay.unbounded import HitFigures, ReplayResult
from weka_assets.traces.scope import ScopeReport


def _rates(f: HitFigures) -> dict:
    return {
        "calls": f.calls,
        "blocks": f.blocks,
        "theoretical_hit_rate": f.theoretical_hit_rate,
        "theoretical_full_block_hit_rate": f.theoretical_full_block_hit_rate,
        "token_replay_hit_rate": f.token_replay_hit_rate,
        "fidelity_mismatched_calls": f.fidelity_mismatched_calls,
    }


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


def _write_per_call(ds, cf, path) -> None:
    c = {k: ds.column(k) for k in ("trace", "conv", "request", "inner", "role")}
    per_call = pa.table(
        {
            "trace": c["trace"], "conv": c["conv"], "request": c["request"], "inner": c["inner"],
            "role": c["role"], "ids": cf.total, "hits": cf.hits, "full_blocks": cf.full_total,
            "full_hits": cf.full_hits, "token_blocks": cf.token_total, "token_hits": cf.token_hits,
        }
    )  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(per_call, tmp)
    tmp.replace(path)


def capacity_traces(ds, max_blocks: int) -> int:
    """How many leading traces fit in `max_blocks` block accesses (at least one; 0: all)."""
    if max_blocks <= 0:
        return len(ds.traces)
    blocks = ds.column("tokens_in") // ds.column("block_size")
    per_trace = np.array([int(blocks[sl].sum()) for sl in ds.trace_slices()], dtype=np.int64)
    return max(1, int(np.searchsorted(np.cumsum(per_trace), max_blocks, side="right")))


def capacity_figures(ds, options: ReplayOptions) -> tuple[CapacityCurve, bytes, int]:
    """The shared-LRU capacity sweep of a dataset (bounded by `capacity_max_blocks`), its plot,
    and how many traces it covers."""
    geometry = KV_PRESETS.get(options.kv_model)
    if options.kv_model and geometry is None:
        raise dg.Failure(f"unknown kv_model {options.kv_model!r} (known: {', '.join(KV_PRESETS)})")
    n = capacity_traces(ds, options.capacity_max_blocks)
    part = ds.head(n)
    curve = capacity_curve(
        part,
        default_capacities(part, options.points),
        arrival_for(part, options.arrival),
        options.time_scale,
        geometry,
    )
    return curve, plot_png(curve), n


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
    return (
        f"**Token-replay hit rate {pct(result.token_replay_hit_rate)}** over {result.calls:,} "
        f"calls ({roles}); theoretical {pct(result.theoretical_hit_rate)}. Token replay "
        f"{fidelity}. The legacy per-session scope would report "
        f"{pct(legacy.token_replay_hit_rate)}."
    )


def build_replay_benchmark(manifest_version: int) -> dg.AssetsDefinition:
    """`replay_benchmark` for one manifest version (injected, so tests can bump it)."""

    @dg.asset(**decoding_asset(manifest_version, "replay", {"python"}, corpus_inputs=True))
    def replay_benchmark(
        context: dg.AssetExecutionContext,
        decoded_dataset: DatasetRef,
        raw_traces: RawCorpus,
        trace_scope: ScopeGate,
        store: WekaStore,
        decode: DecodeOptions,
        replay_options: ReplayOptions,
    ) -> dg.Output[ReplayRef]:
        """Theoretical and token-level prefix-cache hit rates (unbounded cache), per corpus, role
        and trace; the token replay's hits must equal the theoretical full-block hits call by
        call. Beside them, the same corpus decoded with the legacy per-session scope: the hit
        rate the historic loader bug reported."""
        ds = open_dataset(store.pull(decoded_dataset.key), verify=True)
        with dagster_progress(context) as progress:
            result, cf = replay(ds, progress)
        result_dir = f"replay/{decoded_dataset.decode_key}"
        out_dir = store.dir(result_dir)
        write_json(result, out_dir / "result.json")
        _write_per_call(ds, cf, out_dir / "per_call.parquet")

        report = ScopeReport.model_validate_json(store.read_bytes(trace_scope.report_key))
        with dagster_progress(context, label="legacy session scope: ") as progress:
            progress.expect("decode", report.traces)
            legacy_out = decode_in_store(
                store,
                store.pull(raw_traces.key),
                decode.settings(decoded_dataset.tokenizer, scope_policy="session"),
                report,
                manifest_version,
                measure_drift=False,
                progress=progress,
                digest=raw_traces.digest,
            )
            legacy, _ = replay(legacy_out.path, progress)
        comparison = policy_comparison(result, legacy)
        curve, png, curve_traces = capacity_figures(ds, replay_options)
        write_json(curve, out_dir / "capacity_curve.json")
        (out_dir / "capacity.png").write_bytes(png)
        both = {"trace": result.model_dump(mode="json"), "session": legacy.model_dump(mode="json")}
        write_json({**both, "rows": comparison}, out_dir / "scope_policy_comparison.json")
        store.push(result_dir)
        # where and when, beside the results (their bytes depend on the dataset only)
        record_key = f"provenance/{result_dir}.json"
        store.write_bytes(record_key, orjson.dumps(provenance(out_dir), option=orjson.OPT_INDENT_2))

        context.log.info(
            f"theoretical {pct(result.theoretical_hit_rate)}, token replay {pct(result.token_replay_hit_rate)}, "
            f"{result.fidelity_mismatched_calls} fidelity mismatches over {result.calls} calls; "
            f"legacy session scope: {pct(legacy.token_replay_hit_rate)}"
        )
        figures = result.model_dump(mode="json", exclude={"dataset"})
        version = hashlib.sha256(orjson.dumps(figures, option=orjson.OPT_SORT_KEYS)).hexdigest()[
            :24
        ]
        roles = [
            {"role": "all", **_rates(result)},
            *({"role": r, **_rates(f)} for r, f in result.per_role.items()),
        ]
        return dg.Output(
            ReplayRef(
                corpus=decoded_dataset.corpus,
                tokenizer=decoded_dataset.tokenizer,
                decode_key=decoded_dataset.decode_key,
                result_key=f"{result_dir}/result.json",
                per_call_key=f"{result_dir}/per_call.parquet",
                theoretical_hit_rate=result.theoretical_hit_rate,
                token_replay_hit_rate=result.token_replay_hit_rate,
                fidelity_mismatched_calls=result.fidelity_mismatched_calls,
            ),
            data_version=dg.DataVersion(version),
            metadata={
                "hit_rates": dg.MetadataValue.md(hit_rate_markdown(result, legacy)),
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
                "capacity_curve": table(curve_rows(curve)),
                "capacity_curve_traces": dg.MetadataValue.text(
                    f"{curve_traces} of {len(ds.traces)} traces"
                    + (
                        ""
                        if curve_traces == len(ds.traces)
                        else f" (the first, up to capacity_max_blocks={replay_options.capacity_max_blocks:,})"
                    )
                ),
                "capacity_plot": dg.MetadataValue.md(
                    markdown_image(png, "hit rate against KV-cache capacity")
                ),
                "decode_key": decoded_dataset.decode_key,
                "legacy_session_decode_key": legacy_out.key,
                "manifest_version": decoded_dataset.manifest_version,
                "tokenizer": decoded_dataset.tokenizer,
                "result_path": dg.MetadataValue.path(store.url(f"{result_dir}/result.json")),
                "per_call_path": dg.MetadataValue.path(store.url(f"{result_dir}/per_call.parquet")),
                "capacity_plot_path": dg.MetadataValue.path(
                    store.url(f"{result_dir}/capacity.png")
                ),
                "provenance_path": dg.MetadataValue.path(store.url(record_key)),
            },
        )

    return replay_benchmark
