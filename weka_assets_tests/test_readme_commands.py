"""README's command table against the argument parser of `weka-assets` (`cli.build_parser()`),
both ways: every subcommand and every option of the parser is in the table, written as its
`--help` writes it, and every command and option the table names is in the parser. Then every
`weka-assets COMMAND --option` that README and docs/ show anywhere else names a real command and
real options of it.

The table's rows are `| command | options | what it does |`: the first cell one code span, the
command with its positional arguments and required options in the parser's order; the second
the command's other options, one code span each (free text between them, e.g. "(repeatable)",
is allowed); the third free text, not read here."""

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from weka_assets.cli import PROG, build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
TABLE_HEADER = "| command | options | what it does |"


# --------------------------------------------------------------------------- the parser


def display(action: argparse.Action) -> str:
    """An option as argparse's usage line writes it: `--name`, `--name METAVAR` or
    `--name {a,b}`."""
    name = max(action.option_strings, key=len)
    if action.nargs == 0:
        return name
    if action.metavar is not None:
        return f"{name} {action.metavar}"
    if action.choices is not None:
        return f"{name} {{{','.join(map(str, action.choices))}}}"
    return f"{name} {action.dest.upper()}"


@dataclass(frozen=True)
class Command:
    name: str
    positionals: tuple[str, ...]  # metavars, in order
    required: tuple[str, ...]  # display forms, in the parser's order
    optional: tuple[str, ...]

    @property
    def options(self) -> set[str]:
        return {d.split(" ", 1)[0] for d in self.required + self.optional}

    def command_cell(self) -> str:
        return f"`{PROG} {' '.join((self.name, *self.positionals, *self.required))}`"

    def options_cell(self) -> str:
        return ", ".join(f"`{d}`" for d in self.optional)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def commands_of(parser: argparse.ArgumentParser) -> dict[str, Command]:
    out = {}
    for name, p in subparsers(parser).items():
        actions = [a for a in p._actions if not isinstance(a, argparse._HelpAction)]
        out[name] = Command(
            name,
            tuple(a.metavar or a.dest.upper() for a in actions if not a.option_strings),
            tuple(display(a) for a in actions if a.option_strings and a.required),
            tuple(display(a) for a in actions if a.option_strings and not a.required),
        )
    return out


# --------------------------------------------------------------------------- README's table


def cells(row: str) -> list[str]:
    """A markdown table row's cells, split on `|` outside code spans."""
    out, cur, in_code = [], [], False
    for ch in row.strip().strip("|"):
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


@dataclass(frozen=True)
class Row:
    line: int
    name: str
    positionals: tuple[str, ...]
    required: tuple[str, ...]
    optional: tuple[str, ...]

    @property
    def options(self) -> set[str]:
        return {d.split(" ", 1)[0] for d in self.required + self.optional}


def parse_command_cell(cell: str, where: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    spans = code_spans(cell)
    assert len(spans) == 1, f"{where}: the command cell must be one code span: {cell!r}"
    words = spans[0].split()
    assert words[0] == PROG and len(words) >= 2, f"{where}: not a `{PROG} COMMAND`: {cell!r}"
    name, rest = words[1], words[2:]
    positionals, required = [], []
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("-"):
            # an option and, unless the next word is another option, its value
            if i + 1 < len(rest) and not rest[i + 1].startswith("-"):
                required.append(f"{word} {rest[i + 1]}")
                i += 2
            else:
                required.append(word)
                i += 1
        else:
            assert not required, f"{where}: positional {word} after the options: {cell!r}"
            positionals.append(word)
            i += 1
    return name, tuple(positionals), tuple(required)


def parse_options_cell(cell: str, where: str) -> tuple[str, ...]:
    spans = code_spans(cell)
    for span in spans:
        assert re.fullmatch(r"--[a-z0-9][a-z0-9-]*( \S+)?", span), (
            f"{where}: the options cell holds options only (`--name` or `--name VALUE`), "
            f"not {span!r}"
        )
    return tuple(spans)


def table_rows(text: str) -> list[Row]:
    lines = text.splitlines()
    assert lines.count(TABLE_HEADER) == 1, f"README must have one table headed {TABLE_HEADER!r}"
    start = lines.index(TABLE_HEADER)
    assert re.fullmatch(r"\|(-+\|){3}", lines[start + 1].replace(" ", "")), lines[start + 1]
    rows = []
    for k in range(start + 2, len(lines)):
        if not lines[k].startswith("|"):
            break
        where = f"README.md:{k + 1}"
        row = cells(lines[k])
        assert len(row) == 3, f"{where}: three cells expected, got {len(row)}: {lines[k]!r}"
        name, positionals, required = parse_command_cell(row[0], where)
        rows.append(Row(k + 1, name, positionals, required, parse_options_cell(row[1], where)))
    return rows


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return table_rows(README.read_text())


def expected_row(cmd: Command) -> str:
    return f"| {cmd.command_cell()} | {cmd.options_cell()} | ... |"


# --------------------------------------------------------------------------- the tests


def test_the_top_level_parser_has_no_option_the_table_leaves_out(parser):
    top = [a.option_strings for a in parser._actions if a.option_strings]
    assert top == [["-h", "--help"]], (
        f"{PROG} gained a top-level option {top}: document it in README's command table and "
        "check it here"
    )


def test_every_command_of_the_parser_is_in_the_table_and_no_other(parser, rows):
    names = [r.name for r in rows]
    assert len(names) == len(set(names)), f"a command has two rows: {names}"
    commands = commands_of(parser)
    missing = sorted(set(commands) - set(names))
    unknown = sorted(set(names) - set(commands))
    assert not missing, "README's command table lacks these commands; add:\n" + "\n".join(
        expected_row(commands[n]) for n in missing
    )
    assert not unknown, f"README's command table names commands the parser lacks: {unknown}"


def test_every_option_of_every_command_is_in_its_row_and_no_other(parser, rows):
    commands = commands_of(parser)
    problems = []
    for row in rows:
        cmd = commands.get(row.name)
        if cmd is None:
            continue  # the test above names it
        where = f"README.md:{row.line} ({row.name})"
        if row.options - cmd.options:
            problems.append(
                f"{where}: options the parser lacks: {sorted(row.options - cmd.options)}"
            )
        if cmd.options - row.options:
            problems.append(f"{where}: options missing: {sorted(cmd.options - row.options)}")
        if row.positionals != cmd.positionals:
            problems.append(f"{where}: arguments {row.positionals}, parser {cmd.positionals}")
        if row.required != cmd.required:
            problems.append(
                f"{where}: required options (first cell, parser's order) {row.required}, "
                f"parser {cmd.required}"
            )
        if sorted(row.optional) != sorted(cmd.optional):
            problems.append(
                f"{where}: other options (second cell) {sorted(set(row.optional) - set(cmd.optional))} "
                f"written, {sorted(set(cmd.optional) - set(row.optional))} expected"
            )
        if len(set(row.optional)) != len(row.optional):
            problems.append(f"{where}: an option listed twice: {row.optional}")
        if problems and problems[-1].startswith(where):
            problems.append(f"  as the parser has it: {expected_row(cmd)}")
    assert not problems, "README's command table and the parser differ:\n" + "\n".join(problems)


def test_the_checks_catch_an_option_added_to_the_parser_or_to_the_table(parser, rows):
    """The comparison itself: one option more on either side is found."""
    commands = commands_of(parser)
    decode = commands["decode"]
    grown = Command(decode.name, decode.positionals, decode.required, (*decode.optional, "--new N"))
    (row,) = [r for r in rows if r.name == "decode"]
    assert grown.options - row.options == {"--new"}
    text = README.read_text().replace("`--seed N`, `--policy {fail,exclude}`", "`--seed N`", 1)
    (cut,) = [r for r in table_rows(text) if r.name == "decode"]
    assert decode.options - cut.options == {"--policy"}


# --------------------------------------------------------------------------- elsewhere in the docs


def shell_snippets(text: str) -> list[tuple[int, str]]:
    """Every fenced code block's lines (continuations joined, comments cut) and every inline
    code span, with the line it starts on."""
    out = []
    fence = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
    for m in fence.finditer(text):
        line = text.count("\n", 0, m.start(1)) + 1
        for statement in re.split(r"(?<!\\)\n", m.group(1)):
            joined = re.sub(r"(^|\s)#.*", "", statement.replace("\\\n", " "))  # no comment
            out.append((line, joined))
            line += statement.count("\n") + 1
    rest = fence.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for m in re.finditer(r"`([^`]+)`", rest):
        out.append((rest.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


def invocations(text: str) -> list[tuple[int, str, list[str]]]:
    """(line, command, options) of every `weka-assets COMMAND ...` in the snippets; a shell
    comment, `;`, `&&` or `|` ends one."""
    found = []
    for line, snippet in shell_snippets(text):
        for m in re.finditer(rf"(?:^|[\s/(]){PROG}[ \t\n]+([a-z][a-z-]*)(.*)", snippet, re.S):
            args = re.split(r"\s(?:#|;|&&|\|)|\n\n", m.group(2))[0]
            found.append((line, m.group(1), re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", args)))
    return found


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_every_command_the_docs_show_exists_with_its_options(doc, parser):
    commands = commands_of(parser)
    problems = []
    for line, name, options in invocations(doc.read_text()):
        if name not in commands:
            problems.append(f"{doc.name}:{line}: no command {PROG} {name}")
            continue
        unknown = sorted(set(options) - commands[name].options - {"--help"})
        if unknown:
            problems.append(f"{doc.name}:{line}: {PROG} {name} has no {unknown}")
    assert not problems, "\n".join(problems)


def test_the_docs_show_commands_at_all():
    """The scan above finds what it should (it would pass vacuously on a broken pattern)."""
    found = {(name, tuple(opts)) for _, name, opts in invocations(README.read_text())}
    assert ("backfill-stale", ("--wait",)) in found
    assert any(name == "replay-live" and "--max-tokens-cap" in opts for name, opts in found)
