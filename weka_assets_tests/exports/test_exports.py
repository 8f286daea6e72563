"""The three exports: round trips against the dataset, ordering, the sidecar, atomicity, and
the command line."""

import json
import subprocess
import sys

import numpy as np
import orjson
import pytest

from weka_assets.decoding.dataset import DecodedDataset, open_dataset
from weka_assets.exports import ExportError, export_dataset, meta_path
from weka_assets.exports import formats as formats_mod
from weka_assets.replay.corpus_wide import block_classes, timeline_order
from weka_assets_tests.corpora import decoded, synthetic


@pytest.fixture(scope="module")
def ds() -> DecodedDataset:
    return decoded(synthetic("kv-cache-tester", traces=6, seed=4))


def _lines(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_one_drift_figure_per_dataset(ds, tmp_path):
    """The text export's drift is the dataset's one figure: its manifest's, measured at decode;
    for a dataset decoded without it, measured by the same definition, which gives the figure
    the decode would have stored."""
    from weka_assets.decoding.drift import DEFINITION
    from weka_assets.pipeline import decode_corpus

    measured = decode_corpus(
        synthetic("kv-cache-tester", traces=6, seed=4), tmp_path / "datasets"
    )  # same corpus as `ds`, drift measured
    stored = measured.manifest["retokenization_drift"]
    assert stored["calls_checked"] > 0
    export_dataset(open_dataset(measured.path), "text", tmp_path / "a.jsonl")
    export_dataset(ds, "text", tmp_path / "b.jsonl")  # no figure in its manifest
    for name in ("a.jsonl", "b.jsonl"):
        meta = json.loads(meta_path(tmp_path / name).read_text())
        assert meta["retokenization_drift"] == stored, name
        assert meta["drift_note"].endswith(DEFINITION)


def test_mooncake_round_trip(ds, tmp_path):
    out = tmp_path / "m.jsonl"
    s = export_dataset(ds, "mooncake", out)
    lines = _lines(out)
    order = timeline_order(ds).tolist()
    assert s.lines == len(lines) == ds.n_calls
    ts = [x["timestamp"] for x in lines]
    assert ts == sorted(ts)
    trace = np.asarray(ds.calls["trace"])
    cls, _ = block_classes(ds)
    by_id: dict[int, tuple] = {}
    seen = -1
    for x, i in zip(lines, order, strict=True):
        assert x["input_length"] == int(ds.calls["tokens_in"][i])
        assert x["output_length"] == int(ds.calls["tokens_out"][i])
        rows = ds.call_rows(i)
        assert len(x["hash_ids"]) == rows.size  # cumulative: the whole prompt
        for new, row in zip(x["hash_ids"], rows.tolist(), strict=True):
            # one id per (trace, recorded id): sharing kept within a trace, none across traces
            key = (int(trace[i]), int(ds.block_id[row]))
            assert by_id.setdefault(new, key) == key
            assert new <= seen + 1  # numbered 0.. by first appearance
            seen = max(seen, new)
    assert len(by_id) == len(set(by_id.values())) == len(set(cls.tolist()))
    meta = json.loads(meta_path(out).read_text())
    assert meta["lines"] == ds.n_calls and meta["block_size"] == ds.block_sizes[0]
    assert meta["hash_ids"].startswith("cumulative")
    assert meta["dataset"]["decode_key"] == ds.decode_key
    assert meta["dataset"]["manifest_version"] == ds.manifest["manifest_version"]
    assert meta["dataset"]["tokenizer_source"] == "builtin:deepseek"
    assert "t_abs" in meta["ordering"] and meta["distinct_blocks"] == len(by_id)
    import hashlib

    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() == s.sha256


def test_aiperf_payload_prompts_are_the_expanded_tokens(ds, tmp_path):
    out = tmp_path / "p.jsonl"
    export_dataset(ds, "aiperf-payload", out, model="tiny")
    lines = _lines(out)
    assert len(lines) == ds.n_calls
    for x, i in zip(lines, timeline_order(ds).tolist(), strict=True):
        assert x["payload"]["prompt"] == ds.expand_call(i).tolist()
        assert x["payload"]["max_tokens"] == x["output_length"] == int(ds.calls["tokens_out"][i])
        assert x["payload"]["model"] == "tiny"
        trace = ds.traces[int(ds.calls["trace"][i])]["id"]
        assert x["session_id"] == f"{trace}:{int(ds.calls['conv'][i])}"
    ts = [x["timestamp"] for x in lines]
    assert ts == sorted(ts)


def test_text_export_sessions_delays_and_drift(ds, tmp_path):
    from weka_assets.decoding.drift import codec
    from weka_assets.decoding.tokenizers import resolve_tokenizer

    out = tmp_path / "t.jsonl"
    export_dataset(ds, "text", out)
    lines = _lines(out)
    assert len(lines) == ds.n_calls
    _, decode = codec(resolve_tokenizer("deepseek"))
    last: dict = {}
    starts: dict = {}
    for x, i in zip(lines, timeline_order(ds).tolist(), strict=True):
        starts.setdefault(x["trace"], x["timestamp"])
        before = last.get(x["session"], starts[x["trace"]])
        assert x["delay"] == x["timestamp"] - before >= 0
        last[x["session"]] = x["timestamp"]
        assert x["max_tokens"] == int(ds.calls["tokens_out"][i])
    for x, i in list(zip(lines, timeline_order(ds).tolist(), strict=True))[:5]:
        assert x["text"] == decode(ds.expand_call(i).tolist())
    meta = json.loads(meta_path(out).read_text())
    assert meta["retokenization_drift"]["calls_checked"] > 0
    assert (
        meta["tokenizer_used"]["files_sha256"]
        == ds.manifest["key_material"]["tokenizer"]["files_sha256"]
    )


def test_a_failure_mid_export_leaves_no_file(ds, tmp_path, monkeypatch):
    out = tmp_path / "m.jsonl"
    real = formats_mod._Lines.add
    calls = {"n": 0}

    def failing(self, obj):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("disk on fire")
        return real(self, obj)

    monkeypatch.setattr(formats_mod, "FLUSH_BYTES", 1)  # bytes reach the file aside first
    monkeypatch.setattr(formats_mod._Lines, "add", failing)
    with pytest.raises(RuntimeError):
        export_dataset(ds, "mooncake", out)
    assert list(tmp_path.iterdir()) == []
    # an earlier export stays whole
    monkeypatch.setattr(formats_mod._Lines, "add", real)
    export_dataset(ds, "mooncake", out)
    before = out.read_bytes()
    calls["n"] = 0
    monkeypatch.setattr(formats_mod._Lines, "add", failing)
    with pytest.raises(RuntimeError):
        export_dataset(ds, "aiperf-payload", out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl", "m.jsonl.meta.json"]


def test_several_block_sizes_are_refused_for_mooncake(ds, tmp_path):
    traces = [dict(t) for t in ds.traces]
    traces[-1]["block_size"] = 32
    two = DecodedDataset(
        filler=ds.filler, block_trace=ds.block_trace, block_id=ds.block_id,
        block_offsets=ds.block_offsets, tail_rows=ds.tail_rows, calls=ds.calls,
        traces=traces, manifest=ds.manifest,
    )  # fmt: skip
    with pytest.raises(ExportError, match="2 block sizes"):
        export_dataset(two, "mooncake", tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "weka_assets.cli", "export", *map(str, args)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli(ds, tmp_path):
    out = tmp_path / "m.jsonl"
    run = _cli(ds.path, "--format", "mooncake", "--out", out)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["lines"] == ds.n_calls and summary["format"] == "mooncake"
    assert summary["decode_key"] == ds.decode_key and out.is_file()
    assert meta_path(out).is_file()
    # bad input: one line, exit 2
    for args in (
        (tmp_path / "nope", "--format", "mooncake", "--out", out),
        (tmp_path, "--format", "mooncake", "--out", tmp_path / "x.jsonl"),
        (ds.path, "--format", "text", "--out", out, "--tokenizer", str(tmp_path)),
    ):
        bad = _cli(*args)
        assert bad.returncode == 2, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert _cli(ds.path, "--format", "csv", "--out", out).returncode == 2
