"""Stores the small pydantic descriptors the assets pass along, as JSON per asset partition.

The heavy data (raw snapshots, datasets, results) is content-addressed in the store and
written by the assets themselves; this IO manager only keeps the pointer to it, in the same
store (a local folder or S3).
"""

import ctypes
import importlib

import dagster as dg
import orjson
import pyarrow as pa
from pydantic import BaseModel

from weka_assets import store_keys
from weka_assets.defs.resources import WekaStore
from weka_assets.env import host_name
from weka_assets.store import StoreError


class DescriptorIOManager(dg.ConfigurableIOManager):
    store: WekaStore

    @staticmethod
    def _key(asset_key: dg.AssetKey, partition: str | None) -> str:
        return store_keys.descriptor(asset_key.path, partition)

    @staticmethod
    def _partition(context) -> str | None:
        return str(context.asset_partition_key) if context.has_asset_partitions else None

    def handle_output(self, context: dg.OutputContext, obj: BaseModel) -> None:
        if not isinstance(obj, BaseModel):
            raise TypeError(
                f"{context.asset_key}: expected a pydantic descriptor, got {type(obj).__name__}"
            )
        cls = type(obj)
        body = {
            "model": f"{cls.__module__}:{cls.__qualname__}",
            "data": obj.model_dump(mode="json"),
        }
        self.store.write_bytes(
            self._key(context.asset_key, self._partition(context)), orjson.dumps(body)
        )
        # which machine ran the step: `weka-assets launch` counts steps per host from it
        context.add_output_metadata({"host": host_name()})
        release_freed_memory()

    def load_input(self, context: dg.InputContext) -> BaseModel:
        partition = self._partition(context)
        where = self._key(context.asset_key, partition)
        try:
            body = orjson.loads(self.store.read_bytes(where))
        except (StoreError, FileNotFoundError):
            raise dg.Failure(
                f"{context.asset_key.to_user_string()} [{partition}] has not been materialized ({self.store.url(where)} missing)"
            ) from None
        module, _, name = body["model"].partition(":")
        if not module.startswith("weka_assets."):
            raise dg.Failure(f"{where}: refusing to load descriptor type {body['model']!r}")
        cls = getattr(importlib.import_module(module), name)
        return cls.model_validate(body["data"])


def release_freed_memory() -> None:
    """Give back what the step freed: pyarrow's pool and glibc's heap keep freed memory for
    reuse, and a run that executes every step in one process (in process, or one Celery
    worker) would carry one step's peak into the next."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
