#!/usr/bin/env bash
# Quick start, command 1: set up, then materialize the whole chain (raw_traces -> trace_scope
# -> decoded_dataset -> replay_benchmark) for the built-in `sample` corpus in a local Dagster
# instance (.dagster-home) with data under .weka-store, and print its report and hit rates.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
export DAGSTER_HOME="${DAGSTER_HOME:-$ROOT/.dagster-home}"
export WEKA_ASSETS_STORE="${WEKA_ASSETS_STORE:-$ROOT/.weka-store}"
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp "$ROOT/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
exec weka-assets materialize --corpus sample "$@"
