"""The scope pass's kept parse (traces/parsed.py): traces rebuilt from it equal parsing's, the
file has the same bytes wherever it is written, a decode from it writes the same datasets as a
decode from the JSON, and anything amiss sends the decode back to the JSON."""

import dataclasses
import filecmp
import logging
import shutil

import numpy as np
import pytest

from weka_assets.decoding.settings import DecodeSettings
from weka_assets.pipeline import Variant, decode_corpus, decode_variants, scope_report
from weka_assets.traces.parsed import (
    ParsedRecord,
    analyse_and_encode,
    corpus_root,
    decode_frame,
    encode_trace,
    keep_parse,
    read_parsed,
)
from weka_assets.traces.reader import (
    CorpusFormat,
    corpus_digest,
    detect_format,
    file_digests,
    iter_raw_records,
    parse_record,
)
from weka_assets_tests import bailian
from weka_assets_tests.bailian import bailian_requests, write_bailian
from weka_assets_tests.corpora import REAL_SAMPLE, synthetic, truncated
from weka_assets_tests.mooncake import mooncake_requests, write_mooncake


def assert_equal(a, b, where=""):
    """Dataclass instances equal field by field: arrays in value and dtype, scalars in value
    and type, nested dataclasses likewise."""
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        here = f"{where}.{f.name}"
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), here
        elif isinstance(x, list) and x and dataclasses.is_dataclass(x[0]):
            assert len(x) == len(y), here
            for k, (u, v) in enumerate(zip(x, y, strict=True)):
                assert_equal(u, v, f"{here}[{k}]")
        else:
            assert x == y and type(x) is type(y), (here, x, y)


def corpora(tmp_path_factory=None):
    out = [synthetic(p, traces=4, seed=3) for p in ("semianalysis", "kv-cache-tester")]
    out.append(truncated())  # hash lists cut short: unhashed tails of whole blocks
    if REAL_SAMPLE.is_dir():
        out.append(REAL_SAMPLE)
    return out


@pytest.mark.parametrize("corpus", corpora(), ids=lambda p: p.name)
def test_a_rebuilt_trace_equals_the_parsed_one(corpus):
    root = corpus_root(corpus)
    n = 0
    for raw in iter_raw_records(corpus):
        trace = parse_record(raw).trace
        back = decode_frame(encode_trace(trace, root), root)
        assert_equal(trace, back, trace.id)
        # the conversations hold the very calls of the document-order list, as parsing builds
        assert [id(c) for c in back.parent_first_calls()] == sorted(
            (id(c) for c in back.calls), key=[id(c) for c in back.parent_first_calls()].index
        )
        assert all(c in back.calls for s in back.subagents for c in s.calls)
        n += 1
    assert n > 0


def _requests_corpus(kind, folder):
    if kind == "mooncake":
        return write_mooncake(folder / "m.jsonl", mooncake_requests(40)), CorpusFormat(kind, 512)
    path = write_bailian(folder / "b.jsonl", bailian_requests(9, turns=(1, 6), seed=5))
    return path, CorpusFormat(kind, bailian.BLOCK)


@pytest.mark.parametrize("kind", ["mooncake", "bailian"])
def test_a_file_of_requests_keeps_its_columns_and_decodes_from_them(kind, tmp_path, monkeypatch):
    """A Mooncake or Bailian file is one table of requests: the scope pass keeps its columns,
    the table rebuilt from them equals the parsed one column by column, and the decode reads
    them instead of the JSON (issue 27: the Dagster path read such a file twice), to the very
    dataset a decode from the JSON writes."""
    from weka_assets.decoding import decoder

    path, fmt = _requests_corpus(kind, tmp_path / "c")
    fmt = detect_format(path, fmt)
    (raw,) = list(iter_raw_records(path, fmt=fmt))
    rec = parse_record(raw)
    analysed, frame = analyse_and_encode(raw, str(corpus_root(path)))
    assert analysed.done == analysed.total == path.stat().st_size
    back = ParsedRecord(bytearray(b"".join(bytes(b) for b in frame)), str(path.parent)).record()
    assert_equal(rec.trace, back.trace, kind)
    assert back.null_keys_dropped == rec.null_keys_dropped and back.error is None
    assert back.trace.ids.flags.writeable  # as parsing's columns are
    dest = tmp_path / "m.parsed"
    report, writer, digest, fmt = kept(path, dest, fmt)
    assert report.passed and report.traces == 1 and writer.written and writer.traces == 1
    assert report == scope_report(path, fmt=fmt)  # keeping the parse changes no figure
    assert read_parsed(dest, digest, fmt, path) is not None
    variants = [Variant(DecodeSettings(), False)]
    parsed_in_decode = []
    real = decoder.parse_record
    monkeypatch.setattr(
        decoder, "parse_record", lambda raw: parsed_in_decode.append(1) or real(raw)
    )
    (out,) = decode_variants(
        path, tmp_path / "ds", variants, report, digest=digest, fmt=fmt, parsed=dest
    )
    assert out.from_parse and parsed_in_decode == []  # the JSON was not read again
    monkeypatch.setattr(decoder, "parse_record", real)
    alone = decode_corpus(path, tmp_path / "alone", fmt=fmt, measure_drift=False)
    assert alone.key == out.key
    names = sorted(p.name for p in out.path.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(out.path, alone.path, names, shallow=False)
    assert match == names and not mismatch and not errors
    # kept elsewhere, the same bytes (the file is named relative to the corpus folder)
    elsewhere = tmp_path / "deep" / "folder" / path.name
    elsewhere.parent.mkdir(parents=True)
    shutil.copyfile(path, elsewhere)
    kept(elsewhere, tmp_path / "m2.parsed", fmt)
    assert (tmp_path / "m2.parsed").read_bytes() == dest.read_bytes()


def kept(corpus, dest, fmt=None):
    fmt = detect_format(corpus, fmt)
    digest = corpus_digest(file_digests(corpus))
    with keep_parse(dest, digest, fmt) as writer:
        report = scope_report(corpus, fmt=fmt, keep=writer)
    return report, writer, digest, fmt


def test_the_kept_parse_has_the_same_bytes_wherever_the_corpus_lies(tmp_path):
    corpus = synthetic("semianalysis", traces=5, seed=4)
    elsewhere = tmp_path / "deep" / "folder" / corpus.name
    elsewhere.parent.mkdir(parents=True)
    shutil.copyfile(corpus, elsewhere)
    report, writer, digest, fmt = kept(corpus, tmp_path / "a.parsed")
    report2, writer2, _, _ = kept(elsewhere, tmp_path / "b.parsed")
    assert writer.written and writer2.written and writer.traces == 5
    assert (tmp_path / "a.parsed").read_bytes() == (tmp_path / "b.parsed").read_bytes()
    # keeping the parse changes no figure
    assert report == scope_report(corpus)
    assert report2.relative_to(elsewhere) == report.relative_to(corpus)
    # read back at the other place: file names are that machine's
    recs = list(read_parsed(tmp_path / "a.parsed", digest, fmt, elsewhere))
    assert [r.record().trace.file for r in recs] == [str(elsewhere)] * 5
    assert recs[-1].done == recs[-1].total == corpus.stat().st_size


def test_a_record_that_does_not_parse_keeps_no_parse(tmp_path):
    good = synthetic("kv-cache-tester", traces=3, seed=5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{not json\n")
    report, writer, _, _ = kept(bad, tmp_path / "bad.parsed")
    assert report.hard_errors and not writer.written
    assert not (tmp_path / "bad.parsed").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]  # nothing aside left either


def test_an_error_in_the_pass_keeps_no_parse(tmp_path):
    corpus = synthetic("kv-cache-tester", traces=3, seed=5)
    digest = corpus_digest(file_digests(corpus))
    with pytest.raises(KeyError), keep_parse(tmp_path / "x.parsed", digest, CorpusFormat("weka")):
        raise KeyError("interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def kept_sample(tmp_path_factory):
    corpus = synthetic("semianalysis", traces=6, seed=8)
    dest = tmp_path_factory.mktemp("kept") / "c.parsed"
    return (corpus, dest, *kept(corpus, dest))


def damaged(path, tmp_path, how):
    out = tmp_path / "damaged.parsed"
    data = bytearray(path.read_bytes())
    if how == "flipped":
        data[len(data) // 3] ^= 0x10
    elif how == "cut":
        data = data[: len(data) // 2]
    elif how == "not a parse":
        data = b"[1, 2, 3]\n"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(
    "how, why",
    [
        ("flipped", "do not match their sha256"),
        ("cut", "no trailer"),
        ("not a parse", "no trailer"),
        ("digest", "another corpus digest"),
        ("limits", "another fingerprint"),
        ("prompt limit", "another fingerprint"),
        ("output limit", "another fingerprint"),
        ("missing", "No such file"),
    ],
)
def test_a_parse_that_is_not_current_and_intact_is_refused(
    kept_sample, tmp_path, caplog, monkeypatch, how, why
):
    corpus, path, _, _, digest, fmt = kept_sample
    if how in ("flipped", "cut", "not a parse"):
        path = damaged(path, tmp_path, how)
    elif how == "digest":
        digest = "0" * 64
    elif how == "limits":  # another parser limit: another parse
        monkeypatch.setenv("WEKA_ASSETS_MAX_IDS_PER_CALL", "123456")
    elif how == "prompt limit":  # a declared size's limit decides what parses too
        monkeypatch.setenv("WEKA_ASSETS_MAX_PROMPT_TOKENS", "123456789")
    elif how == "output limit":
        monkeypatch.setenv("WEKA_ASSETS_MAX_OUTPUT_TOKENS", "123456789")
    else:
        path = tmp_path / "nothing.parsed"
    with caplog.at_level(logging.WARNING, logger="weka_assets.traces.parsed"):
        assert read_parsed(path, digest, fmt, corpus) is None
    assert why in caplog.text and "parsing the JSON" in caplog.text


def test_decoding_from_the_parse_writes_the_datasets_the_json_gives(kept_sample, tmp_path):
    corpus, path, report, _, digest, _ = kept_sample
    variants = [
        Variant(DecodeSettings(), False),
        Variant(DecodeSettings(scope_policy="session"), False),
    ]
    from_json = decode_variants(corpus, tmp_path / "json", variants, report, digest=digest)
    from_parse = decode_variants(
        corpus, tmp_path / "parse", variants, report, digest=digest, parsed=path
    )
    assert [o.from_parse for o in from_json] == [False, False]
    assert [o.from_parse for o in from_parse] == [True, True]
    for a, b in zip(from_json, from_parse, strict=True):
        assert a.key == b.key
        names = sorted(p.name for p in a.path.iterdir())
        match, mismatch, errors = filecmp.cmpfiles(a.path, b.path, names, shallow=False)
        assert match == names and not mismatch and not errors
    # a damaged parse: the JSON is parsed instead, the same dataset comes out
    bad = damaged(path, tmp_path, "flipped")
    again = decode_variants(
        corpus, tmp_path / "bad", variants[:1], report, digest=digest, parsed=bad
    )
    assert not again[0].from_parse and again[0].key == from_json[0].key
    assert (again[0].path / "block_offsets.npy").read_bytes() == (
        from_json[0].path / "block_offsets.npy"
    ).read_bytes()


def test_a_weka_parse_kept_under_the_registrys_block_size_is_the_decodes(tmp_path):
    """The scope pass reads a Weka corpus with its registry entry's block size (64 by default),
    the decode with the gate's (None: Weka traces state theirs): the same parse either way, so
    the decode reads it (issue 27: every Dagster decode parsed the JSON again)."""
    corpus = synthetic("semianalysis", traces=4, seed=3)
    digest = corpus_digest(file_digests(corpus))
    kept = tmp_path / "parsed.bin"
    scope_fmt = detect_format(corpus, CorpusFormat(None, 64))
    with keep_parse(kept, digest, scope_fmt) as writer:
        report = scope_report(corpus, fmt=scope_fmt, keep=writer)
    assert report.passed and kept.exists()
    decode_fmt = CorpusFormat("weka", None)  # what decoded_dataset passes (the gate's)
    assert read_parsed(kept, digest, decode_fmt, corpus) is not None
    (out,) = decode_variants(
        corpus, tmp_path / "ds", [Variant(DecodeSettings())], report, fmt=decode_fmt, parsed=kept
    )
    assert out.from_parse


def test_the_command_lines_decode_reads_its_scope_pass_parse(tmp_path, monkeypatch):
    """`weka-assets decode` keeps what its scope pass parsed (a file in a temporary folder,
    gone after) and decodes from it: no trace is parsed from the JSON a second time, and the
    dataset is the one a decode from the JSON writes."""
    from weka_assets.decoding import decoder
    from weka_assets_tests.test_cli import cli

    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "1")  # in process: the count below sees it
    corpus = synthetic("semianalysis", 6)
    parsed_in_decode = []
    real = decoder.parse_record
    monkeypatch.setattr(
        decoder, "parse_record", lambda raw: parsed_in_decode.append(1) or real(raw)
    )
    run = cli("decode", corpus, "--out", tmp_path / "cli")
    assert run.rc == 0, run.err
    assert parsed_in_decode == []  # every trace came from the kept parse
    monkeypatch.setattr(decoder, "parse_record", real)
    want = decode_corpus(corpus, tmp_path / "json", report=scope_report(corpus))
    assert run.last.endswith(want.key)
    got = tmp_path / "cli" / want.key
    names = sorted(p.name for p in want.path.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(want.path, got, names, shallow=False)
    assert match == names and not mismatch and not errors
