"""`replay_benchmark`: prefix-cache hit rates of a decoded dataset, and their fidelity proof."""

import hashlib

import dagster as dg
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from weka_assets.decoding.dataset import open_dataset
from weka_assets.defs.decoded import MANIFEST_CODE_VERSION
from weka_assets.defs.metadata import pct, table
from weka_assets.defs.outputs import DatasetRef, ReplayRef
from weka_assets.defs.partitions import corpus_tokenizer_partitions
from weka_assets.defs.resources import WekaStore
from weka_assets.pipeline import replay, write_json


@dg.asset(
    partitions_def=corpus_tokenizer_partitions,
    code_version=MANIFEST_CODE_VERSION,
    group_name="replay",
    kinds={"python"},
    owners=["team:weka-assets"],
    io_manager_key="descriptor_io_manager",
)
def replay_benchmark(
    context: dg.AssetExecutionContext, decoded_dataset: DatasetRef, store: WekaStore
) -> dg.Output[ReplayRef]:
    """Theoretical and token-level prefix-cache hit rates (unbounded cache), per corpus, role
    and trace; the token replay's hits must equal the theoretical full-block hits call by call."""
    ds = open_dataset(decoded_dataset.path)
    result, cf = replay(ds)
    out_dir = store.dir("replay") / decoded_dataset.decode_key
    result_path = write_json(result, out_dir / "result.json")
    per_call = pa.table(
        {
            "trace": ds.calls["trace"],
            "conv": ds.calls["conv"],
            "request": ds.calls["request"],
            "inner": ds.calls["inner"],
            "role": ds.calls["role"],
            "ids": cf.total,
            "hits": cf.hits,
            "full_blocks": cf.full_total,
            "full_hits": cf.full_hits,
            "token_blocks": cf.token_total,
            "token_hits": cf.token_hits,
        }
    )
    per_call_path = out_dir / "per_call.parquet"
    tmp = out_dir / ".per_call.parquet.tmp"
    pq.write_table(per_call, tmp)
    tmp.replace(per_call_path)
    roles = [
        {"role": "all", **_rates(result)},
        *({"role": role, **_rates(f)} for role, f in result.per_role.items()),
    ]
    context.log.info(
        f"theoretical {pct(result.theoretical_hit_rate)}, token replay {pct(result.token_replay_hit_rate)}, "
        f"{result.fidelity_mismatched_calls} fidelity mismatches over {result.calls} calls"
    )
    figures = result.model_dump(mode="json", exclude={"dataset"})
    version = hashlib.sha256(orjson.dumps(figures, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
    return dg.Output(
        ReplayRef(
            corpus=decoded_dataset.corpus,
            tokenizer=decoded_dataset.tokenizer,
            decode_key=decoded_dataset.decode_key,
            result_path=str(result_path),
            per_call_path=str(per_call_path),
            theoretical_hit_rate=result.theoretical_hit_rate,
            token_replay_hit_rate=result.token_replay_hit_rate,
            fidelity_mismatched_calls=result.fidelity_mismatched_calls,
        ),
        data_version=dg.DataVersion(version),
        metadata={
            "theoretical_hit_rate": result.theoretical_hit_rate,
            "theoretical_full_block_hit_rate": result.theoretical_full_block_hit_rate,
            "token_replay_hit_rate": result.token_replay_hit_rate,
            "fidelity_mismatched_calls": result.fidelity_mismatched_calls,
            "cross_trace_shared_blocks": result.cross_trace_shared_blocks,
            "dagster/row_count": result.calls,
            "blocks": result.blocks,
            "per_role": table(roles),
            "per_trace": table(result.per_trace),
            "decode_key": decoded_dataset.decode_key,
            "manifest_version": decoded_dataset.manifest_version,
            "result_path": dg.MetadataValue.path(str(result_path)),
        },
    )


def _rates(f) -> dict:
    return {
        "calls": f.calls,
        "blocks": f.blocks,
        "theoretical_hit_rate": f.theoretical_hit_rate,
        "theoretical_full_block_hit_rate": f.theoretical_full_block_hit_rate,
        "token_replay_hit_rate": f.token_replay_hit_rate,
        "fidelity_mismatched_calls": f.fidelity_mismatched_calls,
    }
