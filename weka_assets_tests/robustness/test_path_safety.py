"""Names from outside (trace ids, agent ids, corpus and tokenizer names, source URIs, store
keys) never become a path or an S3 key outside the store: each hostile name is refused with a
clear error, or used where it cannot escape. Every test runs the real operations, then walks
the temporary file system (and lists the buckets) to prove nothing landed elsewhere.
"""

import contextlib
import io
import os
import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import dagster as dg
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from weka_assets import cli
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.decoding.tokenizers import resolve_tokenizer, safe_name
from weka_assets.definitions import build_defs, resources_for
from weka_assets.defs.io_manager import DescriptorIOManager
from weka_assets.defs.partitions import configured_tokenizers, validate_key
from weka_assets.defs.resources import CorpusCatalog, WekaStore
from weka_assets.errors import WekaError
from weka_assets.instance.materialize import materialize_corpus, run_selection
from weka_assets.pipeline import decode_corpus, replay, scope_report
from weka_assets.sources import (
    RegistryError,
    SourceError,
    SourceURIError,
    fetch,
    parse_registry,
    parse_source,
    resolve_source,
)
from weka_assets.sources.hf import _record_ref
from weka_assets.sources.uri import SourceSpec
from weka_assets.store import Store, StoreError, key
from weka_assets.synthetic import generate_corpus, write_corpus
from weka_assets_tests.robustness.fuzzing import fuzz_settings, tried

HOSTILE = [
    "../../escape",
    "../escape",
    "..",
    ".",
    "",
    "/abs/escape",
    "a/../../escape",
    "a/./b",
    "a//b",
    "a/",
    "a\\..\\..\\escape",
    "x\0y",
    "datasets/../../../escape",
]


def outside(root: Path, *allowed: Path) -> list[Path]:
    """Every file or folder under `root` that is not `allowed`, inside it, or above it."""
    allowed = tuple(p.resolve() for p in allowed)
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name).resolve()
            if not any(p == a or p.is_relative_to(a) or a.is_relative_to(p) for a in allowed):
                bad.append(p)
    return sorted(bad)


# ---- store keys -------------------------------------------------------------------------

key_parts = st.lists(
    st.one_of(
        st.sampled_from(HOSTILE + ["ok", "raw", "datasets/abc", "~", "$HOME", "%2e%2e"]),
        st.text(st.characters(codec="utf-8"), max_size=12),
    ),
    min_size=1,
    max_size=4,
)


@pytest.mark.fuzz
@fuzz_settings(300)
@given(parts=key_parts)
def test_fuzz_store_keys_stay_below_the_base(parts):
    """`key()` refuses, or returns a key whose path and URL stay below the base."""
    tried()
    try:
        k = key(*parts)
    except StoreError as exc:
        assert "refusing store key" in str(exc)
        return
    pieces = k.split("/")
    assert all(p not in ("", ".", "..") and "\\" not in p and "\0" not in p for p in pieces)
    root = Path("/nonexistent-store-root")
    assert (root / k).resolve().is_relative_to(root)
    assert PurePosixPath("bucket/prefix", k).as_posix().startswith("bucket/prefix/")


@pytest.mark.parametrize("name", HOSTILE)
def test_local_store_refuses_hostile_keys(tmp_path, name):
    root = tmp_path / "store"
    store = Store(str(root))
    (root / "datasets" / "k1").mkdir(parents=True)
    ops = [
        lambda: store.local(name),
        lambda: store.dir(name),
        lambda: store.url(name),
        lambda: store.exists(name),
        lambda: store.write_bytes(name, b"x"),
        lambda: store.write_bytes(f"datasets/{name}/manifest.json", b"{}"),
        lambda: store.read_bytes(name),
        lambda: store.pull(name),
        lambda: store.push(name),
        lambda: store.manifests(name),
    ]
    for op in ops:
        with pytest.raises(StoreError, match="refusing store key"):
            op()
    assert outside(tmp_path, root) == []
    assert sorted(p.name for p in root.rglob("*")) == ["datasets", "k1"]


@pytest.mark.parametrize(
    "partition", ["../../escape", "/abs/escape", "a/../../../escape", "../..", "x\0y"]
)
def test_descriptor_keys_of_hostile_partitions_are_refused(tmp_path, partition):
    """Partition keys name descriptor files; Dagster's UI and API can add a dynamic partition
    without our validation, so the IO manager's key must still refuse to leave the store."""
    with pytest.raises(StoreError):
        DescriptorIOManager._key(dg.AssetKey("raw_traces"), partition)


@pytest.mark.fuzz
@fuzz_settings(200)
@given(partition=st.text(max_size=20) | st.sampled_from(HOSTILE))
def test_fuzz_descriptor_keys_stay_in_descriptors(partition):
    tried()
    try:
        k = DescriptorIOManager._key(dg.AssetKey(["trace_scope"]), partition)
    except StoreError:
        return
    assert k.startswith("descriptors/trace_scope/") and k.endswith(".json")
    assert ".." not in k.split("/")


# ---- corpus (partition) and tokenizer names ---------------------------------------------

BAD_NAMES = ["../../x", "/abs", "a/b", "..", ".hidden", "a|b", "a,b", "A", "x" * 65, "", "x\0"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_hostile_corpus_and_tokenizer_names_are_refused(tmp_path, monkeypatch, name):
    with pytest.raises(ValueError, match="invalid corpus name"):
        validate_key(name)
    if name and "," not in name and "\0" not in name:  # "" skipped, "," separates, no NUL in env
        monkeypatch.setenv("WEKA_ASSETS_TOKENIZERS", f"deepseek,{name}")
        with pytest.raises(ValueError, match="invalid tokenizer name"):
            configured_tokenizers()
    text = f"corpora:\n  - name: {orjson.dumps(name).decode()}\n    source: builtin:sample\n"
    with pytest.raises(RegistryError, match="name"):
        parse_registry(text)
    with dg.instance_for_test() as instance:
        with pytest.raises(ValueError):
            materialize_corpus(name, instance, build_defs())
        assert instance.get_dynamic_partitions("corpus") == []


def test_cli_materialize_refuses_a_hostile_corpus_name(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(
            ["materialize", "--corpus", "../../escape", "--store", str(tmp_path / "store")]
        )
    assert rc == 2 and "invalid corpus name '../../escape'" in err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert outside(tmp_path, home, tmp_path / "store") == []


@pytest.mark.parametrize("partition", ["../../escape", "a/b", "..", "/abs/escape"])
def test_a_hostile_dynamic_partition_added_behind_our_back_writes_nothing(tmp_path, partition):
    """A dynamic partition added through Dagster's API (no validation of ours): the run fails
    with a clear message and nothing is written outside the store (nothing in it either)."""
    store_root = tmp_path / "store"
    catalog = CorpusCatalog(corpora={"ok": "builtin:sample-kvt"})
    defs = build_defs(resource_defs=resources_for(WekaStore(base_path=str(store_root)), catalog))
    with dg.instance_for_test(temp_dir=str(_home(tmp_path))) as instance:
        instance.add_dynamic_partitions("corpus", [partition])
        out = run_selection(defs, instance, ["raw_traces", "trace_scope"], partition, "ERROR")
    assert not out.success
    assert any("is not in the catalog" in f for f in out.failures), out.failures
    assert outside(tmp_path, store_root, tmp_path / "home") == []
    assert not (store_root / "raw").exists() and not (store_root / "descriptors").exists()


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return home


@pytest.mark.parametrize("name", ["../../etc", "/etc", "~/../..", "..", "org/..", "../x/../.."])
def test_hostile_tokenizer_names_are_refused_with_one_line(tmp_path, monkeypatch, name):
    """A tokenizer name is only read (a folder, or a hub id), never written to; a name that
    is neither gives one error line (exit 1), no traceback, and writes nothing."""
    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(generate_corpus("kv-cache-tester", 2, 1), tmp_path / "c.jsonl")
    with pytest.raises(WekaError):
        resolve_tokenizer.__wrapped__(name)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(["decode", str(corpus), "--out", str(tmp_path / "out"), "--tokenizer", name])
    assert rc == 1, err.getvalue()
    errors = [line for line in err.getvalue().splitlines() if line.startswith("weka-assets")]
    assert "Traceback" not in err.getvalue() and len(errors) == 1, err.getvalue()
    assert outside(tmp_path, corpus, tmp_path / "out") == []


@pytest.mark.fuzz
@fuzz_settings(200)
@given(text=st.text(max_size=80) | st.sampled_from(HOSTILE))
def test_fuzz_derived_tokenizer_names_are_one_safe_path_segment(text):
    tried()
    name = safe_name(text)
    assert name and "/" not in name and "\\" not in name and name not in (".", "..")
    assert name.isascii() and len(name) <= 64


# ---- trace and agent ids ----------------------------------------------------------------

HOSTILE_IDS = [
    "../../../escape-trace",
    "/tmp/weka-abs-escape",
    "a/../../b",
    "..",
    ".hidden",
    "C:\\Windows\\x",
    "x\0y",
    "new\nline",
    "é" * 300,
]


def test_hostile_trace_and_agent_ids_never_become_paths(tmp_path, monkeypatch):
    """A corpus whose trace and agent ids are paths, decoded with a tokenizer from a folder
    with an odd name: scope report, decode and replay work, and every file written is below
    the dataset root or the machine's filler cache, named by hashes (ids and names are data,
    never file names)."""
    monkeypatch.setenv("WEKA_ASSETS_CACHE", str(tmp_path / "machine-cache"))
    traces = generate_corpus("kv-cache-tester", len(HOSTILE_IDS), 3)
    for k, (t, tid) in enumerate(zip(traces, HOSTILE_IDS, strict=True)):
        t["id"] = tid
        for r in t["requests"]:
            if r["type"] == "subagent":
                r["agent_id"] = HOSTILE_IDS[(k + 1) % len(HOSTILE_IDS)] + r["agent_id"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in traces))
    report = scope_report(corpus)
    assert report.passed, report.failure_reasons
    assert {r["trace"] for r in report.per_trace} == set(HOSTILE_IDS)
    # a real tokenizer in a folder named like a path trick (read, never written)
    tok = tmp_path / "tokenizers" / "..\\..\\evil tok\n"
    shutil.copytree(resolve_tokenizer("deepseek").folder, tok)
    settings = DecodeSettings(tokenizer=str(tok))
    out = decode_corpus(corpus, tmp_path / "datasets", settings, measure_drift=False)
    result, _ = replay(out.path)
    assert result.calls > 0 and result.fidelity_mismatched_calls == 0
    allowed = (corpus, tmp_path / "datasets", tmp_path / "machine-cache", tmp_path / "tokenizers")
    assert outside(tmp_path, *allowed) == []
    written = [p for p in (tmp_path / "datasets").rglob("*")]
    written += [p for p in (tmp_path / "machine-cache").rglob("*")]
    assert all(p.name.isprintable() and "evil" not in p.name for p in written), written
    assert not Path("/tmp/weka-abs-escape").exists()


@pytest.mark.parametrize(
    "tid", ["../../escape", "/abs/escape", "..", ".hidden", "a\\b", "x\0y", "é" * 300, "", 7]
)
def test_synthetic_folder_writer_refuses_ids_that_are_not_file_names(tmp_path, tid):
    traces = generate_corpus("semianalysis", 2, 1)
    traces[1]["id"] = tid
    with pytest.raises(ValueError, match="cannot be a file name"):
        write_corpus(traces, tmp_path / "out" / "folder")
    assert not (tmp_path / "out" / "folder").exists()
    assert outside(tmp_path, tmp_path / "out") == [] and list((tmp_path / "out").iterdir()) == []


def test_synthetic_folder_writer_keeps_odd_but_safe_ids_inside(tmp_path):
    traces = generate_corpus("semianalysis", 3, 1)
    for t, tid in zip(traces, ["new\nline", "a..json", "ü⌘🙂 x"], strict=True):
        t["id"] = tid
    out = write_corpus(traces, tmp_path / "folder")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t['id']}.json" for t in traces)
    assert outside(tmp_path, out) == []


# ---- source URIs ------------------------------------------------------------------------

BAD_URIS = [
    "hf://datasets/org/name@%2Ftmp%2Fescape",
    "hf://datasets/org/name@..%2F..%2Fescape",
    "hf://datasets/org/name@a%2F..%2F..%2Fescape",
    "hf://datasets/org/name@.git",
    "hf://datasets/org/name@refs%2F%2Fx",
    "hf://datasets/org/name@main%2F",
    "hf://datasets/org/name@a%5Cb",
    "hf://datasets/org/name/../../escape.jsonl",
    "hf://datasets/org/name//abs.jsonl",
    "hf://datasets/../name",
    "hf://datasets/org/..",
    "s3://bucket/../escape.jsonl",
    "s3://bucket/a/./escape.jsonl",
    "s3://bucket//abs.jsonl",
    "s3://../escape.jsonl",
    "s3://bucket/a/../",
    "builtin:../../escape",
    "builtin:/etc/passwd",
]


@pytest.mark.parametrize("uri", BAD_URIS)
def test_hostile_source_uris_are_refused(tmp_path, uri):
    with pytest.raises(SourceURIError) as info:
        parse_source(uri)
    assert uri in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SourceError):
        fetch(uri, tmp_path / "out", cache_dir=tmp_path / "cache")
    with pytest.raises(SourceError):
        resolve_source(uri, tmp_path / "cache")
    assert outside(tmp_path, tmp_path / "out", tmp_path / "cache") == []


REPO = "org/traces"


def test_hub_revision_cannot_write_outside_the_hub_cache(hub, tmp_path):
    """A revision that is an absolute path: the Hub (or something answering as it) may know a
    branch by that name, but the client's cache keeps `refs/<revision>`, so it is refused
    before any request; and the cache writer itself refuses a ref outside its folder."""
    target = tmp_path / "outside" / "pwned"
    data = orjson.dumps(generate_corpus("semianalysis", 1, 1)[0]) + b"\n"
    sha = hub.commit(REPO, {"traces.jsonl": data}, branch=str(target))
    uri = f"hf://datasets/{REPO}@{quote(str(target), safe='')}"
    with pytest.raises(SourceURIError, match="invalid revision"):
        fetch(uri, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert hub.requests == []
    spec = SourceSpec(uri, "hf", repo_id=REPO, revision=str(target), path_in_repo="traces.jsonl")
    _record_ref(spec, sha, tmp_path / "cache")
    _record_ref(
        SourceSpec(uri, "hf", repo_id=REPO, revision="../../../outside/pwned2"),
        sha,
        tmp_path / "cache",
    )
    assert not target.exists() and not (tmp_path / "outside").exists()
    assert outside(tmp_path, tmp_path / "out", tmp_path / "cache") == []
    # an ordinary branch is still recorded, inside the cache
    _record_ref(SourceSpec(uri, "hf", repo_id=REPO, revision="feature/x"), sha, tmp_path / "cache")
    assert (
        tmp_path / "cache" / "datasets--org--traces" / "refs" / "feature" / "x"
    ).read_text() == sha


def test_s3_prefix_fetch_takes_only_direct_children(s3, tmp_path):
    """Objects under a prefix whose keys hold '..' or empty segments are never fetched to the
    path their key spells: a prefix source takes the `*.json` objects directly below it."""
    client = s3.client()
    client.create_bucket(Bucket="corpora")
    good = generate_corpus("kv-cache-tester", 2, 2)
    for t in good:
        client.put_object(Bucket="corpora", Key=f"p/{t['id']}.json", Body=orjson.dumps(t))
    for hostile in ["p/../../escape.json", "p/sub/../../../escape2.json", "p//abs.json"]:
        client.put_object(Bucket="corpora", Key=hostile, Body=orjson.dumps(good[0]))
    got = fetch("s3://corpora/p/", tmp_path / "out", s3_options=s3.options)
    assert sorted(f.name for f in got.files) == sorted(f"{t['id']}.json" for t in good)
    assert outside(tmp_path, tmp_path / "out") == []


# ---- the S3 store -----------------------------------------------------------------------


def _keys(client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.mark.parametrize("name", HOSTILE)
def test_s3_store_refuses_hostile_keys(s3, monkeypatch, tmp_path, name):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    client.create_bucket(Bucket="store")
    store = Store("s3://store/weka", cache_dir=tmp_path / "cache")
    store.write_bytes("scope/ok.json", b"{}")
    for op in (
        lambda: store.write_bytes(name, b"x"),
        lambda: store.write_bytes(f"scope/{name}", b"x"),
        lambda: store.push(name),
        lambda: store.pull(name),
        lambda: store.exists(name),
        lambda: store.read_bytes(name),
        lambda: store.url(name),
        lambda: store.manifests(name),
    ):
        with pytest.raises(StoreError, match="refusing store key"):
            op()
    assert _keys(client, "store") == ["weka/scope/ok.json"]
    assert outside(tmp_path, tmp_path / "cache") == []


@pytest.mark.parametrize(
    "base",
    ["s3://store/../escape", "s3://store/a/./b", "s3://store//x", "s3://Store_X/p", "s3://../x"],
)
def test_s3_store_base_must_be_a_bucket_and_safe_prefix(s3, monkeypatch, tmp_path, base):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(StoreError, match="unsupported store"):
        Store(base, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "hostile",
    [
        "weka/datasets/k1/../../../../../../escape.txt",
        "weka/datasets/k1/sub/../../../../../../../escape.txt",
        "weka/datasets/k1/./manifest.json",
        "weka/datasets/k1//abs.txt",
    ],
)
def test_s3_store_pull_refuses_objects_whose_keys_escape(s3, monkeypatch, tmp_path, hostile):
    """A poisoned bucket (someone else's upload) cannot make a pull write outside the local
    working folder: the pull fails with a StoreError naming the object, and leaves nothing."""
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    client.create_bucket(Bucket="store")
    client.put_object(Bucket="store", Key="weka/datasets/k1/manifest.json", Body=b"{}")
    client.put_object(Bucket="store", Key="weka/datasets/k1/calls.parquet", Body=b"x")
    client.put_object(Bucket="store", Key=hostile, Body=b"pwned")
    cache = tmp_path / "deep" / "er" / "than" / "the" / "dots" / "go" / "cache"
    store = Store("s3://store/weka", cache_dir=cache)
    with pytest.raises(StoreError, match="refusing to pull object"):
        store.pull("datasets/k1")
    assert not (cache / "datasets" / "k1").exists()
    assert outside(tmp_path, cache) == []
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    assert store.manifests("datasets") == {"k1": {}}


def test_s3_store_pull_of_a_clean_folder_still_works(s3, monkeypatch, tmp_path):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    client.create_bucket(Bucket="store")
    files = {"manifest.json": b"{}", "calls.parquet": b"p", "sub/deeper/x.npy": b"n"}
    for name, body in files.items():
        client.put_object(Bucket="store", Key=f"weka/datasets/k1/{name}", Body=body)
    client.put_object(Bucket="store", Key="weka/datasets/k10/other.json", Body=b"not mine")
    for marker in ("weka/datasets/k1/", "weka/datasets/k1/sub/"):  # "folders" some tools make
        client.put_object(Bucket="store", Key=marker, Body=b"")
    store = Store("s3://store/weka", cache_dir=tmp_path / "cache")
    local = store.pull("datasets/k1")
    got = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert got == files
    assert outside(tmp_path, tmp_path / "cache") == []


@pytest.mark.parametrize(
    "out", ["s3://corpora/../escape.jsonl", "s3://corpora/a/../../b.jsonl", "s3://corpora/p/.."]
)
def test_cli_synth_refuses_hostile_s3_outputs(s3, monkeypatch, tmp_path, out):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    client.create_bucket(Bucket="corpora")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(
            ["synth", "--profile", "semianalysis", "--traces", "1", "--seed", "1", "--out", out]
        )
    assert rc in (1, 2) and "Traceback" not in err.getvalue(), err.getvalue()
    assert _keys(client, "corpora") == []
