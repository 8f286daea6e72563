"""One way to write a file atomically: `weka_assets.atomic.atomic_write`.

Its behaviour (a unique name aside, renamed on success, removed on failure), and a scan of the
package source (with `ast`) that finds every hand-made write aside elsewhere: a name ending in
`.tmp`, `mkstemp` / `NamedTemporaryFile`, or a rename into place. Folders published by rename
(a dataset, a fetched snapshot, a folder of traces, an S3 pull) are another concern and are
listed by function, each with its reason; anything else fails the test.
"""

import ast
from pathlib import Path

import pytest

from weka_assets.atomic import atomic_write

PACKAGE = Path(__file__).resolve().parents[1] / "weka_assets"

# (module, function) -> why it may rename into place by hand
FOLDER_PUBLICATION = {
    ("decoding/dataset.py", "publish"): "a dataset folder, manifest last, renamed into place",
    ("decoding/dataset.py", "quarantine"): "a damaged dataset folder moved out whole",
    ("sources/fetch.py", "_publish"): "a fetched snapshot folder renamed to its digest",
    ("synthetic/generator.py", "_folder_beside"): "the folder aside of a folder of traces",
    ("synthetic/generator.py", "write_corpus"): "a folder of traces swapped into place",
    ("store.py", "pull"): "a file or folder pulled from S3 into a private mkdtemp folder",
    ("store.py", "_adopt"): "another machine's dataset folder adopted whole",
}


def aside_writes(path: Path) -> list[tuple[int, str, str]]:
    """(line, enclosing function, what) of every hand-made write aside in one module."""
    found: list[tuple[int, str, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.endswith(".tmp"):
                found.append((node.lineno, function, f"a name ending in .tmp ({node.value!r})"))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = (
                f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            )
            if name in ("mkstemp", "NamedTemporaryFile"):
                found.append((node.lineno, function, name))
            elif owner == "os" and name in ("replace", "rename"):
                found.append((node.lineno, function, f"os.{name}"))
            elif (
                owner != "os"
                and name in ("replace", "rename")
                and len(node.args) == 1
                and not node.keywords
                and not isinstance(node.args[0], ast.Constant)
            ):  # Path.replace(target) / Path.rename(target); str.replace takes two
                found.append((node.lineno, function, f"Path.{name}"))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text(), str(path)), "<module>")
    return found


def test_no_module_writes_aside_by_hand():
    offences, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "atomic.py":
            continue
        for line, function, what in aside_writes(path):
            if (rel, function) in FOLDER_PUBLICATION:
                used.add((rel, function))
                continue
            offences.append(f"weka_assets/{rel}:{line} in {function}(): {what}")
    assert offences == [], "use weka_assets.atomic.atomic_write:\n" + "\n".join(offences)
    assert used == set(FOLDER_PUBLICATION), f"stale exceptions: {set(FOLDER_PUBLICATION) - used}"


def test_the_scan_sees_a_hand_made_write(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os, tempfile\n"
        "def save(p, data):\n"
        "    tmp = p.with_name(f'.{p.name}.{os.getpid()}.tmp')\n"
        "    tmp.write_bytes(data)\n"
        "    tmp.replace(p)\n"
        "def other(p):\n"
        "    fd, t = tempfile.mkstemp(dir=p.parent)\n"
        "    os.replace(t, p)\n"
        "    return 'a-b'.replace('-', '_')\n"
    )
    assert [(line, fn) for line, fn, _ in aside_writes(module)] == [
        (3, "save"),
        (5, "save"),
        (7, "other"),
        (8, "other"),
    ]


def test_atomic_write_renames_into_place(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_write(target) as fh:
        fh.write(b"one")
        assert not target.exists()  # nothing at the target until the end
    with atomic_write(target) as fh:
        fh.write(b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"earlier")
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_names_each_write_aside_apart(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_write(target) as a, atomic_write(target) as b:
        assert a.name != b.name  # two writers of one path never share a file
        a.write(b"a")
        b.write(b"b")
    assert target.read_bytes() == b"a"  # the last rename wins, whole
