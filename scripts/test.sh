#!/usr/bin/env bash
# Quick start, command 2 (and CI): set up, lint, install the browser for the UI test, then run
# the whole test suite offline.
# `--fast` (first argument): the fast tier only, for development (README, "Tests"); the other
# arguments go to pytest as they are. Without it (CI) every tier runs: slow, ui, live, fuzz and
# cluster included.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${1:-}" = "--fast" ]; then
  shift
  set -- -m "not slow and not ui and not live and not fuzz and not cluster" "$@"
fi
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
ruff check weka_assets weka_assets_tests
ruff format --check weka_assets weka_assets_tests
# Debian's chromium for the UI browser test (weka_assets_tests/ui); when it cannot be installed
# the suite still runs and that test fails saying why.
bash "$ROOT/scripts/install-browser.sh" || echo "test.sh: chromium is not installed; the UI browser test will fail" >&2
# Two pytest workers (pytest-xdist): the deployment, browser and server tests mostly wait on
# servers and daemon ticks, so they overlap with the CPU-bound rest (whole suite: 12 min 42 s
# serial, about 9 min with two workers on two cores). One test alone: .venv/bin/python -m pytest
# --dist loadfile: a module's tests run on one worker, in order (the deployment test's phases
# share one deployment; xdist_group marks are not honoured with pytest 9.2, xdist issue 1386).
exec python -m pytest -n 2 --dist loadfile "$@"
