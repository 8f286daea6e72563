"""A dataset's bytes depend on its content only: two machines decoding one key write identical
folders, whatever their local paths, clocks, hosts or processes. Where and when a dataset was
written is its provenance record, beside the folder, never in it."""

import shutil
import time
from pathlib import Path

import orjson
import pytest

from weka_assets.decoding.dataset import open_dataset, provenance_path
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.pipeline import decode_corpus, replay, write_json
from weka_assets.replay.capacity import capacity_curve, default_capacities
from weka_assets.replay.schedule import Arrival
from weka_assets_tests.conftest import REAL_SAMPLE
from weka_assets_tests.corpora import synthetic


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))}


def linked_copy(corpus: Path, dest: Path) -> Path:
    """The corpus at another path (its files linked, never copied into the repository)."""
    dest.mkdir(parents=True)
    if corpus.is_file():
        (dest / corpus.name).symlink_to(corpus)
        return dest / corpus.name
    for f in sorted(corpus.iterdir()):
        (dest / f.name).symlink_to(f)
    return dest


def decode_twice(corpus: Path, tmp_path: Path, monkeypatch, settings=DecodeSettings()):
    """Decode `corpus` as two machines would: from two local copies, into two roots, at two
    times; returns both outcomes."""
    first = decode_corpus(linked_copy(corpus, tmp_path / "a" / "corpus"), tmp_path / "a" / "out",
                          settings)  # fmt: skip
    now = time.time
    monkeypatch.setattr(time, "time", lambda: now() + 86_400)  # a day later
    second = decode_corpus(
        linked_copy(corpus, tmp_path / "b" / "elsewhere" / "traces"),
        tmp_path / "b" / "datasets",
        settings,
    )
    return first, second


def assert_identical(first, second) -> None:
    assert first.key == second.key and first.path != second.path
    a, b = files_of(first.path), files_of(second.path)
    assert set(a) == set(b) and "manifest.json" in a and "traces.parquet" in a
    assert [n for n in a if a[n] != b[n]] == []
    # ... while their provenance records, beside them, tell the two apart
    pa, pb = (orjson.loads(provenance_path(o.path).read_bytes()) for o in (first, second))
    assert pa == first.provenance and pb == second.provenance
    assert pa["written_from"] == str(first.path) and pb["written_from"] == str(second.path)
    assert pb["created_unix"] > pa["created_unix"] and pa["corpus"] != pb["corpus"]
    assert {"host", "pid"} <= set(pa)


@pytest.mark.slow
def test_the_real_sample_from_two_places_decodes_to_identical_bytes(tmp_path, monkeypatch):
    first, second = decode_twice(REAL_SAMPLE, tmp_path, monkeypatch)
    assert_identical(first, second)
    manifest = orjson.loads((first.path / "manifest.json").read_bytes())
    assert "created_unix" not in manifest and manifest["tokenizer_source"] == "builtin:deepseek"
    files = {t["file"] for t in open_dataset(first.path).traces}
    assert files == {p.name for p in REAL_SAMPLE.iterdir()}  # names within the corpus

    # results computed from them name the dataset by its key, never by its path
    results = []
    for out in (first, second):
        result, _ = replay(out.path)
        ds = open_dataset(out.path)
        curve = capacity_curve(ds, default_capacities(ds, 3), Arrival(), 1.0)
        assert result.dataset == curve.dataset == out.key
        results.append(
            [write_json(x, out.path.parent / f"{n}.json").read_bytes() for n, x in
             (("result", result), ("curve", curve))]
        )  # fmt: skip
    assert results[0] == results[1]


def test_a_local_tokenizer_folder_is_named_the_same_everywhere(tmp_path, monkeypatch):
    from weka_assets.decoding.tokenizers import resolve_tokenizer

    folder = Path(resolve_tokenizer().folder)
    copies = []
    for where in ("a", "b/deeper"):
        dest = tmp_path / "tok" / where / "my-tokenizer"
        dest.mkdir(parents=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(folder / name, dest / name)
        copies.append(dest)
    corpus = synthetic("kv-cache-tester", traces=3, seed=3)
    first = decode_corpus(
        linked_copy(corpus, tmp_path / "a" / "corpus"),
        tmp_path / "a" / "out",
        DecodeSettings(tokenizer=str(copies[0])),
    )
    now = time.time
    monkeypatch.setattr(time, "time", lambda: now() + 86_400)  # a day later
    second = decode_corpus(
        linked_copy(corpus, tmp_path / "b" / "corpus"),
        tmp_path / "b" / "out",
        DecodeSettings(tokenizer=str(copies[1])),
    )
    assert_identical(first, second)
    manifest = orjson.loads((first.path / "manifest.json").read_bytes())
    assert manifest["tokenizer_source"] == "local:my-tokenizer"
    assert first.provenance["tokenizer_source"] == str(copies[0])


def test_trace_files_are_still_found_through_the_provenance_record(tmp_path):
    """A dataset names trace files within the corpus; the live replay still reads each
    subagent's recorded status from them, finding the corpus through the provenance record."""
    from weka_assets.replay.live import subagent_status

    corpus = linked_copy(synthetic("kv-cache-tester", traces=4, seed=9), tmp_path / "corpus")
    out = decode_corpus(corpus, tmp_path / "out", measure_drift=False)
    ds = open_dataset(out.path)
    assert {t["file"] for t in ds.traces} == {corpus.name}
    found = subagent_status(ds)
    assert found and found == subagent_status(ds, corpus=corpus)
    provenance_path(out.path).unlink()
    assert subagent_status(open_dataset(out.path)) == {}  # no record: the corpus is unknown


def test_one_pass_for_both_scopes_writes_what_two_passes_write(tmp_path):
    """The datasets of the contract's scope and the legacy one, decoded in one shared pass (as
    the `decoded_datasets` step does), are byte for byte the datasets two separate decodes
    write; with one of them stored already, the pass decodes only the other."""
    from weka_assets.pipeline import Variant, decode_variants, scope_report

    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real kv-cache-tester sample not found at {REAL_SAMPLE}")
    trace, session = DecodeSettings(), DecodeSettings(scope_policy="session")
    report = scope_report(REAL_SAMPLE)
    apart = [
        decode_corpus(REAL_SAMPLE, tmp_path / "apart", s, report=report, measure_drift=d)
        for s, d in ((trace, True), (session, False))
    ]
    together = decode_variants(
        REAL_SAMPLE, tmp_path / "together", [Variant(trace), Variant(session, False)], report
    )
    assert apart[0].key != apart[1].key
    for a, b in zip(apart, together, strict=True):
        assert a.key == b.key and not b.reused and b.published
        fa, fb = files_of(a.path), files_of(b.path)
        assert [n for n in fa if fa[n] != fb.get(n)] == [] and set(fa) == set(fb)
    # the legacy dataset gone, the contract's kept: only the legacy one is decoded again
    shutil.rmtree(together[1].path)
    again = decode_variants(
        REAL_SAMPLE, tmp_path / "together", [Variant(trace), Variant(session, False)], report
    )
    assert [o.reused for o in again] == [True, False]
    assert files_of(again[1].path) == files_of(apart[1].path)
