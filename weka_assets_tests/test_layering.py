"""The layers, read from the source with `ast`: the plain-Python core never imports the Dagster
layer (weka_assets.defs) or Dagster itself, and decoding never imports replay (replay is built
on decoded datasets, not the other way round). Shared constants live at the bottom layer
(e.g. `weka_assets.parallel.SHARD_CALLS`)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "weka_assets"
CORE = ("traces", "decoding", "replay", "exports", "sources", "synthetic")
# package -> modules it must never import (a prefix matches the module and everything below)
FORBIDDEN = {name: ("dagster", "dagster_", "weka_assets.defs") for name in CORE}
FORBIDDEN["decoding"] += ("weka_assets.replay",)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module, inside functions too."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def forbidden(module: str, banned: tuple[str, ...]) -> bool:
    return any(module == b or module.startswith(b if b.endswith("_") else b + ".") for b in banned)


@pytest.mark.parametrize("package", CORE)
def test_the_core_does_not_import_upwards(package):
    banned = FORBIDDEN[package]
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}"
        for path in sorted((PACKAGE / package).rglob("*.py"))
        for line, module in imports(path)
        if forbidden(module, banned)
    ]
    assert found == [], "\n".join(found)


def test_the_check_sees_an_upward_import():
    assert forbidden("weka_assets.replay.unbounded", FORBIDDEN["decoding"])
    assert forbidden("dagster", FORBIDDEN["traces"])
    assert forbidden("dagster_celery", FORBIDDEN["traces"])
    assert not forbidden("weka_assets.replayed", FORBIDDEN["decoding"])
    assert not forbidden("weka_assets.parallel", FORBIDDEN["decoding"])


# --------------------------------------------------------------------------- private names

ROOT = PACKAGE.parent


def private_imports(path: Path, root: Path = ROOT) -> set[tuple[str, str, str]]:
    """(file, module, name) of every `from weka_assets... import _name` in a module (a
    single leading underscore: dunders are not private)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("weka_assets"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    out.add((path.relative_to(root).as_posix(), node.module, alias.name))
    return out


def test_no_module_imports_another_modules_private_name():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    found = sorted(set().union(*(private_imports(p) for p in files)))
    assert not found, "private names imported across modules (make them public):\n" + "\n".join(
        f"{f}: from {m} import {n}" for f, m, n in found
    )


def test_the_check_sees_a_private_import(tmp_path):
    assert not private_imports(PACKAGE / "exports" / "formats.py")
    path = tmp_path / "probe.py"
    path.write_text("from weka_assets.pipeline import _since, __all__, write_json\n")
    assert private_imports(path, tmp_path) == {("probe.py", "weka_assets.pipeline", "_since")}
