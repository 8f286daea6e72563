#!/usr/bin/env bash
# Quick start, command 2 (and CI): set up, lint, then run the whole test suite offline.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
ruff check weka_assets weka_assets_tests
ruff format --check weka_assets weka_assets_tests
exec python -m pytest "$@"
