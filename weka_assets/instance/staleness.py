"""Stale partitions from Dagster's own staleness, and one backfill that rebuilds exactly them.

This is the deterministic path after a loader fix, independent of whether the automation
sensor was running when the manifest version changed: list what is stale for the instance at
$DAGSTER_HOME, then launch one backfill through the webserver's GraphQL API (visible in the
UI) or, with no webserver, run the same partitions in process.
"""

import time
from collections import defaultdict
from dataclasses import dataclass

import dagster as dg
import httpx
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from weka_assets.instance.materialize import StepOutcome, run_selection

DEFAULT_WEBSERVER = "http://127.0.0.1:3000"


@dataclass(frozen=True)
class StalePartition:
    asset: str
    partition: str
    causes: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"asset": self.asset, "partition": self.partition, "causes": list(self.causes)}


def _cause(c) -> str:
    where = c.key.asset_key.to_user_string() if hasattr(c.key, "asset_key") else str(c.key)
    part = getattr(c.key, "partition_key", None)
    return f"{where}{f' [{part}]' if part else ''}: {c.reason}"


def stale_partitions(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[StalePartition]:
    """Every materialized partition that Dagster considers stale, in graph order. The
    definitions are resolved against this instance's state storage: Dagster otherwise reads it
    from a process-wide context variable, which in a long-lived process can still name an
    instance already gone (seen once in CI: a test's materialization left it so)."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(instance.defs_state_storage):
        graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance, graph, view)
    out = []
    for key in graph.toposorted_asset_keys:
        if not graph.get(key).is_materializable:
            continue
        for partition in sorted(instance.get_materialized_partitions(key)):
            if resolver.get_status(key, partition) == StaleStatus.STALE:
                causes = tuple(_cause(c) for c in resolver.get_stale_causes(key, partition))
                out.append(StalePartition(key.to_user_string(), partition, causes))
    return out


# ---- in process ------------------------------------------------------------------------------


def backfill_in_process(
    defs: dg.Definitions, instance: dg.DagsterInstance, stale: list[StalePartition]
) -> list[StepOutcome]:
    """One run per partition key, covering that key's stale assets (upstream first)."""
    by_partition: dict[str, list[str]] = defaultdict(list)
    for s in stale:
        by_partition[s.partition].append(s.asset)
    outcomes = []
    for partition, assets in by_partition.items():
        key = partition
        if "|" in partition:
            corpus, tokenizer = partition.split("|")
            key = dg.MultiPartitionKey({"corpus": corpus, "tokenizer": tokenizer})
        outcomes.append(
            run_selection(
                defs, instance, assets, key, tags={"weka-assets/trigger": "backfill-stale"}
            )
        )
    return outcomes


# ---- through the webserver -------------------------------------------------------------------

LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
  }
}"""

STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status isAssetBackfill numPartitions
      assetBackfillData { assetBackfillStatuses {
        ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted
          numPartitionsMaterialized numPartitionsFailed numPartitionsInProgress } } } }
    ... on PythonError { message }
    ... on BackfillNotFoundError { message }
  }
}"""


class WebserverError(RuntimeError):
    """The webserver answered, but not with what we asked for."""


def graphql(url: str, query: str, variables: dict, timeout: float = 30) -> dict:
    resp = httpx.post(
        f"{url.rstrip('/')}/graphql", json={"query": query, "variables": variables}, timeout=timeout
    )
    resp.raise_for_status()
    body = resp.json()
    if body.get("errors"):
        raise WebserverError("; ".join(e.get("message", str(e)) for e in body["errors"]))
    return body["data"]


def webserver_reachable(url: str) -> bool:
    try:
        return httpx.get(f"{url.rstrip('/')}/server_info", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED", "FAILING"}


def wait_backfill(url: str, backfill_id: str, timeout: float = 3600, poll: float = 1.0) -> dict:
    """Poll until the backfill ends; returns its status and per-asset counts."""
    deadline = time.monotonic() + timeout
    while True:
        data = graphql(url, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if data["__typename"] != "PartitionBackfill":
            raise WebserverError(
                f"backfill {backfill_id}: {data.get('message') or data['__typename']}"
            )
        if data["status"] in TERMINAL and data["status"] != "FAILING":
            return data
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"backfill {backfill_id} still {data['status']} after {timeout:.0f}s"
            )
        time.sleep(poll)


def backfill_failed(status: dict) -> bool:
    if status["status"] not in ("COMPLETED", "COMPLETED_SUCCESS"):
        return True
    counts = (status.get("assetBackfillData") or {}).get("assetBackfillStatuses") or []
    return any(c.get("numPartitionsFailed") for c in counts)
