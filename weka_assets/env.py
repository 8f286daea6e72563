"""Settings read from the environment (limits, worker count): one parser, one clear error."""

import os
import socket

from weka_assets.errors import WekaError


class SettingError(WekaError, ValueError):
    """An environment setting holds a value it cannot take."""


def positive_int(name: str, default: int) -> int:
    """The integer in environment variable `name`, or `default` when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        raise SettingError(f"{name}={value!r} is not an integer") from None
    if n < 1:
        raise SettingError(f"{name}={value!r} must be 1 or more")
    return n


def host_name() -> str:
    """The machine this process reports in metadata and provenance: WEKA_ASSETS_HOST (set per
    worker where several share one host, as `scripts/cluster` does), else the hostname."""
    return os.environ.get("WEKA_ASSETS_HOST", "").strip() or socket.gethostname()
