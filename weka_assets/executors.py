"""How a run executes its steps, chosen by the environment: `executor_from_env()`.

`in_process` (the default) and `multiprocess` are Dagster's own. Every long step already runs
on every core through its own worker processes (`weka_assets.parallel`), so on one machine steps
in processes of their own only add process starts and memory: the whole chain of the 391-trace
corpus took 13.7 s in process (566 MB peak) against 23.5 s with two step processes at a time
(1,161 MB) on two cores. `celery` (dagster-celery: steps as Celery tasks
on worker machines) and `k8s` (dagster-k8s: one Kubernetes Job per step) come from the `deploy`
extra and are imported only when chosen. Every setting is defined in `weka_assets.env.SETTINGS`
(`SETTINGS` here: the executor's ones, with their docs) and read through `env.get`; the
configured executor is checked against the executor's own config schema before it is returned,
so a bad value fails the code location's load with one line naming the variable.

`python -m weka_assets.executors celery-yaml` prints the `-y` file for `dagster-celery worker
start`, from the same settings, so workers and the runs that send them tasks agree.
"""

import sys
from collections.abc import Callable

import dagster as dg

from weka_assets import env
from weka_assets.env import SettingError

# The environment variables this module reads, with their one line of documentation: the
# executor's part of the one table (weka_assets.env.SETTINGS)
SETTINGS = {
    name: setting.doc
    for name, setting in env.SETTINGS.items()
    if name == "WEKA_ASSETS_EXECUTOR"
    or name.startswith(("WEKA_ASSETS_CELERY_", "WEKA_ASSETS_K8S_"))
}


def _env(name: str):
    assert name in SETTINGS, name  # every variable is documented in SETTINGS
    return env.get(name)


def _required(name: str) -> str:
    value = _env(name)
    if not value:
        raise SettingError(f"{name} is not set: the celery executor needs it ({SETTINGS[name]})")
    return value


def celery_config() -> dict:
    """The `celery_executor` config from the environment (`execution: config:` of a worker)."""
    visibility = _env("WEKA_ASSETS_CELERY_VISIBILITY_TIMEOUT")
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
    memory = _env("WEKA_ASSETS_K8S_STEP_MEMORY")
    config: dict = {
        "job_namespace": _env("WEKA_ASSETS_K8S_NAMESPACE"),
        "step_k8s_config": {
            "container_config": {
                "resources": {
                    "requests": {
                        "cpu": _env("WEKA_ASSETS_K8S_STEP_CPU"),
                        "memory": memory,
                    },
                    "limits": {"memory": memory},
                }
            }
        },
    }
    max_concurrent = _env("WEKA_ASSETS_K8S_MAX_CONCURRENT")
    if max_concurrent is not None:
        config["max_concurrent"] = max_concurrent
    return config


def _celery() -> dg.ExecutorDefinition:
    from dagster_celery import celery_executor

    return celery_executor.configured(celery_config())


def _k8s() -> dg.ExecutorDefinition:
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(k8s_config())


# name -> the executor definition (configured from the environment where it takes config)
EXECUTORS: dict[str, Callable[[], dg.ExecutorDefinition]] = {
    # steps forked from a fork server that has imported the code location once, instead of
    # each step spawning a fresh interpreter that imports dagster and the definitions again
    # (the whole chain of the 391-trace corpus as a UI run: 26.2 s -> 20.8 s, two cores)
    "multiprocess": lambda: dg.multiprocess_executor.configured(
        {"start_method": {"forkserver": {}}}
    ),
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
    name = _env("WEKA_ASSETS_EXECUTOR")  # one of env.EXECUTORS, the names of EXECUTORS
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
