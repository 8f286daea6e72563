"""The code location: `defs` composes the assets, checks, resources, jobs and sensors."""

import gc

import dagster as dg

from weka_assets.defs.assets import build_assets
from weka_assets.defs.automation import automation_sensor
from weka_assets.defs.io_manager import DescriptorIOManager
from weka_assets.defs.jobs import build_jobs
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
    assets = build_assets(manifest_version)  # the one list (defs/assets); jobs derive from it
    return dg.Definitions(
        assets=assets,
        jobs=build_jobs(assets),
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
