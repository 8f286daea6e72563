"""One module names every store key (`weka_assets.store_keys`): its keys are the layout the
README states, and no module of the Dagster layer, the command line or the instance tools
spells one itself (read from the source with `ast`)."""

import ast
import re
from pathlib import Path

import pytest

from weka_assets import store_keys as keys

PACKAGE = Path(__file__).resolve().parents[1] / "weka_assets"
# the modules that must call store_keys rather than spell a key
CHECKED = sorted(
    [
        *(PACKAGE / "defs").rglob("*.py"),
        *(PACKAGE / "instance").rglob("*.py"),
        PACKAGE / "cli.py",
        PACKAGE / "store_chain.py",
    ]
)
PREFIXES = (
    keys.RAW, keys.PARSED, keys.SCOPE, keys.DATASETS, keys.PROVENANCE, keys.REPLAY,
    keys.BLAST_RADIUS, keys.LIVE, keys.EXPORTS, keys.DESCRIPTORS,
)  # fmt: skip
KEY_LITERAL = re.compile(rf"^({'|'.join(PREFIXES)})/")
FILE_NAMES = {
    keys.RESULT, keys.PER_CALL, keys.CAPACITY_CURVE, keys.CAPACITY_PLOT, keys.CAPACITY_REPORT,
    keys.CAPACITY_POLICY_PLOT, keys.SCOPE_POLICY_COMPARISON, "manifest.json",
}  # fmt: skip
STORE_METHODS = {
    "dir", "local", "url", "pull", "push", "publish", "exists", "read_bytes", "write_bytes",
    "manifests",
}  # fmt: skip


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the string constants that are docstrings (they may describe the layout)."""
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                out.add(id(body[0].value))
    return out


def key_literals(source: str, name: str = "<string>") -> list[tuple[int, str]]:
    """(line, text) of every store key a module spells: a string (or an f-string's leading
    part) starting with a store prefix and '/', a store file name, or a literal handed to a
    store method (`store.dir("raw")`)."""
    tree = ast.parse(source, name)
    skip = docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if KEY_LITERAL.match(node.value) or node.value in FILE_NAMES:
                found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and KEY_LITERAL.match(str(first.value)):
                found.append((node.lineno, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr in STORE_METHODS)
                or (isinstance(node.func, ast.Name) and node.func.id == "key")  # store.key
            )
            and node.args
            and (
                isinstance(node.args[0], ast.JoinedStr)
                or (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))
            )
        ):
            found.append((node.lineno, ast.unparse(node)))
    return found


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_spells_a_store_key(path):
    found = key_literals(path.read_text(), str(path))
    assert found == [], "\n".join(
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text} (name it in weka_assets/store_keys.py)"
        for line, text in found
    )


def test_the_check_sees_a_spelt_key():
    assert key_literals('key = f"replay/{decode_key}"')
    assert key_literals('store.dir("raw")')
    assert key_literals('path = out / "result.json"')
    assert key_literals('store.pull(f"{prefix}/x")')
    assert key_literals('key("descriptors", *path, name)')
    assert not key_literals('"""datasets/<decode key>/ in a docstring"""')
    assert not key_literals('group_name = "replay"')
    assert not key_literals("store.pull(store_keys.dataset(key))")


def test_the_keys_are_the_stated_layout():
    """README, Storage: raw/<digest>/, scope/<digest>-<policy>.json, parsed/<digest>.parsed,
    datasets/<decode key>/, replay/<decode key>/, blast_radius/, descriptors/, provenance/."""
    assert keys.raw_snapshot("d") == "raw/d"
    assert keys.format_tag("weka", None) == ""
    assert keys.format_tag("mooncake", 512) == "-mooncake512"
    assert keys.parsed("d", "-mooncake512") == "parsed/d-mooncake512.parsed"
    assert keys.scope_report("d", "", "fail") == "scope/d-fail.json"
    assert keys.dataset("k") == "datasets/k"
    assert keys.dataset_manifest("k") == "datasets/k/manifest.json"
    assert keys.dataset_provenance("k") == "provenance/datasets/k.json"
    assert keys.replay_file("k", keys.RESULT) == "replay/k/result.json"
    assert keys.replay_file("k", keys.PER_CALL) == "replay/k/per_call.parquet"
    assert keys.replay_provenance("k") == "provenance/replay/k.json"
    assert keys.blast_radius("a", None) == "blast_radius/a-vs-none.json"
    assert keys.blast_radius_plot("a", "b") == "blast_radius/a-vs-b.png"
    assert keys.live_result("k", "run") == "live/k/run/result.json"
    assert keys.export("k", "text") == "exports/k/text.jsonl"
    assert keys.export_meta("k", "text") == "exports/k/text.jsonl.meta.json"
    assert keys.descriptor(["trace_scope"], "a|b") == "descriptors/trace_scope/a__b.json"
    assert keys.descriptor(["x"], None) == "descriptors/x/__all__.json"
