"""Stores the small pydantic descriptors the assets pass along, as JSON per asset partition.

The heavy data (raw snapshots, datasets, results) is content-addressed under the store and
written by the assets themselves; this IO manager only keeps the pointer to it.
"""

import importlib

import dagster as dg
import orjson
from pydantic import BaseModel, Field

from weka_assets.defs.resources import resolve_base_path
from weka_assets.pipeline import write_json


class DescriptorIOManager(dg.ConfigurableIOManager):
    base_path: str = Field(
        default="", description="Store folder; empty: $WEKA_ASSETS_STORE or ./.weka-store"
    )

    def _path(self, asset_key: dg.AssetKey, partition: str | None):
        name = (partition or "__all__").replace("|", "__")
        return (
            resolve_base_path(self.base_path)
            / "descriptors"
            / "/".join(asset_key.path)
            / f"{name}.json"
        )

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
        write_json(body, self._path(context.asset_key, self._partition(context)))

    def load_input(self, context: dg.InputContext) -> BaseModel:
        path = self._path(context.asset_key, self._partition(context))
        if not path.is_file():
            raise dg.Failure(
                f"{context.asset_key.to_user_string()} [{self._partition(context)}] has not been materialized ({path} missing)"
            )
        body = orjson.loads(path.read_bytes())
        module, _, name = body["model"].partition(":")
        if not module.startswith("weka_assets."):
            raise dg.Failure(f"{path}: refusing to load descriptor type {body['model']!r}")
        cls = getattr(importlib.import_module(module), name)
        return cls.model_validate(body["data"])
