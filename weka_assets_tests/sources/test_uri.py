"""Source URI parsing: every accepted form, and one clear error per bad one."""

from pathlib import Path

import pytest

from weka_assets.errors import SourceError
from weka_assets.sources import (
    BUILTIN_CORPORA,
    SourceURIError,
    builtin_path,
    parse_source,
    resolve_source,
)

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "uri, fields",
    [
        (
            "hf://datasets/semianalysisai/cc-traces-weka-061326",
            dict(
                kind="hf",
                repo_id="semianalysisai/cc-traces-weka-061326",
                revision=None,
                path_in_repo="traces.jsonl",
            ),
        ),
        (
            f"hf://datasets/org/name@{SHA}",
            dict(
                kind="hf",
                repo_id="org/name",
                revision=SHA,
                path_in_repo="traces.jsonl",
                is_pinned=True,
            ),
        ),
        (
            "hf://datasets/org/name@v1.0/data/part-0.jsonl.gz",
            dict(revision="v1.0", path_in_repo="data/part-0.jsonl.gz", is_pinned=False),
        ),
        ("hf://datasets/org/name@refs%2Fpr%2F3", dict(revision="refs/pr/3")),
        ("hf://datasets/org/name/one.json", dict(revision=None, path_in_repo="one.json")),
        (
            "s3://corpora/weka/traces.jsonl",
            dict(kind="s3", bucket="corpora", key="weka/traces.jsonl", is_prefix=False),
        ),
        (
            "s3://corpora/t.jsonl.gz?versionId=abc",
            dict(key="t.jsonl.gz", revision="abc", is_pinned=True),
        ),
        ("s3://corpora/weka/", dict(kind="s3", key="weka/", is_prefix=True)),
        ("s3://corpora/", dict(kind="s3", key="", is_prefix=True)),
        ("builtin:sample", dict(kind="builtin", name="sample")),
        ("file:///tmp/x.jsonl", dict(kind="local", path=Path("/tmp/x.jsonl"))),
        ("file:///tmp/a%20b/", dict(kind="local", path=Path("/tmp/a b"))),
        ("/tmp/corpus", dict(kind="local", path=Path("/tmp/corpus"))),
        ("relative/dir", dict(kind="local", path=Path("relative/dir"))),
    ],
)
def test_accepted_forms(uri, fields):
    spec = parse_source(uri)
    assert spec.uri == uri
    for name, value in fields.items():
        assert getattr(spec, name) == value, name


def test_canonical_round_trips():
    for uri in ("hf://datasets/o/n@refs%2Fpr%2F3/traces.jsonl", "s3://bkt/k.jsonl?versionId=v1"):
        spec = parse_source(uri)
        assert spec.canonical == uri
        assert parse_source(spec.canonical).canonical == uri
    assert parse_source("hf://datasets/o/n").canonical == "hf://datasets/o/n/traces.jsonl"


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("ftp://host/x.jsonl", "unsupported scheme 'ftp'"),
        ("hf://models/org/name", "only dataset repos are supported, not 'models'"),
        ("hf://datasets/org", "missing ORG/NAME"),
        ("hf://datasets/org/", "missing ORG/NAME"),
        ("hf://datasets/or g/name", "invalid organisation 'or g'"),
        ("hf://datasets/org/na--me", "invalid dataset name 'na--me'"),
        ("hf://datasets/org/name@", "empty revision"),
        ("hf://datasets/org/name@a b", "invalid revision"),
        ("hf://datasets/org/name@x/../y.jsonl", "'..' segment"),
        ("hf://datasets/org/name/data/", "must name one file"),
        ("hf://datasets/org/name/README.md", "not a corpus file"),
        ("s3://", "missing bucket"),
        ("s3://Bad_Bucket!/k.jsonl", "invalid bucket name"),
        ("s3://bucket", "missing key"),
        ("s3://bucket/data.parquet", "not a corpus file"),
        ("s3://bucket//k.jsonl", "key starts with '/'"),
        ("s3://bucket/p/?versionId=1", "applies to one object"),
        ("s3://bucket/k.jsonl?foo=1", "unsupported query"),
        ("builtin:nope", "unknown built-in corpus 'nope' (known: sample, sample-kvt)"),
        ("file://", "empty path"),
        ("", "empty source"),
    ],
)
def test_bad_uris_name_the_uri_and_the_problem(uri, reason):
    with pytest.raises(SourceURIError) as info:
        parse_source(uri)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message
    if uri:
        assert message.startswith(f"{uri}: ")
    assert isinstance(info.value, SourceError)


def test_spec_is_frozen():
    spec = parse_source("builtin:sample")
    with pytest.raises(AttributeError):
        spec.name = "other"


# ---------------------------------------------------------------- the API kept for callers


def test_resolve_source_keeps_its_behaviour(tmp_path):
    assert set(BUILTIN_CORPORA) == {"sample", "sample-kvt"}
    p = resolve_source("builtin:sample-kvt", tmp_path)
    assert p == builtin_path("sample-kvt", tmp_path) and p.name == "traces.jsonl" and p.is_file()
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("{}\n")
    assert resolve_source(str(corpus), tmp_path) == corpus
    assert resolve_source(f"file://{corpus}", tmp_path) == corpus
    with pytest.raises(SourceError, match="no such file or folder"):
        resolve_source(str(tmp_path / "missing.jsonl"), tmp_path)
    with pytest.raises(SourceError, match="unknown built-in corpus"):
        resolve_source("builtin:nope", tmp_path)
    with pytest.raises(SourceError, match="use weka_assets.sources.fetch"):
        resolve_source("hf://datasets/org/name", tmp_path)
    with pytest.raises(SourceError, match="unsupported scheme"):
        resolve_source("ftp://x/y.jsonl", tmp_path)
