"""What README.md and docs/operators-guide.md say about the asset graph, against the code:

- the lists of assets a manifest bump makes stale (and of those it leaves alone) against the
  assets whose code version carries `MANIFEST_VERSION` (`weka_assets.definitions.defs`);
- the guide's group count, its picture (which asset sits in which group's box), its metadata
  table, the assets its backfill step builds (from the selection it tells you to type) and the
  checks count, against the definitions;
- the verdict and summary lines the guide quotes for the Quick start's `sample` corpus, against
  what `trace_scope` records (`verdict_markdown`) and what `weka-assets scope-report` prints.
"""

import io
import json
import os
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from itertools import takewhile
from pathlib import Path

import dagster as dg
import pytest

from weka_assets.cli import main
from weka_assets.definitions import defs
from weka_assets.defs.assets.scope import CHECK_SPECS, verdict_markdown
from weka_assets.defs.helpers import manifest_code_version
from weka_assets.traces.scope import ScopeReport
from weka_assets.versions import MANIFEST_VERSION

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "operators-guide.md"

NUMBERS = dict(
    (w, n)
    for n, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve".split()
    )
)


def number(word: str) -> int:
    return NUMBERS[word.lower()] if word.lower() in NUMBERS else int(word)


def flat(path: Path) -> str:
    """The document with every run of whitespace one space (line breaks never matter)."""
    return re.sub(r"\s+", " ", path.read_text())


def one(pattern: str, text: str, where: str) -> re.Match:
    found = list(re.finditer(pattern, text))
    assert len(found) == 1, f"{where}: expected one match of {pattern!r}, found {len(found)}"
    return found[0]


def names(fragment: str) -> set[str]:
    """The identifiers in code spans of a piece of text."""
    return set(re.findall(r"`([a-z][a-z0-9_]*)`", fragment))


# --------------------------------------------------------------------------- the definitions


@pytest.fixture(scope="module")
def graph():
    return defs.resolve_asset_graph()


@pytest.fixture(scope="module")
def assets(graph) -> dict[str, object]:
    return {k.to_user_string(): graph.get(k) for k in graph.get_all_asset_keys()}


@pytest.fixture(scope="module")
def versioned(assets) -> set[str]:
    """The assets a manifest bump makes stale: their code version carries the manifest version."""
    tag = manifest_code_version(MANIFEST_VERSION)
    out = {name for name, node in assets.items() if tag in (node.code_version or "")}
    assert {"decoded_dataset", "replay_benchmark"} <= out  # the lookup works at all
    return out


@pytest.fixture(scope="module")
def corpus_tokenizer(assets) -> set[str]:
    return {
        name
        for name, node in assets.items()
        if isinstance(node.partitions_def, dg.MultiPartitionsDefinition)
    }


# --------------------------------------------------------------------------- code versions

# (document, pattern with one group: the text that names the assets, which list it is)
VERSION_LISTS = [
    (README, r"\*\*Versions\.\*\* Every corpus × tokenizer asset \(([^)]*)\) carries", "versioned"),
    (
        README,
        r"`code_version = manifest-v<N>` from `weka_assets/versions\.py`; (.*?) carry none\.",
        "unversioned",
    ),
    (
        README,
        r"It is part of the code version of every corpus × tokenizer asset \(([^)]*)\), so all "
        r"their partitions turn stale at once",
        "versioned",
    ),
    (README, r"turn stale at once; (.*?) do not", "unversioned"),
    (
        GUIDE,
        r"The code version of every corpus × tokenizer asset \(([^)]*)\) becomes "
        r"`manifest-v<N\+1>`",
        "versioned",
    ),
    (GUIDE, r"has a new code version\"\. (.*?) stay in sync", "unversioned"),
]


@pytest.mark.parametrize(
    "doc, pattern, which",
    VERSION_LISTS,
    ids=[f"{d.name}-{i}" for i, (d, _, _) in enumerate(VERSION_LISTS)],
)
def test_the_code_version_lists_are_the_assets_that_carry_the_manifest_version(
    doc, pattern, which, assets, versioned
):
    listed = names(one(pattern, flat(doc), doc.name).group(1))
    expected = versioned if which == "versioned" else set(assets) - versioned
    what = "makes stale" if which == "versioned" else "leaves alone"
    assert listed == expected, (
        f"{doc.name}: the list of assets a manifest bump {what} lacks "
        f"{sorted(expected - listed)}, has {sorted(listed - expected)} too"
    )


def test_the_versioned_assets_are_the_corpus_x_tokenizer_assets(versioned, corpus_tokenizer):
    """The docs call them "every corpus × tokenizer asset"."""
    assert versioned == corpus_tokenizer


# --------------------------------------------------------------------------- the guide's graph


def test_the_guide_counts_the_groups(assets):
    groups = {node.group_name for node in assets.values()}
    said = one(r"\*\*Lineage\*\* in the left bar\. (\w+) groups", flat(GUIDE), GUIDE.name)
    assert number(said.group(1)) == len(groups), f"the definitions have groups {sorted(groups)}"


def guide_picture() -> list[str]:
    text = GUIDE.read_text()
    at = text.index("## 1. The asset graph in one picture")
    block = re.search(r"^```\n(.*?)^```", text[at:], re.M | re.S)
    return block.group(1).splitlines()


def box_label(picture: list[str], row: int, col: int) -> str:
    """The group label of the box around (row, col): left to the box's border, up to its
    corner, and the word written just above that corner."""
    line = picture[row]
    left = line.rindex("│", 0, col)
    for up in range(row, -1, -1):
        ch = picture[up][left] if left < len(picture[up]) else " "
        if ch == "┌":
            label = picture[up - 1][left + 1 :].split()
            return label[0] if label else ""
        assert ch in "│├", f"picture row {up + 1}: no box border above column {left}"
    raise AssertionError(f"no box around picture row {row + 1}, column {col}")


def test_the_guide_picture_puts_every_asset_in_its_group(assets):
    picture = guide_picture()
    groups = {node.group_name for node in assets.values()}
    for name, node in assets.items():
        where = [
            (r, m.start())
            for r, line in enumerate(picture)
            for m in re.finditer(rf"(?<![\w]){name}(?![\w])", line)
        ]
        assert len(where) == 1, f"{name} should be in the picture once, found {len(where)}"
        assert box_label(picture, *where[0]) == node.group_name, f"{name} is not in its group's box"
    labels = {
        picture[r - 1][c + 1 :].split()[0]
        for r, line in enumerate(picture)
        for c, ch in enumerate(line)
        if ch == "┌" and r > 0 and picture[r - 1][c + 1 :].strip()
    }
    assert labels == groups


def test_the_guide_metadata_table_has_a_row_per_asset(assets):
    text = GUIDE.read_text()
    lines = text[text.index("| asset | what its metadata shows") :].splitlines()
    rows = list(takewhile(lambda line: line.startswith("|"), lines[2:]))
    listed = set().union(*(names(row.split("|")[1]) for row in rows))
    assert listed == set(assets)


def test_the_guide_backfill_builds_the_assets_it_names(graph, corpus_tokenizer):
    text = flat(GUIDE)
    typed = one(r"type `([^`]+)` in \*Search and filter assets\*", text, GUIDE.name).group(1)
    selected = {k.to_user_string() for k in dg.AssetSelection.from_string(typed).resolve(graph)}
    runs = one(
        r"one run for (`\w+` \+ `\w+`), then one per tokenizer for the (\w+) corpus × tokenizer "
        r"assets \(([^)]*)\)",
        text,
        GUIDE.name,
    )
    assert names(runs.group(1)) == selected - corpus_tokenizer
    assert names(runs.group(3)) == selected & corpus_tokenizer
    assert number(runs.group(2)) == len(selected & corpus_tokenizer)


def test_the_checks_count():
    n = len(CHECK_SPECS)
    assert one(r'`trace_scope` shows "(\d+) / (\d+) Passed"', flat(GUIDE), GUIDE.name).groups() == (
        str(n),
        str(n),
    )
    assert one(r"corpus report, (\d+) checks", README.read_text(), README.name).group(1) == str(n)


# --------------------------------------------------------------------------- quoted output


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    """`weka-assets scope-report builtin:sample` (the Quick start's corpus): the last line it
    prints and the report it writes."""
    tmp = tmp_path_factory.mktemp("sample")
    mp = pytest.MonkeyPatch()
    mp.setenv("WEKA_ASSETS_CACHE", str(tmp / "cache"))
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(["scope-report", "builtin:sample", "--json", str(tmp / "report.json")])
    finally:
        mp.undo()
    assert rc == 0, err.getvalue()
    report = ScopeReport.model_validate(json.loads((tmp / "report.json").read_text()))
    return out.getvalue().strip().splitlines()[-1], report


def rendered(markdown: str) -> str:
    """A one-line markdown metadata value as the UI shows its text: no ** nor backticks."""
    return markdown.replace("**", "").replace("`", "")


def quoted_after(phrase: str) -> str:
    """The one-line code block that follows `phrase` in the guide."""
    text = GUIDE.read_text()
    at = re.search(re.escape(phrase).replace(r"\ ", r"\s+"), text)
    assert at, f"the guide no longer says {phrase!r}"
    block = re.search(r"```\n(.*?)\n```", text[at.end() :], re.S)
    return block.group(1).strip()


def test_the_guide_quotes_the_verdict_trace_scope_records(sample_report):
    _, report = sample_report
    verdict = rendered(verdict_markdown(report))
    assert quoted_after("The metadata starts with the verdict") == verdict
    # the metadata table's abbreviation of it
    short = one(r"`verdict` \(one line: `([^`]*)`\)", flat(GUIDE), GUIDE.name).group(1)
    assert short.endswith(", ...") and verdict.startswith(short.removesuffix("..."))


def test_the_guide_quotes_what_scope_report_prints(sample_report):
    printed, report = sample_report
    assert printed == report.summary()  # the summary metadata's first line too
    assert quoted_after("prints the summary line last") == printed


def test_the_guide_counts_the_sample_calls(sample_report):
    """`0 of 2306 calls change tokens` (blast radius), `replay-live 120/2306 calls`: the sample's
    calls."""
    _, report = sample_report
    text = flat(GUIDE)
    totals = re.findall(r"\b\d+ of (\d+) calls change tokens", text) + re.findall(
        r"replay-live \d+/(\d+) calls", text
    )
    assert totals and set(totals) == {str(report.calls)}


# --------------------------------------------------------------------------- cited files

CITING = [README, *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = sorted(p for p in (ROOT / "scripts").iterdir() if p.is_file())
CITED = re.compile(
    r"(?<![\w./-])((?:docs|scripts|weka_assets|weka_assets_tests|deploy|benchmarks)/[\w./-]*\w)"
)
GENERATED = ("benchmarks/results/",)  # written by the benchmarks, not kept in the repository


@pytest.mark.parametrize("doc", CITING + SCRIPTS, ids=lambda p: p.name)
def test_every_project_file_cited_exists(doc):
    """`docs/real-components.md` was cited by scripts/vllm-cpu-server and never existed here."""
    text = doc.read_text()
    missing = sorted(
        {
            m.group(1)
            for m in CITED.finditer(text)
            if not m.group(1).startswith(GENERATED) and not (ROOT / m.group(1)).exists()
        }
    )
    assert not missing, f"{doc.name} cites files the project does not have: {missing}"
    if doc in SCRIPTS:
        assert "../" not in text, f"{doc.name} cites something outside the repository"


# --------------------------------------------------------------------------- dagster dev

IGNORED_WARNING = "will not be used to configure Dagster"  # dagster/_cli/dev.py, 1.13
COPIES_THE_TEMPLATE = r'cp "\$ROOT/([^"]+)" "\$DAGSTER_HOME/dagster.yaml"'


@pytest.mark.parametrize("script", ["run-sample.sh", "dev"])
def test_the_root_dagster_yaml_is_what_the_scripts_copy_into_dagster_home(script, tmp_path):
    """The repository root keeps its `dagster.yaml`: the local instance's settings, which
    scripts/run-sample.sh and scripts/dev copy into $DAGSTER_HOME when it has none (Dagster reads
    the copy there). It is a valid instance config."""
    from dagster._core.instance.config import dagster_instance_config

    assert (ROOT / "dagster.yaml").is_file() and not (ROOT / "dagster.yml").exists()
    copied = re.findall(COPIES_THE_TEMPLATE, (ROOT / "scripts" / script).read_text())
    assert copied == ["dagster.yaml"], f"scripts/{script} copies {copied} into $DAGSTER_HOME"
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # validates against the instance schema
    assert config["telemetry"] == {"enabled": False}


def test_the_readme_and_the_guide_open_the_ui_with_scripts_dev():
    """`dagster dev` started in the repository root, DAGSTER_HOME elsewhere, warns that the root's
    dagster.yaml is ignored; scripts/dev starts it in $DAGSTER_HOME. The docs use the script."""
    readme = README.read_text()
    block = re.search(
        r"To browse the result in the Dagster UI[^\n]*\n+```bash\n(.*?)```", readme, re.S
    )
    assert block and block.group(1).strip() == "scripts/dev", block and block.group(1)
    guide = GUIDE.read_text()
    block = re.search(r"Start the UI on the instance[^\n]*\n+```bash\n(.*?)```", guide, re.S)
    assert block and block.group(1).split()[0] == "scripts/dev", block and block.group(1)
    for doc, text in ((README, readme), (GUIDE, guide)):
        started = [s for _, s in shell_commands(text) if re.search(r"\bdagster dev\b", s)]
        assert not started, f"{doc.name} starts `dagster dev` itself: {started}"


def shell_commands(text: str) -> list[tuple[int, str]]:
    """The lines of the fenced code blocks, comments cut, with their line numbers."""
    out = []
    for m in re.finditer(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", text, re.M | re.S):
        first = text.count("\n", 0, m.start(1)) + 1
        for k, line in enumerate(m.group(1).splitlines()):
            command = re.sub(r"(^|\s)#.*", "", line).strip()
            if command:
                out.append((first + k, command))
    return out


@pytest.mark.live
def test_dagster_dev_in_the_repository_warns_of_no_ignored_dagster_yaml(tmp_path):
    """The README's `scripts/dev`, started in the repository root (which holds dagster.yaml) with
    a DAGSTER_HOME that does not exist yet, on 127.0.0.1; stopped by PID. It copies the root's
    dagster.yaml there, runs `dagster dev` in it (no "ignored" warning) and the code location
    loads."""
    from weka_assets_tests.dagster_dev import start_dev_script

    home = tmp_path / "home"
    registry = tmp_path / "corpora.yaml"
    registry.write_text("corpora: []\n")  # nothing to discover: no runs in this instance
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        WEKA_ASSETS_STORE=str(tmp_path / "store"),
        WEKA_ASSETS_REGISTRY=str(registry),
        WEKA_ASSETS_AUTOMATION="stopped",
        PYTHONUNBUFFERED="1",
    )
    env.pop("HF_HUB_OFFLINE", None)  # the script sets it
    server = start_dev_script(env, tmp_path / "dagster-dev.log")  # returns once loaded
    try:
        assert (home / "dagster.yaml").read_bytes() == (ROOT / "dagster.yaml").read_bytes()
        assert os.readlink(f"/proc/{server.pid}/cwd") == str(home.resolve())
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert b"HF_HUB_OFFLINE=1" in environ
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    assert "Launching Dagster services" in log, log[-3000:]
    assert IGNORED_WARNING not in log and "dagster.yaml" not in log, log[-3000:]
