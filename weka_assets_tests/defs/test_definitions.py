"""The code location loads, statically and through Dagster's own command."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from weka_assets.definitions import defs
from weka_assets.versions import MANIFEST_VERSION

ROOT = Path(__file__).resolve().parents[2]
ASSETS = {
    "raw_traces",
    "trace_scope",
    "decoded_dataset",
    "legacy_scope_dataset",
    "legacy_scope_replay",
    "capacity_curve",
    "replay_benchmark",
    "manifest_blast_radius",
    "live_replay",
    "mooncake_export",
    "aiperf_payload_export",
    "text_export",
}


def test_definitions_are_loadable():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == ASSETS
    assert graph.get(dg.AssetKey("decoded_dataset")).code_version == f"manifest-v{MANIFEST_VERSION}"
    assert (
        graph.get(dg.AssetKey("replay_benchmark")).code_version == f"manifest-v{MANIFEST_VERSION}"
    )
    assert {k.to_user_string() for k in graph.get(dg.AssetKey("decoded_dataset")).parent_keys} == {
        "raw_traces",
        "trace_scope",
    }


def test_every_asset_and_check_has_a_description():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description, key
    checks = list(graph.asset_check_keys)
    assert len(checks) >= 8
    for ck in checks:
        assert graph.get_check_spec(ck).description, ck


def test_dagster_definitions_validate_passes(tmp_path):
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-w",
            str(ROOT / "workspace.yaml"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "passed validation" in proc.stderr + proc.stdout


def test_the_loaded_code_location_is_left_out_of_garbage_collection():
    """Loading the code location freezes what it built (gc.freeze): full collections during a
    run then never walk the code location's objects again."""
    code = (
        "import gc\n"
        "import weka_assets.definitions as d\n"
        "print(gc.get_freeze_count(), any(o is d.defs for o in gc.get_objects()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    frozen, defs_collectable = out.stdout.split()
    assert int(frozen) > 50_000 and defs_collectable == "False", out.stdout
