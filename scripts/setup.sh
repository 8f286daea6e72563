#!/usr/bin/env bash
# Create .venv and install the project with its dev extras (idempotent: skipped when
# pyproject.toml has not changed since the last install). Sourced by the other scripts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.weka-assets-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[dev,deploy]"
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# The only network is the package registry: tokenizers and datasets come from local files.
export HF_HUB_OFFLINE=1
