"""How a run executes its steps, chosen by the environment: `executor_from_env()`.

`multiprocess` and `in_process` are Dagster's own; `celery` (dagster-celery: steps as Celery tasks
on worker machines) and `k8s` (dagster-k8s: one Kubernetes Job per step) come from the `deploy`
extra and are imported only when chosen. Every setting is read once, in `SETTINGS` order, and the
configured executor is checked against the executor's own config schema before it is returned,
so a bad value fails the code location's load with one line naming the variable.

`python -m weka_assets.executors celery-yaml` prints the `-y` file for `dagster-celery worker
start`, from the same settings, so workers and the runs that send them tasks agree.
"""

import os
import sys
from collections.abc import Callable

import dagster as dg

from weka_assets.env import SettingError, positive_int

# Every environment variable this module reads, with its one line of documentation
# (docs/operators-guide.md lists each; a test keeps them in step).
SETTINGS = {
    "WEKA_ASSETS_EXECUTOR": "how a run executes its steps: `multiprocess` (default: one process per step), `in_process` (one process; faster on a small machine), `celery` (Celery workers), `k8s` (one Kubernetes Job per step)",
    "WEKA_ASSETS_CELERY_BROKER": "`celery`: the broker URL, e.g. `redis://redis:6379/0`; required, no default",
    "WEKA_ASSETS_CELERY_BACKEND": "`celery`: the result backend URL, e.g. `redis://redis:6379/1`; required, no default",
    "WEKA_ASSETS_CELERY_VISIBILITY_TIMEOUT": "`celery`: seconds before Redis redelivers a task whose worker died without acknowledging it (default 600; longer than the longest step)",
    "WEKA_ASSETS_K8S_NAMESPACE": "`k8s`: the namespace of the step Jobs (default `dagster`)",
    "WEKA_ASSETS_K8S_MAX_CONCURRENT": "`k8s`: the most step pods one run runs at once (default: no limit)",
    "WEKA_ASSETS_K8S_STEP_CPU": "`k8s`: CPU requested by each step pod (default `1`)",
    "WEKA_ASSETS_K8S_STEP_MEMORY": "`k8s`: memory requested by, and the memory limit of, each step pod (default `4Gi`)",
}

DEFAULT_EXECUTOR = "multiprocess"
DEFAULT_VISIBILITY_TIMEOUT = 600
DEFAULT_K8S_NAMESPACE = "dagster"
DEFAULT_STEP_CPU = "1"
DEFAULT_STEP_MEMORY = "4Gi"


def _env(name: str, default: str = "") -> str:
    assert name in SETTINGS, name  # every variable is documented in SETTINGS
    return os.environ.get(name, "").strip() or default


def _required(name: str) -> str:
    value = _env(name)
    if not value:
        raise SettingError(f"{name} is not set: the celery executor needs it ({SETTINGS[name]})")
    return value


def _quantity(name: str, default: str) -> str:
    """A Kubernetes resource quantity (`1`, `500m`, `4Gi`), parsed as Kubernetes parses it."""
    from kubernetes.utils import parse_quantity

    value = _env(name, default)
    try:
        if parse_quantity(value) <= 0:
            raise ValueError("not positive")
    except ValueError:
        raise SettingError(
            f"{name}={value!r} is not a Kubernetes quantity (e.g. 1, 500m, 4Gi)"
        ) from None
    return value


def celery_config() -> dict:
    """The `celery_executor` config from the environment (`execution: config:` of a worker)."""
    visibility = positive_int("WEKA_ASSETS_CELERY_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT)
    return {
        "broker": _required("WEKA_ASSETS_CELERY_BROKER"),
        "backend": _required("WEKA_ASSETS_CELERY_BACKEND"),
        "config_source": {
            # A step whose worker dies is redelivered within the same run, not lost.
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "broker_transport_options": {
                "visibility_timeout": visibility,
                # Redis looks for such tasks every interval x throttle seconds (100 by
                # default): within a sixth of the timeout instead, at most every 10 s
                "unacked_restore_interval": min(10, max(1, visibility // 6)),
                "unacked_restore_throttle": 1,
            },
        },
    }


def k8s_config() -> dict:
    """The `k8s_job_executor` config from the environment."""
    memory = _quantity("WEKA_ASSETS_K8S_STEP_MEMORY", DEFAULT_STEP_MEMORY)
    config: dict = {
        "job_namespace": _env("WEKA_ASSETS_K8S_NAMESPACE", DEFAULT_K8S_NAMESPACE),
        "step_k8s_config": {
            "container_config": {
                "resources": {
                    "requests": {
                        "cpu": _quantity("WEKA_ASSETS_K8S_STEP_CPU", DEFAULT_STEP_CPU),
                        "memory": memory,
                    },
                    "limits": {"memory": memory},
                }
            }
        },
    }
    if _env("WEKA_ASSETS_K8S_MAX_CONCURRENT"):
        config["max_concurrent"] = positive_int("WEKA_ASSETS_K8S_MAX_CONCURRENT", 1)
    return config


def _celery() -> dg.ExecutorDefinition:
    from dagster_celery import celery_executor

    return celery_executor.configured(celery_config())


def _k8s() -> dg.ExecutorDefinition:
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(k8s_config())


# name -> the executor definition (configured from the environment where it takes config)
EXECUTORS: dict[str, Callable[[], dg.ExecutorDefinition]] = {
    "multiprocess": lambda: dg.multiprocess_executor,
    "in_process": lambda: dg.in_process_executor,
    "celery": _celery,
    "k8s": _k8s,
}


def config_errors(executor: dg.ExecutorDefinition) -> list[str]:
    """What is wrong with a configured executor's config, checked by Dagster itself: the config
    given to `.configured(...)` is processed against the wrapped executor's config schema, the
    way a launched run does it; for `k8s`, the container config is also checked against the
    Kubernetes container model (Dagster's schema leaves it open). Empty when it is valid."""
    schema = executor.config_schema
    resolve = getattr(schema, "resolve_config", None)
    if resolve is None:  # not configured: nothing to check
        return []
    result = resolve({})
    if not result.success:
        return [e.message for e in result.errors or []]
    if executor.name == "k8s":
        from dagster_k8s.job import UserDefinedDagsterK8sConfig

        try:
            config = (result.value or {}).get("config") or {}
            UserDefinedDagsterK8sConfig.from_dict(config.get("step_k8s_config", {}))
        except Exception as e:  # the kubernetes client raises a bare Exception on bad keys
            return [f"step_k8s_config: {e}"]
    return []


def executor_from_env() -> dg.ExecutorDefinition:
    """The executor named by $WEKA_ASSETS_EXECUTOR (see `SETTINGS`), configured and checked."""
    name = _env("WEKA_ASSETS_EXECUTOR", DEFAULT_EXECUTOR)
    if name not in EXECUTORS:
        raise SettingError(f"WEKA_ASSETS_EXECUTOR={name!r}: use one of {', '.join(EXECUTORS)}")
    executor = EXECUTORS[name]()
    errors = config_errors(executor)
    if errors:
        raise SettingError(f"WEKA_ASSETS_EXECUTOR={name!r}: invalid config: {'; '.join(errors)}")
    return executor


def celery_worker_yaml() -> str:
    """The `-y` file of `dagster-celery worker start`: the same broker, backend and options."""
    import yaml

    return yaml.safe_dump({"execution": {"config": celery_config()}}, sort_keys=False)


if __name__ == "__main__":  # python -m weka_assets.executors celery-yaml > celery.yaml
    if sys.argv[1:] != ["celery-yaml"]:
        sys.exit("usage: python -m weka_assets.executors celery-yaml")
    try:
        sys.stdout.write(celery_worker_yaml())
    except SettingError as e:
        sys.exit(f"weka_assets.executors: {e}")
