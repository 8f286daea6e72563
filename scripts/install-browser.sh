#!/usr/bin/env bash
# Debian's chromium for the browser test of the Dagster UI (weka_assets_tests/ui/), driven by
# the PyPI `playwright` package through its executable path. Never a browser download
# (`playwright install`): only the distribution's package. Idempotent: does nothing when
# /usr/bin/chromium exists. Needs root (CI runs as root) or sudo.
set -euo pipefail
CHROMIUM="${WEKA_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: $CHROMIUM is missing and apt-get is not available;" \
    "install Debian's chromium (or set WEKA_CHROMIUM) for the UI browser test" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "install-browser: not root and no sudo: cannot apt-get install chromium" >&2
    exit 1
  fi
fi
echo "install-browser: installing Debian's chromium (once, about 35 s)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
[ -x "$CHROMIUM" ] || { echo "install-browser: apt-get finished but $CHROMIUM is missing" >&2; exit 1; }
