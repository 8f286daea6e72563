"""A snapshot of the asset graph: any change of lineage, partitions, code versions (the
manifest version), automation, checks or the step that computes each asset becomes a reviewed
diff of snapshots/asset_graph.json.

After an intended change: WEKA_UPDATE_SNAPSHOTS=1 bash scripts/test.sh -k snapshot, then
review and commit the JSON diff.
"""

import json
import os
from pathlib import Path

from weka_assets.definitions import build_defs, defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def _condition(c) -> dict | None:
    if c is None:
        return None
    return {
        "label": c.get_label(),
        "name": c.name,
        "children": [_condition(ch) for ch in c.children],
    }


def graph_snapshot(definitions) -> dict:
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": str(node.partitions_def),
            "code_version": node.code_version,
            # the step (op) that computes it: both datasets share `decoded_datasets`
            "step": definitions.resolve_assets_def(key).node_def.name,
            "group": node.group_name,
            "owners": list(node.owners),
            "kinds": sorted(node.kinds),
            "automation_condition": _condition(node.automation_condition),
            "checks": {
                ck.name: {"blocking": graph.get_check_spec(ck).blocking}
                for ck in sorted(node.check_keys, key=lambda k: k.name)
            },
        }
    return {
        "assets": assets,
        "jobs": sorted(j.name for j in definitions.jobs),
        "sensors": sorted(s.name for s in definitions.sensors),
        "schedules": sorted(s.name for s in definitions.schedules),
    }


def test_asset_graph_matches_snapshot():
    current = graph_snapshot(defs)
    if os.environ.get("WEKA_UPDATE_SNAPSHOTS") == "1" or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), (
        "asset graph changed: review and update the snapshot"
    )


def test_a_manifest_bump_changes_exactly_the_decoding_code_versions():
    before = graph_snapshot(build_defs(41))["assets"]
    after = graph_snapshot(build_defs(42))["assets"]
    changed = {k for k in before if before[k]["code_version"] != after[k]["code_version"]}
    assert changed == {k for k in before if k not in ("raw_traces", "trace_scope")}
    assert changed >= {"decoded_dataset", "replay_benchmark"}
    for k in before:
        assert {**before[k], "code_version": None} == {**after[k], "code_version": None}
