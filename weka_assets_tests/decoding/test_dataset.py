"""Storage: decode keys, reuse, datasets side by side, atomic publication, drift measurement."""

import numpy as np
import pytest

from weka_assets.decoding.dataset import is_complete, open_dataset
from weka_assets.decoding.prf import block_offsets, tail_offset
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.errors import CorpusRejected, DecodeError
from weka_assets.pipeline import decode_corpus
from weka_assets_tests.corpora import synthetic


@pytest.fixture(scope="module")
def corpus():
    return synthetic("semianalysis", traces=4, seed=5)


def test_same_key_is_reused_and_different_keys_sit_side_by_side(tmp_path, corpus):
    first = decode_corpus(corpus, tmp_path, measure_drift=False)
    again = decode_corpus(corpus, tmp_path, measure_drift=False)
    assert not first.reused and again.reused and again.path == first.path
    seeded = decode_corpus(corpus, tmp_path, DecodeSettings(seed=1), measure_drift=False)
    session = decode_corpus(
        corpus, tmp_path, DecodeSettings(scope_policy="session"), measure_drift=False
    )
    bumped = decode_corpus(corpus, tmp_path, manifest_version=999, measure_drift=False)
    keys = {first.key, seeded.key, session.key, bumped.key}
    assert len(keys) == 4 and all(is_complete(tmp_path / k) for k in keys)
    assert open_dataset(bumped.path).manifest["manifest_version"] == 999
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(keys)


def test_key_covers_corpus_content(tmp_path, corpus):
    other = tmp_path / "other.jsonl"
    other.write_bytes(corpus.read_bytes().replace(b'"out":', b'"out": ', 1))
    a = decode_corpus(corpus, tmp_path / "s", measure_drift=False)
    b = decode_corpus(other, tmp_path / "s", measure_drift=False)
    assert a.key != b.key and a.material["corpus_digest"] != b.material["corpus_digest"]


def test_no_half_written_dataset_is_ever_visible(tmp_path, corpus, monkeypatch):
    import pyarrow.parquet as pq  # the dataset module imports it where it writes

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        decode_corpus(corpus, tmp_path, measure_drift=False)
    assert list(tmp_path.glob("*/manifest.json")) == []
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_stored_files_carry_checksums(tmp_path, corpus):
    out = decode_corpus(corpus, tmp_path, measure_drift=False)
    open_dataset(out.path, verify=True)
    with open(out.path / "block_offsets.npy", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\xff\xff\xff\xff")
    with pytest.raises(DecodeError, match="checksum"):
        open_dataset(out.path, verify=True)


def test_failing_corpus_is_never_decoded(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        synthetic("semianalysis", traces=2, seed=5).read_text().replace('"local"', '"galaxy"', 1)
    )
    with pytest.raises(CorpusRejected, match="hard error"):
        decode_corpus(bad, tmp_path / "out", measure_drift=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*/manifest.json"))


def test_expansion_matches_the_documented_construction(tmp_path, corpus):
    """Rebuild a few calls' tokens from the PRF formula alone and compare with expand_call."""
    ds = open_dataset(decode_corpus(corpus, tmp_path, measure_drift=False).path)
    f, n = np.asarray(ds.filler), ds.filler.size
    for i in range(0, ds.n_calls, max(1, ds.n_calls // 15)):
        c = {k: int(v[i]) for k, v in ds.calls.items()}
        scope = ds.traces[c["trace"]]["id"]
        expected = []
        for h in ds.call_ids(i)[: c["n_full"] + (1 if c["partial_len"] else 0)]:
            offs = block_offsets(0, scope, np.array([h]), 4, n)[0]
            block = np.concatenate([f[(o + np.arange(16)) % n] for o in offs])
            expected.append(block)
        tokens = np.concatenate(expected) if expected else np.empty(0, np.int32)
        tokens = tokens[: c["n_full"] * 64 + c["partial_len"]]
        if c["tail_len"]:
            conv_calls = [
                j
                for j in range(ds.n_calls)
                if ds.calls["trace"][j] == c["trace"] and ds.calls["conv"][j] == c["conv"]
            ]
            ordinal = sorted(
                conv_calls, key=lambda j: (ds.calls["request"][j], ds.calls["inner"][j])
            ).index(i)
            t0 = tail_offset(0, scope, c["conv"], ordinal, n)
            tokens = np.concatenate([tokens, f[(t0 + np.arange(c["tail_len"])) % n]])
        assert (ds.expand_call(i) == tokens).all(), i


def test_retokenisation_drift_is_measured_and_reported(tmp_path, corpus):
    out = decode_corpus(corpus, tmp_path)
    drift = out.manifest["retokenization_drift"]
    assert drift["calls_checked"] > 0 and drift["tokens_checked"] > 0
    assert 0 <= drift["mismatch_fraction"] <= 1
    assert open_dataset(out.path).manifest["retokenization_drift"] == drift


def test_stored_dataset_is_read_in_chunks_like_the_one_in_memory(tmp_path, corpus, monkeypatch):
    """What the coordinator of a replay reads with file reads (trace bounds, columns, a
    shard's calls) equals the same thing taken from the table in memory, at any chunk size;
    calls.parquet (written from calls.npy, in row groups) holds the same table."""
    import pyarrow.parquet as pq

    import weka_assets.decoding.dataset as dataset

    monkeypatch.setattr(dataset, "CHUNK_ROWS", 7)  # chunk edges inside traces
    out = decode_corpus(corpus, tmp_path, measure_drift=False)
    stored = open_dataset(out.path)
    assert stored.records is not None
    in_memory = dataset.DecodedDataset(
        filler=np.array(stored.filler),
        block_trace=np.array(stored.block_trace),
        block_id=np.array(stored.block_id),
        block_offsets=np.array(stored.block_offsets),
        tail_rows=np.array(stored.tail_rows),
        calls={k: np.array(v) for k, v in stored.calls.items()},
        traces=stored.traces,
    )
    assert stored.trace_slices() == in_memory.trace_slices()
    assert len(stored.trace_slices()) == 4 and stored.trace_slices()[-1].stop == stored.n_calls
    rows = stored.trace_rows()
    assert (rows == in_memory.trace_rows()).all() and rows[-1] == stored.block_id.size
    for t in range(4):  # each trace's block rows carry its index, and only those
        assert (np.asarray(stored.block_trace)[rows[t] : rows[t + 1]] == t).all()
    table = pq.read_table(out.path / "calls.parquet")
    assert table.num_rows == stored.n_calls
    for k in dataset.CALL_COLUMNS:
        assert (stored.column(k) == in_memory.column(k)).all()
        assert (table.column(k).to_numpy() == np.asarray(stored.calls[k])).all()
    for a, b in ((0, 3), (5, 19), (stored.n_calls - 2, stored.n_calls)):
        got, want = stored.calls_range(a, b), in_memory.calls_range(a, b)
        assert all((got[k] == want[k]).all() and got[k].size == b - a for k in got)
    for first, last in ((0, 1), (1, 3), (2, 4)):
        s, m = stored.shard(first, last), in_memory.shard(first, last)
        assert s.trace_slices() == m.trace_slices()
        for name in ("block_trace", "block_id", "block_offsets", "tail_rows"):
            assert (getattr(s, name) == getattr(m, name)).all()
        assert all((s.calls[k] == m.calls[k]).all() for k in s.calls)
        start = stored.trace_slices()[first].start
        assert s.n_calls == stored.trace_slices()[last - 1].stop - start
        for j in range(s.n_calls):
            assert (s.expand_call(j) == stored.expand_call(start + j)).all()


def test_verification_reads_a_file_again_only_once_it_changed(tmp_path, corpus, monkeypatch):
    """Each step of a run verifies the datasets it opens; a file this process has hashed and
    that has not changed since is not read again, and a changed one (same size, one bit) is
    read again and fails the check."""
    import hashlib
    import time

    from weka_assets.decoding import dataset

    out = decode_corpus(corpus, tmp_path, measure_drift=False)
    time.sleep(0.1)  # files older than a clock tick: their identity says they are unchanged
    hashed = []
    real = hashlib.sha256
    # a file is hashed chunk by chunk from sha256(); the manifest's own digest, sha256(bytes)
    monkeypatch.setattr(
        dataset.hashlib, "sha256", lambda *a: real(*a) if a else hashed.append(1) or real()
    )
    assert dataset.verify_dataset(out.path) is None
    first = len(hashed)
    assert dataset.verify_dataset(out.path) is None
    assert len(hashed) == first  # nothing read again
    rows = out.path / "tail_rows.npy"
    data = bytearray(rows.read_bytes())
    data[-1] ^= 1
    rows.write_bytes(bytes(data))  # in place, at once: same size, same inode
    assert dataset.verify_dataset(out.path) == f"{rows}: checksum mismatch"
    assert len(hashed) == first + 1
