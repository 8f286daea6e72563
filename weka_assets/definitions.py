"""The code location: `defs` composes the assets, checks, resources, jobs and sensors."""

import gc

import dagster as dg

from weka_assets.defs.assets.blast_radius import build_manifest_blast_radius
from weka_assets.defs.assets.decoded import build_decoded_datasets
from weka_assets.defs.assets.exports import build_export_assets
from weka_assets.defs.assets.live import build_live_replay
from weka_assets.defs.assets.raw import raw_traces
from weka_assets.defs.assets.replay import (
    build_capacity_curve,
    build_legacy_scope_replay,
    build_replay_benchmark,
)
from weka_assets.defs.assets.scope import trace_scope
from weka_assets.defs.automation import automation_sensor
from weka_assets.defs.io_manager import DescriptorIOManager
from weka_assets.defs.jobs import (
    decode_job,
    export_job,
    live_replay_job,
    scope_job,
    text_export_job,
)
from weka_assets.defs.resources import (
    CorpusCatalog,
    DecodeOptions,
    LiveServer,
    ReplayOptions,
    WekaStore,
)
from weka_assets.defs.sensors import corpus_discovery_sensor, corpus_refresh_schedule
from weka_assets.executors import executor_from_env
from weka_assets.versions import MANIFEST_VERSION


def build_assets(manifest_version: int = MANIFEST_VERSION) -> list[dg.AssetsDefinition]:
    """The asset graph; the manifest version is injected into every asset that depends on it."""
    return [
        raw_traces,
        trace_scope,
        build_decoded_datasets(manifest_version),
        build_legacy_scope_replay(manifest_version),
        build_capacity_curve(manifest_version),
        build_replay_benchmark(manifest_version),
        build_manifest_blast_radius(manifest_version),
        build_live_replay(manifest_version),
        *build_export_assets(manifest_version),
    ]


def resources(base_path: str = "") -> dict:
    """Resources for one store folder (empty: $WEKA_ASSETS_STORE or ./.weka-store)."""
    return resources_for(WekaStore(base_path=base_path))


def resources_for(store: WekaStore, catalog: CorpusCatalog | None = None) -> dict:
    """Resources around one store (local folder or S3), sharing it with the IO manager."""
    return {
        "store": store,
        "catalog": catalog or CorpusCatalog(),
        "decode": DecodeOptions(),
        "descriptor_io_manager": DescriptorIOManager(store=store),
        "live_server": LiveServer(),
        "replay_options": ReplayOptions(),
    }


def build_defs(
    manifest_version: int = MANIFEST_VERSION,
    resource_defs: dict | None = None,
    executor: dg.ExecutorDefinition | None = None,
) -> dg.Definitions:
    return dg.Definitions(
        assets=build_assets(manifest_version),
        jobs=[scope_job, decode_job, live_replay_job, export_job, text_export_job],
        sensors=[corpus_discovery_sensor, automation_sensor],
        schedules=[corpus_refresh_schedule],
        resources=resource_defs if resource_defs is not None else resources(),
        executor=executor if executor is not None else executor_from_env(),
    )


defs = build_defs()

# The code location lives as long as the process that loaded it (a run's, a step's, the code
# server's), and each full pass of the cyclic garbage collector would walk all of it again:
# dagster's objects and ours, about 140,000, 0.12-0.18 s a pass in a run of the graph. Frozen
# (Python's permanent generation), they are left out of every later pass.
gc.freeze()
