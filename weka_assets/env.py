"""Every `WEKA_ASSETS_*` setting, defined once: name, default, parser, one line of doc.

`SETTINGS` is the table; `get(name)` reads the variable when it is called (never at import
time, so a test's `monkeypatch.setenv` takes effect), an unset or empty variable meaning its
default, and a bad value raises one `SettingError` line naming the variable. Nothing else in
the package reads a `WEKA_ASSETS_*` variable from the environment (a test checks it), and the
operator's guide's settings table (docs/operators-guide.md#settings) lists exactly this table,
names and defaults (a test checks that too). No Dagster here: the core reads it as well.
"""

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weka_assets.errors import WekaError


class SettingError(WekaError, ValueError):
    """An environment setting holds a value it cannot take."""


# ---- parsers: (variable name, its non-empty text) -> value, or one SettingError line


def text(name: str, value: str) -> str:
    return value


def positive_int(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise SettingError(f"{name}={value!r} is not an integer") from None
    if n < 1:
        raise SettingError(f"{name}={value!r} must be 1 or more")
    return n


def path(name: str, value: str) -> Path:
    return Path(value).expanduser()


def names(name: str, value: str) -> list[str]:
    """Comma-separated names, blanks dropped."""
    return [t.strip() for t in value.split(",") if t.strip()]


def one_of(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        if value not in choices:
            raise SettingError(f"{name}={value!r}: use one of {', '.join(choices)}")
        return value

    return parse


def quantity(name: str, value: str) -> str:
    """A Kubernetes resource quantity (`1`, `500m`, `4Gi`), parsed as Kubernetes parses it."""
    from kubernetes.utils import parse_quantity  # the deploy extra; only when it is read

    try:
        if parse_quantity(value) <= 0:
            raise ValueError("not positive")
    except ValueError:
        raise SettingError(
            f"{name}={value!r} is not a Kubernetes quantity (e.g. 1, 500m, 4Gi)"
        ) from None
    return value


# ---- the table


@dataclass(frozen=True)
class Setting:
    """One environment variable. `default`: the text an unset or empty variable stands for
    (parsed like a set value), a function computing the value when it is read, or None (no
    value). `shown`: how the operator's guide writes a default that is not plain text."""

    name: str
    default: str | Callable[[], Any] | None
    parser: Callable[[str, str], Any]
    doc: str
    shown: str = ""

    @property
    def default_text(self) -> str:
        """The default as the operator's guide's table writes it."""
        if self.shown:
            return self.shown
        assert isinstance(self.default, str), self.name
        return f"`{self.default}`"


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _home_cache() -> Path:
    return Path.home() / ".cache" / "weka-assets"


EXECUTORS = ("multiprocess", "in_process", "celery", "k8s")

_TABLE = [
    Setting("WEKA_ASSETS_STORE", ".weka-store", text,
            "the store: a folder (relative to the working directory) or `s3://bucket/prefix`",
            shown="`./.weka-store`"),
    Setting("WEKA_ASSETS_CACHE", _home_cache, path,
            "this machine's cache: `builtin:` and fetched corpora, filler arrays, the working "
            "copies of an S3 store", shown="`~/.cache/weka-assets`"),
    Setting("WEKA_ASSETS_REGISTRY", None, path, "the corpus registry YAML",
            shown="the repo's `corpora.yaml`"),
    Setting("WEKA_ASSETS_TOKENIZERS", "deepseek", names,
            "tokenizer partitions, comma-separated"),
    Setting("WEKA_ASSETS_WORKERS", _usable_cpus, positive_int,
            "worker processes of the long steps (read, decode, replay); 1 runs in process",
            shown="the CPUs this process may use"),
    Setting("WEKA_ASSETS_MAX_TRACE_BYTES", str(512 << 20), positive_int,
            "the most bytes of JSON one trace may hold (a longer one is a `trace_too_large` "
            "error)", shown="`536870912` (512 MiB)"),
    Setting("WEKA_ASSETS_MAX_IDS_PER_CALL", "4000000", positive_int,
            "the most hash ids one call may hold (more is a `too_many_ids` error)"),
    Setting("WEKA_ASSETS_MAX_PROMPT_TOKENS", str(4 << 20), positive_int,
            "the most prompt tokens one call may declare (`in`, Mooncake's `input_length`, or "
            "implied by its `hash_ids` x block size; more is a `prompt_too_long` error), and the "
            "largest block size (`block_size_too_large`)", shown="`4194304` (4 Mi)"),
    Setting("WEKA_ASSETS_MAX_OUTPUT_TOKENS", str(1 << 20), positive_int,
            "the most output tokens one call may declare (`out`, Mooncake's `output_length`; "
            "more is an `output_too_long` error)", shown="`1048576` (1 Mi)"),
    Setting("WEKA_ASSETS_AUTOMATION", "running", one_of("running", "stopped"),
            "`stopped`: `weka_automation_sensor` starts stopped (only what you launch runs)"),
    Setting("WEKA_ASSETS_REFRESH_CRON", "0 3 * * *", text,
            "when `corpus_refresh_schedule` re-fetches every corpus"),
    Setting("WEKA_ASSETS_HOST", socket.gethostname, text,
            "the machine name every materialization records as `host` metadata; "
            "`scripts/cluster` sets one per worker", shown="the hostname"),
    Setting("WEKA_ASSETS_WEBSERVER", None, text, "where `backfill-stale` launches its backfill",
            shown="http://127.0.0.1:3000 when it answers"),
    Setting("WEKA_ASSETS_EXECUTOR", "in_process", one_of(*EXECUTORS),
            "how a run executes its steps: `in_process` (one after another in the run's process, "
            "each step on every core through its own worker processes), `multiprocess` (a "
            "process per step, forked from a fork server that imported the code location "
            "once), `celery` (Celery workers), `k8s` (one Kubernetes Job per step); see "
            "[deployment.md](deployment.md)"),
    Setting("WEKA_ASSETS_CELERY_BROKER", None, text,
            "`celery`: the broker URL, e.g. `redis://redis:6379/0`", shown="none (required)"),
    Setting("WEKA_ASSETS_CELERY_BACKEND", None, text,
            "`celery`: the result backend URL, e.g. `redis://redis:6379/1`",
            shown="none (required)"),
    Setting("WEKA_ASSETS_CELERY_VISIBILITY_TIMEOUT", "600", positive_int,
            "`celery`: seconds before Redis redelivers a task whose worker died unacknowledged "
            "(make it longer than the longest step)"),
    Setting("WEKA_ASSETS_K8S_NAMESPACE", "dagster", text,
            "`k8s`: the namespace of the step Jobs"),
    Setting("WEKA_ASSETS_K8S_MAX_CONCURRENT", None, positive_int,
            "`k8s`: the most step pods one run runs at once", shown="no limit"),
    Setting("WEKA_ASSETS_K8S_STEP_CPU", "1", quantity, "`k8s`: CPU requested by each step pod"),
    Setting("WEKA_ASSETS_K8S_STEP_MEMORY", "4Gi", quantity,
            "`k8s`: memory requested by, and the memory limit of, each step pod"),
]  # fmt: skip
SETTINGS: dict[str, Setting] = {s.name: s for s in _TABLE}


def get(name: str) -> Any:
    """The value of setting `name` now: parsed from the environment, else its default."""
    setting = SETTINGS[name]  # a KeyError: not a setting (add it to the table)
    raw = os.environ.get(name, "").strip()
    if raw:
        return setting.parser(name, raw)
    default = setting.default
    if isinstance(default, str):
        return setting.parser(name, default)
    return default() if callable(default) else default


# ---- typed accessors of the settings read in several places


def cache_dir() -> Path:
    """This machine's cache ($WEKA_ASSETS_CACHE, else ~/.cache/weka-assets)."""
    return get("WEKA_ASSETS_CACHE")


def store_base() -> str:
    """The store base ($WEKA_ASSETS_STORE, else .weka-store) as given, not yet resolved."""
    return get("WEKA_ASSETS_STORE")


def host_name() -> str:
    """The machine this process reports in metadata and provenance: WEKA_ASSETS_HOST (set per
    worker where several share one host, as `scripts/cluster` does), else the hostname."""
    return get("WEKA_ASSETS_HOST")


def settings_table() -> str:
    """The operator's guide's settings table (docs/operators-guide.md#settings), in markdown:
    `python -m weka_assets.env` prints it."""
    rows = ["| variable | default | effect |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {s.default_text} | {s.doc} |" for s in SETTINGS.values()]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
