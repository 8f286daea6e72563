"""Submit a corpus's whole chain to a running deployment through its webserver's GraphQL API.

The chain spans two partitions definitions (corpus, then corpus x tokenizer), so it is one
asset backfill: the deployment's daemon orders the runs and its executor (Celery workers, Kubernetes
jobs) runs the steps, never this process. Backfill runs carry the per-dimension partition tags
(`dagster/partition/corpus`) that the instance's per-corpus concurrency limit reads.
"""

from collections import Counter

from weka_assets.defs.jobs import CORPUS_ASSETS, DECODE_ASSETS
from weka_assets.defs.partitions import validate_key
from weka_assets.instance.staleness import (
    StalePartition,
    WebserverError,
    _graphql,
    backfill_failed,
    launch_backfill,
    wait_backfill,
)

REPOSITORIES = """
{ repositoriesOrError { __typename
    ... on RepositoryConnection { nodes { name location { name } } }
    ... on PythonError { message } } }"""

ADD_PARTITION = """
mutation($repo: RepositorySelector!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: "corpus", partitionKey: $key) {
    __typename
    ... on AddDynamicPartitionSuccess { partitionKey }
    ... on DuplicateDynamicPartitionError { partitionName }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}"""

RUNS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status runs(limit: 1000) {
      runId status tags { key value }
      assetMaterializations { assetKey { path } partition stepKey
        metadataEntries { label ... on TextMetadataEntry { text } } } } }
    ... on PythonError { message }
    ... on BackfillNotFoundError { message }
  }
}"""


def _repository(url: str) -> dict:
    data = _graphql(url, REPOSITORIES, {})["repositoriesOrError"]
    nodes = data.get("nodes") or []
    if data["__typename"] != "RepositoryConnection" or not nodes:
        raise WebserverError(f"no code location is loaded at {url}: {data.get('message', '')}")
    for node in nodes:
        if node["location"]["name"] == "weka_assets":
            return {"repositoryName": node["name"], "repositoryLocationName": "weka_assets"}
    node = nodes[0]
    return {"repositoryName": node["name"], "repositoryLocationName": node["location"]["name"]}


def chain_partitions(corpus: str, tokenizer: str) -> list[StalePartition]:
    """Every (asset, partition) of one corpus's chain with one tokenizer."""
    validate_key(corpus)
    validate_key(tokenizer, "tokenizer")
    return [StalePartition(a, corpus, ()) for a in CORPUS_ASSETS] + [
        StalePartition(a, f"{corpus}|{tokenizer}", ()) for a in DECODE_ASSETS
    ]


def launch_chain(url: str, corpora: list[str], tokenizer: str) -> str:
    """Register the corpus partitions (those that are new) and launch one backfill of their
    chains; its id."""
    parts = [p for corpus in corpora for p in chain_partitions(corpus, tokenizer)]
    repo = _repository(url)
    for corpus in corpora:
        added = _graphql(url, ADD_PARTITION, {"repo": repo, "key": corpus})["addDynamicPartition"]
        if added["__typename"] not in (
            "AddDynamicPartitionSuccess",
            "DuplicateDynamicPartitionError",
        ):
            raise WebserverError(f"cannot add corpus {corpus!r}: {added.get('message') or added}")
    names = ", ".join(corpora)
    return launch_backfill(
        url, parts, title=f"weka-assets launch: {names} x {tokenizer}", trigger="launch"
    )


def backfill_summary(url: str, backfill_id: str) -> dict:
    """The backfill's runs (id, status) and how many steps each machine ran (from the `host`
    that every materialization records; a step counted once, whatever it materialized)."""
    data = _graphql(url, RUNS, {"id": backfill_id})["partitionBackfillOrError"]
    if data["__typename"] != "PartitionBackfill":
        raise WebserverError(f"backfill {backfill_id}: {data.get('message') or data['__typename']}")
    runs, steps = [], {}  # (run, step) -> the host that materialized its assets
    for run in sorted(data["runs"], key=lambda r: r["runId"]):
        tags = {t["key"]: t["value"] for t in run["tags"]}
        runs.append(
            {
                "run_id": run["runId"],
                "status": run["status"],
                "partition": tags.get("dagster/partition"),
                "retry_of": tags.get("dagster/parent_run_id"),
            }
        )
        for m in run["assetMaterializations"]:
            host = next((e["text"] for e in m["metadataEntries"] if e["label"] == "host"), None)
            # a step may materialize several assets (both datasets decode in one step)
            steps[(run["runId"], m["stepKey"])] = host or "unknown"
    hosts = Counter(steps.values())
    return {
        "backfill_id": backfill_id,
        "status": data["status"],
        "runs": runs,
        "steps_by_host": dict(sorted(hosts.items())),
    }


def all_succeeded(summary: dict) -> bool:
    """Every run succeeded, or failed and was retried by a run (run retries) that is itself
    judged the same way; and there was at least one run."""
    retried = {r["retry_of"] for r in summary["runs"] if r["retry_of"]}
    return bool(summary["runs"]) and all(
        r["status"] == "SUCCESS" or r["run_id"] in retried for r in summary["runs"]
    )


def launch(
    url: str, corpus: str, tokenizer: str, wait: bool = False, timeout: float = 3600
) -> tuple[dict, bool]:
    """Launch the chain; with `wait`, until the backfill ends. (summary, succeeded)."""
    backfill_id = launch_chain(url, [corpus], tokenizer)
    if not wait:
        return {
            "corpus": corpus,
            "tokenizer": tokenizer,
            **backfill_summary(url, backfill_id),
        }, True
    status = wait_backfill(url, backfill_id, timeout=timeout)
    summary = {"corpus": corpus, "tokenizer": tokenizer, **backfill_summary(url, backfill_id)}
    return summary, not backfill_failed(status) and all_succeeded(summary)
