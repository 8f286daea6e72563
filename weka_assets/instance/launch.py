"""Submit a corpus's whole chain to a running deployment through its webserver's GraphQL API.

The chain spans two partitions definitions (corpus, then corpus x tokenizer), so it is one
asset backfill: the deployment's daemon orders the runs and its executor (Celery workers, Kubernetes
jobs) runs the steps, never this process. The backfill carries the corpus's tag
(`weka-assets/corpus`), which every run of it inherits, whatever partitions the run covers: the
instance's per-corpus run limit reads it.
"""

from collections import Counter, defaultdict

from weka_assets.defs.jobs import CORPUS_ASSETS, DECODE_ASSETS
from weka_assets.defs.partitions import corpus_of, corpus_tags, validate_key
from weka_assets.instance.staleness import (
    LAUNCH,
    StalePartition,
    WebserverError,
    backfill_failed,
    graphql,
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
    data = graphql(url, REPOSITORIES, {})["repositoriesOrError"]
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


def backfill_params(parts: list[StalePartition], title: str, tags: dict[str, str]) -> dict:
    """`launchPartitionBackfill` parameters: exactly these (asset, partition) pairs; its runs
    inherit `tags`."""
    by_asset: dict[str, list[str]] = defaultdict(list)
    for p in parts:
        by_asset[p.asset].append(p.partition)
    return {
        "partitionsByAssets": [
            {
                "assetKey": {"path": asset.split("/")},
                "partitions": {"ranges": [{"start": k, "end": k} for k in keys]},
            }
            for asset, keys in by_asset.items()
        ],
        "title": title,
        "tags": [{"key": k, "value": v} for k, v in tags.items()],
    }


def chain_backfill(corpora: list[str], tokenizer: str) -> dict:
    """The parameters of the backfill of these corpora's chains. With one corpus (what
    `weka-assets launch` submits) it carries that corpus's tag, so all its runs (the
    corpus-only one too) are under the per-corpus run limit; a backfill of several corpora
    cannot name one corpus for all its runs."""
    parts = [p for corpus in corpora for p in chain_partitions(corpus, tokenizer)]
    tags = {
        "weka-assets/trigger": "launch",
        **(corpus_tags(corpora[0]) if len(corpora) == 1 else {}),
    }
    names = ", ".join(corpora)
    return backfill_params(parts, f"weka-assets launch: {names} x {tokenizer}", tags)


def backfills_by_corpus(parts: list[StalePartition], title: str, trigger: str) -> dict[str, dict]:
    """Per corpus, the parameters of one backfill of its (asset, partition) pairs, with the
    corpus's tag: what a backfill over several corpora (backfill-stale) must be split into for
    the per-corpus run limit to hold for all its runs."""
    by_corpus: dict[str, list[StalePartition]] = defaultdict(list)
    for p in parts:
        by_corpus[corpus_of(p.partition)].append(p)
    return {
        corpus: backfill_params(
            mine, f"{title} ({corpus})", {"weka-assets/trigger": trigger, **corpus_tags(corpus)}
        )
        for corpus, mine in sorted(by_corpus.items())
    }


def launch_params(url: str, params: dict) -> str:
    """Launch one backfill (backfill_params); its id."""
    data = graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    if data["__typename"] != "LaunchBackfillSuccess":
        raise WebserverError(f"{data['__typename']}: {data.get('message') or data}")
    return data["backfillId"]


def launch_by_corpus(
    url: str,
    parts: list[StalePartition],
    title: str = "weka-assets: backfill stale partitions",
    trigger: str = "backfill-stale",
) -> dict[str, str]:
    """One backfill per corpus of these pairs (backfills_by_corpus); corpus -> backfill id."""
    return {c: launch_params(url, p) for c, p in backfills_by_corpus(parts, title, trigger).items()}


def launch_chain(url: str, corpora: list[str], tokenizer: str) -> str:
    """Register the corpus partitions (those that are new) and launch one backfill of their
    chains (chain_backfill); its id."""
    params = chain_backfill(corpora, tokenizer)
    repo = _repository(url)
    for corpus in corpora:
        added = graphql(url, ADD_PARTITION, {"repo": repo, "key": corpus})["addDynamicPartition"]
        if added["__typename"] not in (
            "AddDynamicPartitionSuccess",
            "DuplicateDynamicPartitionError",
        ):
            raise WebserverError(f"cannot add corpus {corpus!r}: {added.get('message') or added}")
    return launch_params(url, params)


def backfill_summary(url: str, backfill_id: str) -> dict:
    """The backfill's runs (id, status) and how many steps each machine ran (from the `host`
    that every materialization records; a step counted once, whatever it materialized)."""
    data = graphql(url, RUNS, {"id": backfill_id})["partitionBackfillOrError"]
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
