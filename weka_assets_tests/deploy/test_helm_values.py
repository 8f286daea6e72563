"""deploy/values.yaml for the official dagster Helm chart, checked offline.

What this proves: every key path the file sets is one of the chart key paths recorded below, and
the environment it gives the code is what the code reads and accepts. What it does not prove: the
chart cannot be downloaded here and `helm` is not installed, so nothing was templated or installed,
and the paths below were read by hand from the chart's sources in dagster-io/dagster (through a
code search index, not a release tarball):

- helm/dagster/values.schema.json at commit bdb8547fab497826eeec292bc160b549a0a329ef (the chart's
  JSON schema, generated from helm/dagster/schema/; its release number is not recorded there:
  chart releases carry the dagster version, and which 1.x release that commit went into was not
  checked);
- helm/dagster/charts/dagster-user-deployments/values.schema.json at commit
  b8d7b2530862566f7ae5450a0e5387ab04c784c6 (the same UserDeployment keys);
- helm/dagster/templates/configmap-instance.yaml at commit 835892b45aaa0917bc97102968fe062155b64e19
  for the keys under dagsterDaemon.runRetries and .runMonitoring, which the schema leaves open
  (`type: object`) and the template reads as `.enabled`, `.maxRetries`.

Kubernetes types the schema delegates to (ResourceRequirements, EnvVar, SecretEnvSource) are
listed with their Kubernetes field names.
"""

import os
import re
from pathlib import Path

import pytest
import yaml

from weka_assets.executors import SETTINGS, config_errors, executor_from_env

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "deploy" / "values.yaml"

# Chart key paths verified against the sources above; `[]` is any list item.
_RESOURCES = [f"{kind}.{res}" for kind in ("requests", "limits") for res in ("cpu", "memory")]
_DEPLOYMENT = "dagster-user-deployments.deployments[]"
_K8S_LAUNCHER = "runLauncher.config.k8sRunLauncher"
# customRunCoordinator's module, class and config (passed as the class's config, as written):
# helm/dagster/templates/helpers/instance/_run-coordinator.tpl of the same chart
_CUSTOM = "dagsterDaemon.runCoordinator.config.customRunCoordinator"
VERIFIED_CHART_PATHS = {
    "global.postgresqlSecretName",
    "generatePostgresqlPasswordSecret",
    "postgresql.enabled",
    "postgresql.postgresqlHost",
    "postgresql.postgresqlUsername",
    "postgresql.postgresqlDatabase",
    "postgresql.postgresqlScheme",
    "postgresql.service.port",
    "dagsterWebserver.envSecrets[].name",
    "dagster-user-deployments.enabled",
    f"{_DEPLOYMENT}.name",
    f"{_DEPLOYMENT}.image.repository",
    f"{_DEPLOYMENT}.image.tag",
    f"{_DEPLOYMENT}.image.pullPolicy",
    f"{_DEPLOYMENT}.dagsterApiGrpcArgs[]",
    f"{_DEPLOYMENT}.port",
    f"{_DEPLOYMENT}.includeConfigInLaunchedRuns.enabled",
    f"{_DEPLOYMENT}.envSecrets[].name",
    f"{_DEPLOYMENT}.env[].name",
    f"{_DEPLOYMENT}.env[].value",
    *(f"{_DEPLOYMENT}.resources.{r}" for r in _RESOURCES),
    "runLauncher.type",
    f"{_K8S_LAUNCHER}.jobNamespace",
    f"{_K8S_LAUNCHER}.envSecrets[].name",
    *(f"{_K8S_LAUNCHER}.resources.{r}" for r in _RESOURCES),
    "computeLogManager.type",
    "computeLogManager.config.s3ComputeLogManager.bucket",
    "computeLogManager.config.s3ComputeLogManager.prefix",
    "computeLogManager.config.s3ComputeLogManager.endpointUrl",
    "computeLogManager.config.s3ComputeLogManager.useSsl",
    "computeLogManager.config.s3ComputeLogManager.region",
    "dagsterDaemon.envSecrets[].name",
    "dagsterDaemon.runCoordinator.enabled",
    "dagsterDaemon.runCoordinator.type",
    f"{_CUSTOM}.module",
    f"{_CUSTOM}.class",
    f"{_CUSTOM}.config.max_concurrent_runs",
    # CorpusRunCoordinator's own keys (QueuedRunCoordinator's, and backfill_interval_seconds)
    f"{_CUSTOM}.config.dequeue_interval_seconds",
    f"{_CUSTOM}.config.backfill_interval_seconds",
    f"{_CUSTOM}.config.tag_concurrency_limits[].key",
    f"{_CUSTOM}.config.tag_concurrency_limits[].value.applyLimitPerUniqueValue",
    f"{_CUSTOM}.config.tag_concurrency_limits[].limit",
    "dagsterDaemon.runRetries.enabled",
    "dagsterDaemon.runRetries.maxRetries",
    "dagsterDaemon.runMonitoring.enabled",
    "telemetry.enabled",
}
# Enumerations in the chart schema for the `type` keys set here.
CHART_ENUMS = {
    "runLauncher.type": {"CeleryK8sRunLauncher", "K8sRunLauncher", "CustomRunLauncher"},
    "computeLogManager.type": {
        "NoOpComputeLogManager",
        "AzureBlobComputeLogManager",
        "GCSComputeLogManager",
        "S3ComputeLogManager",
        "CustomComputeLogManager",
    },
    "dagsterDaemon.runCoordinator.type": {"QueuedRunCoordinator", "CustomRunCoordinator"},
}
# Variables the code reads through libraries rather than by name in weka_assets/.
READ_BY_LIBRARIES = {"HF_HUB_OFFLINE", "HF_HOME", "AWS_ENDPOINT_URL_S3"}


def leaf_paths(node, prefix: str = "") -> dict[str, object]:
    """{dotted path: value} for every leaf; list items appear as `[]`."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(leaf_paths(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(node, list):
        out = {}
        for item in node:
            for path, value in leaf_paths(item, f"{prefix}[]").items():
                out.setdefault(path, value)
        return out
    return {prefix: node}


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def deployment(values) -> dict:
    (only,) = values["dagster-user-deployments"]["deployments"]
    return only


def deployment_env(values) -> dict[str, str]:
    return {e["name"]: e["value"] for e in deployment(values)["env"]}


def test_values_set_only_verified_chart_keys(values):
    paths = leaf_paths(values)
    unknown = sorted(set(paths) - VERIFIED_CHART_PATHS)
    assert not unknown, f"not among the verified chart key paths: {unknown}"
    for path, allowed in CHART_ENUMS.items():
        assert paths[path] in allowed, path


def test_a_misspelt_key_would_be_caught():
    text = VALUES.read_text()
    for old, new in [("jobNamespace:", "jobNamespce:"), ("envSecrets:", "envSecret:")]:
        bad = yaml.safe_load(text.replace(old, new, 1))
        assert set(leaf_paths(bad)) - VERIFIED_CHART_PATHS, new


def test_the_user_code_deployment(values):
    d = deployment(values)
    assert d["dagsterApiGrpcArgs"] == ["-m", "weka_assets.definitions"]
    assert d["port"] == 3030
    assert d["includeConfigInLaunchedRuns"]["enabled"] is True
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert '-p", "3030"' in dockerfile and "weka_assets.definitions" in dockerfile


def test_the_environment_is_what_the_code_reads(values):
    env = deployment_env(values)
    assert env["WEKA_ASSETS_EXECUTOR"] == "k8s"
    assert env["WEKA_ASSETS_STORE"].startswith("s3://")
    source = "\n".join(p.read_text() for p in (ROOT / "weka_assets").rglob("*.py"))
    for name in env:
        read = name in SETTINGS or name in READ_BY_LIBRARIES or re.search(rf'"{name}"', source)
        assert read, f"{name} is passed by values.yaml but nothing in weka_assets reads it"


def test_the_environment_gives_a_valid_k8s_executor(values, monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in deployment_env(values).items():
        monkeypatch.setenv(name, value)
    executor = executor_from_env()
    assert executor.name == "k8s" and config_errors(executor) == []
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["jobNamespace"] == os.environ["WEKA_ASSETS_K8S_NAMESPACE"]


def test_runs_and_steps_get_the_same_secrets(values):
    names = {s["name"] for s in deployment(values)["envSecrets"]}
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert {s["name"] for s in launcher["envSecrets"]} == names
    assert {"weka-assets-aws", "weka-assets-hf"} <= names


def test_the_concurrency_limits_match_deploy_dagster_yaml(values):
    instance = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    custom = values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    coordinator = instance["run_coordinator"]
    assert (custom["module"], custom["class"]) == (coordinator["module"], coordinator["class"])
    queued = custom["config"]
    runs = instance["concurrency"]["runs"]
    assert queued["tag_concurrency_limits"] == runs["tag_concurrency_limits"]
    assert queued["max_concurrent_runs"] == runs["max_concurrent_runs"]
    cadence = ("dequeue_interval_seconds", "backfill_interval_seconds")
    assert {k: queued[k] for k in cadence} == {k: coordinator["config"][k] for k in cadence}
    retries = values["dagsterDaemon"]["runRetries"]
    assert retries == {
        "enabled": instance["run_retries"]["enabled"],
        "maxRetries": instance["run_retries"]["max_retries"],
    }


def test_no_secret_values(values):
    text = VALUES.read_text()
    paths = leaf_paths(values)
    assert not any(p.endswith("postgresqlPassword") for p in paths)
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "HF_TOKEN"):
        assert name not in deployment_env(values), name
    assert not re.search(r"hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}", text)
