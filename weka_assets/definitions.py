"""The code location: `defs` composes the assets, checks, resources, jobs and sensors."""

import dagster as dg

from weka_assets.defs.decoded import decoded_dataset
from weka_assets.defs.io_manager import DescriptorIOManager
from weka_assets.defs.jobs import decode_job, scope_job
from weka_assets.defs.raw import raw_traces
from weka_assets.defs.replay import replay_benchmark
from weka_assets.defs.resources import CorpusCatalog, DecodeOptions, WekaStore
from weka_assets.defs.scope import trace_scope
from weka_assets.defs.sensors import corpus_registry_sensor

ASSETS = [raw_traces, trace_scope, decoded_dataset, replay_benchmark]


def resources(base_path: str = "") -> dict:
    """Resources for one store folder (empty: $WEKA_ASSETS_STORE or ./.weka-store)."""
    return {
        "store": WekaStore(base_path=base_path),
        "catalog": CorpusCatalog(),
        "decode": DecodeOptions(),
        "descriptor_io_manager": DescriptorIOManager(base_path=base_path),
    }


defs = dg.Definitions(
    assets=ASSETS,
    jobs=[scope_job, decode_job],
    sensors=[corpus_registry_sensor],
    resources=resources(),
)
