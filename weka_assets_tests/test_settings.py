"""Every `WEKA_ASSETS_*` setting is defined once (weka_assets.env.SETTINGS), read through
`env.get` when it is used, and listed in the operator's guide's table with its default."""

import ast
import re
from pathlib import Path

import pytest

from weka_assets import env
from weka_assets.env import SETTINGS, SettingError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "weka_assets"
GUIDE = ROOT / "docs" / "operators-guide.md"


@pytest.fixture(autouse=True)
def _unset(monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)


def guide_rows() -> list[tuple[str, str, str]]:
    """(name, default, effect) of each row of the guide's settings table."""
    section = GUIDE.read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `WEKA_ASSETS_"):
            assert len(cells) == 3, line
            rows.append((cells[0].strip("`"), cells[1], cells[2]))
    return rows


def test_the_guide_lists_every_setting_with_its_default():
    rows = guide_rows()
    assert [r[0] for r in rows] == list(SETTINGS), "names (run `python -m weka_assets.env`)"
    assert {r[0]: r[1] for r in rows} == {n: s.default_text for n, s in SETTINGS.items()}
    assert {r[0]: r[2] for r in rows} == {n: s.doc for n, s in SETTINGS.items()}
    assert env.settings_table() in GUIDE.read_text()


def test_a_new_setting_without_docs_would_fail(monkeypatch):
    monkeypatch.setitem(
        SETTINGS, "WEKA_ASSETS_NEW", env.Setting("WEKA_ASSETS_NEW", "1", env.text, "new")
    )
    assert [r[0] for r in guide_rows()] != list(SETTINGS)


def weka_names_and_reads(path: Path) -> tuple[set[str], list[str]]:
    """(every WEKA_ASSETS_* string constant, every direct environment read of one)."""
    tree = ast.parse(path.read_text(), str(path))
    names, reads = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.update(re.findall(r"\bWEKA_ASSETS_[A-Z0-9_]*[A-Z0-9]\b", node.value))
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if ast.unparse(node.value).endswith("environ"):  # os.environ["..."]
                key = node.slice
        elif isinstance(node, ast.Call) and node.args:  # os.environ.get(...), os.getenv(...)
            if ast.unparse(node.func).endswith(("environ.get", "getenv", "environ.pop")):
                key = node.args[0]
        if key is not None and re.search(r"WEKA_ASSETS_|_ENV\b", ast.unparse(key)):
            reads.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return names, reads


def test_nothing_else_reads_a_setting_and_every_name_is_defined():
    unknown, direct = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        names, reads = weka_names_and_reads(path)
        unknown += [f"{path.relative_to(ROOT)}: {n}" for n in sorted(names - set(SETTINGS))]
        if path.name != "env.py":
            direct += [f"{path.relative_to(ROOT).parent}/{r}" for r in reads]
    assert direct == [], "read settings through weka_assets.env.get:\n" + "\n".join(direct)
    assert unknown == [], "define these in weka_assets.env.SETTINGS:\n" + "\n".join(unknown)


def test_read_when_used_not_at_import(monkeypatch, tmp_path):
    assert env.cache_dir() == Path.home() / ".cache" / "weka-assets"
    monkeypatch.setenv("WEKA_ASSETS_CACHE", str(tmp_path))
    assert env.cache_dir() == tmp_path
    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "3")
    from weka_assets.parallel import workers

    assert workers() == 3
    monkeypatch.setenv("WEKA_ASSETS_MAX_IDS_PER_CALL", " 7 ")
    from weka_assets.traces.reader import max_ids_per_call

    assert max_ids_per_call() == 7


def test_one_cache_default_for_every_user(monkeypatch, tmp_path):
    from weka_assets.cli import cache_dir
    from weka_assets.decoding.filler import shared_cache

    monkeypatch.setenv("WEKA_ASSETS_CACHE", str(tmp_path / "c"))
    assert cache_dir() == shared_cache() == env.cache_dir() == tmp_path / "c"
    monkeypatch.setenv("WEKA_ASSETS_CACHE", "")  # empty: the default
    assert cache_dir() == shared_cache() == Path.home() / ".cache" / "weka-assets"


def test_defaults():
    assert env.get("WEKA_ASSETS_STORE") == ".weka-store"
    assert env.get("WEKA_ASSETS_TOKENIZERS") == ["deepseek"]
    assert env.get("WEKA_ASSETS_MAX_TRACE_BYTES") == 512 << 20
    assert env.get("WEKA_ASSETS_MAX_IDS_PER_CALL") == 4_000_000
    assert env.get("WEKA_ASSETS_CELERY_BROKER") is None
    assert env.get("WEKA_ASSETS_K8S_MAX_CONCURRENT") is None
    assert env.get("WEKA_ASSETS_AUTOMATION") == "running"
    assert env.get("WEKA_ASSETS_REFRESH_CRON") == "0 3 * * *"
    assert env.get("WEKA_ASSETS_WORKERS") >= 1


def test_defaults_agree_with_their_users():
    from weka_assets.decoding.tokenizers import DEFAULT_TOKENIZER
    from weka_assets.executors import EXECUTORS
    from weka_assets.instance.staleness import DEFAULT_WEBSERVER

    assert SETTINGS["WEKA_ASSETS_TOKENIZERS"].default == DEFAULT_TOKENIZER
    assert env.EXECUTORS == tuple(EXECUTORS)
    assert DEFAULT_WEBSERVER in SETTINGS["WEKA_ASSETS_WEBSERVER"].default_text


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WEKA_ASSETS_WORKERS", "two", "WEKA_ASSETS_WORKERS='two' is not an integer"),
        ("WEKA_ASSETS_MAX_TRACE_BYTES", "0", "WEKA_ASSETS_MAX_TRACE_BYTES='0' must be 1 or more"),
        ("WEKA_ASSETS_AUTOMATION", "off", "WEKA_ASSETS_AUTOMATION='off': use one of running"),
        ("WEKA_ASSETS_EXECUTOR", "threads", "WEKA_ASSETS_EXECUTOR='threads': use one of"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError, match=re.escape(message)) as info:
        env.get(name)
    assert "\n" not in str(info.value)


def test_the_scan_sees_a_direct_read(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n"
        'A = os.environ.get("WEKA_ASSETS_STORE", "x")\n'
        "B = os.environ[LIMIT_ENV]\n"
        'C = os.getenv("WEKA_ASSETS_NEW")\n'
        'os.environ["DAGSTER_HOME"] = "h"\n'
    )
    names, reads = weka_names_and_reads(module)
    assert names == {"WEKA_ASSETS_STORE", "WEKA_ASSETS_NEW"}
    assert [r.split(":")[1] for r in reads] == ["2", "3", "4"]
