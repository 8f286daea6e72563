"""The trace-format registry: a new format is one `TraceFormat` subclass. A toy format
registered here runs through the chain (detection, the command line's --format, scope report
with its own rule, decode, replay on its recorded clock, the registry's `format:`), and the
built-in formats answer the protocol as the rest of the chain expects."""

import json
from collections.abc import Collection

import orjson
import pytest

from weka_assets.errors import Location, TraceError
from weka_assets.pipeline import decode_corpus, replay, scope_report
from weka_assets.sources.registry import parse_registry
from weka_assets.traces import formats
from weka_assets.traces.formats import TraceFormat
from weka_assets.traces.reader import CorpusFormat, detect_format
from weka_assets.traces.records import Record, check_sizes
from weka_assets.traces.schema import Call, Trace
from weka_assets_tests.test_cli import cli

TOY_FIELDS = ("prompt", "completion", "the corpus's block size")


class ToyFormat(TraceFormat):
    """`{"at": <s>, "prompt": N, "completion": M, "blocks": [...]}` per line: one call a
    trace, one namespace for the file, 8-token blocks."""

    name = "toy"
    title = "Toy"
    record_noun = "line"
    default_block_size = 8
    namespace = "corpus"
    corpus_clock = True
    size_fields = TOY_FIELDS
    schema_rules = ("toy_no_blocks",)
    sniff_keys = ("at", "blocks")
    key_name = "toy"

    def looks_like(self, keys: Collection[str]) -> bool:
        return "at" in keys and "blocks" in keys

    def parse(self, raw, fmt, limits) -> Record:
        import numpy as np

        file, line = raw.file, raw.line
        obj = orjson.loads(raw.load())
        if not obj.get("blocks"):
            err = TraceError("toy_no_blocks", "blocks: empty", Location(file, line))
            return Record(file, line, error=err, declared_scope=self.declared_scope)
        ids = np.asarray(obj["blocks"], np.int64)
        call = Call(0, 0, -1, float(obj["at"]), obj["prompt"], obj["completion"], ids, False)
        trace = Trace(
            f"toy:{line}", file, line, fmt.block_size or 8, self.declared_scope, [], 0, 0,
            [call], [], [call],
        )  # fmt: skip
        try:
            check_sizes(trace, limits, TOY_FIELDS)
        except TraceError as exc:
            return Record(file, line, error=exc, declared_scope=self.declared_scope)
        return Record(file, line, trace=trace, declared_scope=self.declared_scope)


@pytest.fixture
def toy(monkeypatch):
    # worker processes never registered it: the format travels with every record (by class)
    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "2")
    fmt = formats.register(ToyFormat())
    yield fmt
    formats.unregister("toy")


def _toy_corpus(path, n=12):
    lines = []
    for i in range(n):
        blocks = [0, 1] + [100 + i * 10 + j for j in range(i % 3 + 1)]
        lines.append({"at": 2.0 + i, "prompt": 8 * len(blocks), "completion": 4, "blocks": blocks})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path, lines


def test_a_registered_format_runs_through_the_chain(toy, tmp_path):
    path, lines = _toy_corpus(tmp_path / "toy.jsonl")
    fmt = detect_format(path)
    assert (fmt.format, fmt.corpus_block_size) == ("toy", 8)
    report = scope_report(path)
    assert report.passed, report.failure_reasons
    assert report.traces == len(lines) and report.block_sizes == {"8": len(lines)}
    out = decode_corpus(path, tmp_path / "ds")
    assert out.manifest["corpus_format"] == "toy" and out.material["corpus_format"] == "toy"
    result, _ = replay(out.path)
    # the two shared blocks lead every prompt: every line after the first hits both
    assert result.corpus_wide_theoretical_hit_rate == (2 * (len(lines) - 1)) / sum(
        len(x["blocks"]) for x in lines
    )
    run = cli("replay", out.path, "--json", tmp_path / "r.json", "--capacity", "auto")
    assert run.rc == 0, run.err
    assert json.loads((tmp_path / "r.json").read_text())["capacity_curve"]["arrival"]["mode"] == (
        "recorded"
    )
    # the command line offers it, and its own rule is a schema rule at the gate
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        path.read_text() + json.dumps({"at": 1, "prompt": 1, "completion": 1, "blocks": []}) + "\n"
    )
    run = cli("validate", bad, "--format", "toy")
    assert run.rc == 1 and f"bad.jsonl:{len(lines) + 1}: [toy_no_blocks]" in run.err
    report = scope_report(bad)
    from weka_assets.traces.scope import CONTRACT_RULES

    valid = next(r for r in CONTRACT_RULES if r.name == "valid_schema")
    assert valid.evaluate(report)[:2] == (False, 1)
    # the registry takes it, with its default block size
    entry = parse_registry(f"corpora:\n  - {{name: t, source: '{path}', format: toy}}\n").corpora[0]
    assert entry.block_size == 8 and entry.corpus_format() == CorpusFormat(
        "toy", 8, " (registry format)"
    )


def test_unknown_formats_are_refused(toy):
    assert "toy" in formats.names()
    with pytest.raises(ValueError, match="unknown corpus format 'csv'"):
        CorpusFormat("csv")
    run = cli("validate", "x.jsonl", "--format", "csv")
    assert run.rc == 2


def test_the_builtin_formats():
    assert formats.names()[:3] == ("weka", "bailian", "mooncake")
    weka, bailian, mooncake = (formats.get(n) for n in ("weka", "bailian", "mooncake"))
    assert (weka.default_block_size, bailian.default_block_size, mooncake.default_block_size) == (
        None,
        16,
        512,
    )
    assert (weka.declared_scope, bailian.declared_scope, mooncake.declared_scope) == (
        None,
        "global",
        "global",
    )
    assert [f.corpus_clock for f in (weka, bailian, mooncake)] == [False, True, True]
    # Weka manifests keep their bytes; Mooncake's line is the one written before formats
    assert weka.manifest_fields() == {} and mooncake.manifest_fields() == {
        "corpus_format": "mooncake"
    }
    # Weka's keys are unchanged; Mooncake's name is in its keys since a file became one trace
    # (another dataset layout), as Bailian's is (its bytes are valid Mooncake)
    assert weka.key_name is None
    assert (mooncake.key_name, bailian.key_name) == ("mooncake", "bailian/requests")
    keys = {"chat_id", "parent_chat_id", "turn", "timestamp", "input_length", "hash_ids"}
    assert formats.detect(keys) == "bailian"
    assert formats.detect(keys - {"chat_id"}) == "mooncake"
    assert formats.detect({"id", "requests"}) == "weka" == formats.detect({"x"})
    assert formats.corpus_clock("mooncake") and not formats.corpus_clock("nope")
