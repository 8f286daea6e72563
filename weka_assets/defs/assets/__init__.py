"""The assets, one module per asset (or per family of like assets), in the order of the chain:
raw -> scope -> decoded -> replay, blast_radius, live, exports.

`MODULES` is the one list the rest is built from: each module has `build(manifest_version)`,
its assets (the manifest version injected, so tests can bump it), and an on-demand module its
`JOBS`. The definitions, the jobs (`defs/jobs.py`: the chain's two jobs from the assets'
partitions and automation) and the list `weka-assets launch` and `materialize` submit are all
derived from it, so a new asset is its module, one entry here, and its tests.
"""

import dagster as dg

from weka_assets.defs.assets import blast_radius, decoded, exports, live, raw, replay, scope
from weka_assets.versions import MANIFEST_VERSION

MODULES = (raw, scope, decoded, replay, blast_radius, live, exports)


def build_assets(manifest_version: int = MANIFEST_VERSION) -> list[dg.AssetsDefinition]:
    """The asset graph, in the chain's order; the manifest version is injected into every asset
    that depends on it."""
    return [a for module in MODULES for a in module.build(manifest_version)]


def on_demand_jobs() -> list:
    """The jobs of the on-demand assets (a live server, the exports), each declared beside them."""
    return [job for module in MODULES for job in getattr(module, "JOBS", ())]
