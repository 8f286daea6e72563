"""The corpus registry (corpora.yaml): the repository's file, defaults, and one clear line per
kind of mistake."""

import re

import pytest

from weka_assets.sources import (
    CorpusEntry,
    Registry,
    RegistryError,
    SourceError,
    default_registry_path,
    load_registry,
)


def _write(tmp_path, text: str):
    path = tmp_path / "corpora.yaml"
    path.write_text(text)
    return path


def test_the_repository_registry():
    path = default_registry_path()
    assert path.name == "corpora.yaml" and (path.parent / "pyproject.toml").is_file()
    reg = load_registry(path)
    assert reg.names() == ["sample", "sample-kvt"]
    assert reg.get("sample").spec.kind == "builtin" and "sample-kvt" in reg
    assert load_registry() == reg


def test_the_commented_hub_example_parses_once_pinned(tmp_path):
    text = default_registry_path().read_text()
    example = [
        line.replace("  # ", "  ", 1)
        for line in text.splitlines()
        if re.match(r"^  #   |^  # - name", line)
    ]
    assert example, "the commented-out Hub entry is missing"
    pinned = "\n".join(example).replace("<commit>", "0" * 40)
    reg = load_registry(_write(tmp_path, "corpora:\n" + pinned + "\n"))
    (entry,) = reg.corpora
    assert entry.spec.kind == "hf" and entry.spec.is_pinned
    assert entry.spec.repo_id == "semianalysisai/cc-traces-weka-with-subagents-060826"


def test_defaults_and_fields(tmp_path):
    reg = load_registry(
        _write(
            tmp_path,
            """
corpora:
  - name: a
    source: builtin:sample
  - name: remote.b_2
    source: s3://bucket/prefix/
    block_size: 32
    tokenizers: [deepseek, gpt2]
    scope_policy: exclude
""",
        )
    )
    a, b = reg.corpora
    assert (a.block_size, a.tokenizers, a.scope_policy) == (64, ["deepseek"], "fail")
    assert (b.block_size, b.tokenizers, b.scope_policy) == (32, ["deepseek", "gpt2"], "exclude")
    assert isinstance(a, CorpusEntry) and isinstance(reg, Registry) and len(reg) == 2
    assert [e.name for e in reg] == ["a", "remote.b_2"]
    assert load_registry(_write(tmp_path, "corpora: []\n")).names() == []


ENTRY_1 = "  - name: ok\n    source: builtin:sample\n"


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            "  - name: foo\n    source: ftp://host/x.jsonl\n",
            "entry 2 ('foo'): source: unsupported scheme 'ftp'",
        ),
        (
            "  - name: foo\n    source: builtin:nope\n",
            "entry 2 ('foo'): source: unknown built-in corpus 'nope'",
        ),
        (
            "  - name: foo\n    source: hf://datasets/org\n",
            "entry 2 ('foo'): source: missing ORG/NAME",
        ),
        ("  - name: Foo\n    source: builtin:sample\n", "entry 2 ('Foo'): name: must match"),
        ("  - name: foo\n", "entry 2 ('foo'): source: required"),
        ("  - source: builtin:sample\n", "entry 2: name: required"),
        (
            "  - name: foo\n    source: builtin:sample\n    colour: red\n",
            "entry 2 ('foo'): colour: unknown field (allowed: name, source, block_size",
        ),
        (
            "  - name: foo\n    source: builtin:sample\n    block_size: 0\n",
            "entry 2 ('foo'): block_size: Input should be greater than 0",
        ),
        (
            "  - name: foo\n    source: builtin:sample\n    block_size: big\n",
            "entry 2 ('foo'): block_size: Input should be a valid integer",
        ),
        (
            "  - name: foo\n    source: builtin:sample\n    tokenizers: []\n",
            "entry 2 ('foo'): tokenizers: List should have at least 1 item",
        ),
        (
            "  - name: foo\n    source: builtin:sample\n    tokenizers: [a, a]\n",
            "entry 2 ('foo'): tokenizers: listed twice: a",
        ),
        (
            "  - name: foo\n    source: builtin:sample\n    tokenizers: [a, '']\n",
            "entry 2 ('foo'): tokenizers.2: String should have at least 1 character",
        ),
        (
            "  - name: foo\n    source: builtin:sample\n    scope_policy: warn\n",
            "entry 2 ('foo'): scope_policy: Input should be 'fail' or 'exclude'",
        ),
        ("  - just a string\n", "entry 2: expected a mapping with name and source"),
        (
            "  - name: ok\n    source: builtin:sample-kvt\n",
            "entry 2 ('ok'): name: duplicate of entry 1",
        ),
    ],
)
def test_bad_entries_name_file_entry_and_field(tmp_path, entry, message):
    path = _write(tmp_path, "corpora:\n" + ENTRY_1 + entry)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    text = str(info.value)
    assert text.startswith(f"{path}: "), text
    assert message in text, text
    assert "\n" not in text
    assert isinstance(info.value, SourceError)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "corpora:\n  - name: a\n    source: [unclosed\n",
            ":4: invalid YAML: while parsing a flow sequence at line 3",
        ),
        ("corpora:\n  - name: a\n\tsource: x\n", ":3: invalid YAML"),
        (
            "corpora:\n  - name: a\n    source: builtin:sample\n    source: builtin:sample-kvt\n",
            ":4: invalid YAML: duplicate key 'source'",
        ),
        ("- name: a\n", ": expected a mapping with a 'corpora' list"),
        ("corpus:\n  - name: a\n", ": expected a mapping with a 'corpora' list"),
        ("corpora: {name: a}\n", ": corpora: expected a list of entries"),
        ("corpora: []\nextra: 1\n", ": extra: unknown top-level key"),
    ],
)
def test_bad_files(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert str(info.value).startswith(f"{path}{message}"), str(info.value)


def test_missing_registry_file(tmp_path):
    with pytest.raises(RegistryError, match="no such registry file"):
        load_registry(tmp_path / "nope.yaml")
