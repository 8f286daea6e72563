"""The executor chosen by $WEKA_ASSETS_EXECUTOR: each one loads, and its configured config is
valid against the executor's own config schema (checked by Dagster, so a bad value fails)."""

import re
from pathlib import Path

import dagster as dg
import pytest

from weka_assets.definitions import build_defs
from weka_assets.env import SettingError
from weka_assets.executors import SETTINGS, config_errors, executor_from_env

ROOT = Path(__file__).resolve().parents[2]

CELERY_ENV = {
    "WEKA_ASSETS_CELERY_BROKER": "redis://redis:6379/0",
    "WEKA_ASSETS_CELERY_BACKEND": "redis://redis:6379/1",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WEKA_ASSETS_STORE", str(tmp_path / "store"))


def loaded(monkeypatch, **env) -> dg.ExecutorDefinition:
    """The executor of the code location built with this environment (loaded, validated)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    defs = build_defs(executor=executor_from_env())
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("decode_job")
    return job.executor_def


def resolved(executor: dg.ExecutorDefinition) -> dict:
    """The config a run of this executor receives, processed by Dagster against the wrapped
    executor's schema (as a launched run does); fails the test when it is invalid."""
    result = executor.config_schema.resolve_config({})
    assert result.success, [e.message for e in result.errors]
    return result.value["config"]


@pytest.mark.parametrize("name", ["multiprocess", "in_process"])
def test_dagsters_own_executors(monkeypatch, name):
    executor = loaded(monkeypatch, WEKA_ASSETS_EXECUTOR=name)
    assert executor.name == name
    assert config_errors(executor) == []


def test_in_process_is_the_default(monkeypatch):
    # each step already runs on every core (weka_assets.parallel): a run of the whole chain on
    # two cores took 13.7 s in process against 23.5 s with two step processes at a time
    assert loaded(monkeypatch).name == "in_process"


def test_multiprocess_forks_steps_from_a_fork_server(monkeypatch):
    executor = loaded(monkeypatch, WEKA_ASSETS_EXECUTOR="multiprocess")
    # the code location is imported once, by the fork server, not by every step
    assert resolved(executor)["start_method"] == {"forkserver": {}}


def test_celery(monkeypatch):
    executor = loaded(
        monkeypatch,
        WEKA_ASSETS_EXECUTOR="celery",
        WEKA_ASSETS_CELERY_VISIBILITY_TIMEOUT="900",
        **CELERY_ENV,
    )
    assert executor.name == "celery"
    config = resolved(executor)
    assert config["broker"] == "redis://redis:6379/0"
    assert config["backend"] == "redis://redis:6379/1"
    assert config["config_source"] == {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "broker_transport_options": {
            "visibility_timeout": 900,
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        },
    }


def test_celery_visibility_timeout_defaults_to_600(monkeypatch):
    config = resolved(loaded(monkeypatch, WEKA_ASSETS_EXECUTOR="celery", **CELERY_ENV))
    assert config["config_source"]["broker_transport_options"] == {
        "visibility_timeout": 600,
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
    }


def test_a_short_visibility_timeout_is_looked_for_sooner(monkeypatch):
    config = resolved(
        loaded(
            monkeypatch,
            WEKA_ASSETS_EXECUTOR="celery",
            WEKA_ASSETS_CELERY_VISIBILITY_TIMEOUT="30",
            **CELERY_ENV,
        )
    )
    options = config["config_source"]["broker_transport_options"]
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] == 5


def test_k8s(monkeypatch):
    executor = loaded(
        monkeypatch,
        WEKA_ASSETS_EXECUTOR="k8s",
        WEKA_ASSETS_K8S_NAMESPACE="weka",
        WEKA_ASSETS_K8S_MAX_CONCURRENT="4",
        WEKA_ASSETS_K8S_STEP_CPU="500m",
        WEKA_ASSETS_K8S_STEP_MEMORY="8Gi",
    )
    assert executor.name == "k8s"
    config = resolved(executor)
    assert config["job_namespace"] == "weka"
    assert config["max_concurrent"] == 4
    assert config["step_k8s_config"]["container_config"]["resources"] == {
        "requests": {"cpu": "500m", "memory": "8Gi"},
        "limits": {"memory": "8Gi"},
    }


def test_k8s_defaults(monkeypatch):
    config = resolved(loaded(monkeypatch, WEKA_ASSETS_EXECUTOR="k8s"))
    assert config["job_namespace"] == "dagster"
    assert "max_concurrent" not in config
    assert config["step_k8s_config"]["container_config"]["resources"] == {
        "requests": {"cpu": "1", "memory": "4Gi"},
        "limits": {"memory": "4Gi"},
    }


# ---- the check fails for bad values --------------------------------------------------------


def test_the_schema_check_rejects_a_bad_key_and_a_bad_type():
    from dagster_celery import celery_executor
    from dagster_k8s import k8s_job_executor

    bad_key = celery_executor.configured({"brokr": "redis://redis:6379/0"})
    assert not bad_key.config_schema.resolve_config({}).success
    assert any("brokr" in e for e in config_errors(bad_key))
    bad_type = k8s_job_executor.configured({"max_concurrent": "abc"})
    assert any("max_concurrent" in e for e in config_errors(bad_type))
    # Dagster leaves container_config open; the Kubernetes container model does not
    bad_container = k8s_job_executor.configured(
        {"step_k8s_config": {"container_config": {"resourcez": {}}}}
    )
    assert bad_key.config_schema.resolve_config({}).success is False
    assert bad_container.config_schema.resolve_config({}).success is True
    assert any("resourcez" in e for e in config_errors(bad_container))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WEKA_ASSETS_EXECUTOR": "threads"}, "WEKA_ASSETS_EXECUTOR='threads': use one of"),
        ({"WEKA_ASSETS_EXECUTOR": "celery"}, "WEKA_ASSETS_CELERY_BROKER is not set"),
        (
            {"WEKA_ASSETS_EXECUTOR": "celery", "WEKA_ASSETS_CELERY_BROKER": "redis://r:6379/0"},
            "WEKA_ASSETS_CELERY_BACKEND is not set",
        ),
        (
            {"WEKA_ASSETS_EXECUTOR": "celery", "WEKA_ASSETS_CELERY_VISIBILITY_TIMEOUT": "abc"}
            | CELERY_ENV,
            "WEKA_ASSETS_CELERY_VISIBILITY_TIMEOUT='abc' is not an integer",
        ),
        (
            {"WEKA_ASSETS_EXECUTOR": "k8s", "WEKA_ASSETS_K8S_MAX_CONCURRENT": "0"},
            "WEKA_ASSETS_K8S_MAX_CONCURRENT='0' must be 1 or more",
        ),
        (
            {"WEKA_ASSETS_EXECUTOR": "k8s", "WEKA_ASSETS_K8S_STEP_MEMORY": "4GB"},
            "WEKA_ASSETS_K8S_STEP_MEMORY='4GB' is not a Kubernetes quantity",
        ),
        (
            {"WEKA_ASSETS_EXECUTOR": "k8s", "WEKA_ASSETS_K8S_STEP_CPU": "-1"},
            "WEKA_ASSETS_K8S_STEP_CPU='-1' is not a Kubernetes quantity",
        ),
    ],
)
def test_a_bad_setting_fails_with_one_line_naming_it(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingError, match=re.escape(message)) as info:
        build_defs(resource_defs={})
    assert "\n" not in str(info.value)


def test_the_celery_worker_file_matches_the_executor(monkeypatch, tmp_path):
    """`python -m weka_assets.executors celery-yaml` writes what dagster-celery's worker reads."""
    from dagster_celery.cli import get_validated_config

    from weka_assets.executors import celery_config, celery_worker_yaml

    for name, value in CELERY_ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "celery.yaml"
    path.write_text(celery_worker_yaml())
    worker = get_validated_config(str(path))  # dagster-celery's own parser and schema check
    assert worker["broker"] == celery_config()["broker"]
    assert worker["config_source"] == celery_config()["config_source"]


def test_every_setting_is_in_the_operators_guide():
    guide = (ROOT / "docs" / "operators-guide.md").read_text()
    for name in SETTINGS:
        assert f"`{name}" in guide, name
