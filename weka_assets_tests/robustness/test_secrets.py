"""Secrets stay secret: the Hugging Face token and the AWS keys, given through the environment
and resource config as `dg.EnvVar`, appear in no log line, event, metadata value, run config,
snapshot, or stored file (the store on S3, its local cache, the Hugging Face cache, the
Dagster instance), after the chain ran with them, through success and failure paths.

The sentinels are random per run, so a match can only come from this run. A control run
passes a literal secret in resource config (what the docs forbid) and proves the scan reaches
the compressed snapshots Dagster keeps in its run storage.
"""

import contextlib
import json
import logging
import sqlite3
import uuid
import zlib
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value
from huggingface_hub import constants

from weka_assets import cli
from weka_assets.definitions import build_defs, resources_for
from weka_assets.defs.resources import CorpusCatalog, WekaStore
from weka_assets.defs.sensors import corpus_discovery_sensor
from weka_assets.instance.materialize import materialize_corpus, run_selection
from weka_assets.synthetic import generate_corpus, write_corpus

pytestmark = pytest.mark.slow

RUN = uuid.uuid4().hex[:12]
HF_TOKEN = f"hf_SENTINEL{RUN}tokenvalue"
AWS_KEY_ID = f"AKIASENTINEL{RUN.upper()}"
AWS_SECRET = f"SENTINELsecret{RUN}/+key"
SECRETS = {
    "HF_TOKEN": HF_TOKEN,
    "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
}
CONTROL = f"SENTINELliteral{RUN}"
REPO = "org/corpus"


def _variants(secret: str) -> list[bytes]:
    """The secret as it could be stored: plain, JSON-escaped, URL-quoted."""
    from urllib.parse import quote

    forms = {secret, json.dumps(secret)[1:-1], quote(secret, safe="")}
    return [f.encode() for f in forms]


def scan_bytes(data: bytes, secrets: list[str]) -> set[str]:
    return {s for s in secrets for v in _variants(s) if v in data}


def scan_sqlite(path: Path, secrets: list[str]) -> set[str]:
    """Every cell of every table, zlib-compressed ones (Dagster's snapshots) inflated."""
    found: set[str] = set()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            for row in con.execute(f'select * from "{table}"'):
                for cell in row:
                    if isinstance(cell, str):
                        cell = cell.encode()
                    if not isinstance(cell, bytes):
                        continue
                    found |= scan_bytes(cell, secrets)
                    with contextlib.suppress(zlib.error):
                        found |= scan_bytes(zlib.decompress(cell), secrets)
    finally:
        con.close()
    return found


def scan_tree(root: Path, secrets: list[str]) -> dict[str, set[str]]:
    """{file: secrets found} for every file below root (sqlite files opened as databases)."""
    hits = {}
    for p in root.rglob("*"):
        if not p.is_file() or p.is_symlink():
            continue
        data = p.read_bytes()
        found = scan_bytes(data, secrets)
        if data.startswith(b"SQLite format 3\0"):
            found |= scan_sqlite(p, secrets)
        if found:
            hits[str(p)] = found
    return hits


def scan_instance(instance: dg.DagsterInstance, secrets: list[str]) -> dict[str, set[str]]:
    """Runs (config, tags), their job and plan snapshots, and every event of every run."""
    hits: dict[str, set[str]] = {}
    for run in instance.get_runs():
        blobs = {
            "run": serialize_value(run),
            "events": "\n".join(serialize_value(e) for e in instance.all_logs(run.run_id)),
            "job snapshot": serialize_value(instance.get_job_snapshot(run.job_snapshot_id)),
            "plan snapshot": serialize_value(
                instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
            ),
        }
        for what, text in blobs.items():
            found = scan_bytes(text.encode(), secrets)
            if found:
                hits[f"run {run.run_id[:8]} {what}"] = found
    return hits


def scan_buckets(s3, secrets: list[str]) -> dict[str, set[str]]:
    client = s3.client()
    hits = {}
    for b in client.list_buckets()["Buckets"]:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
            for o in page.get("Contents", []):
                body = client.get_object(Bucket=b["Name"], Key=o["Key"])["Body"].read()
                found = scan_bytes(o["Key"].encode() + b"\n" + body, secrets)
                if found:
                    hits[f"s3://{b['Name']}/{o['Key']}"] = found
    return hits


@pytest.fixture
def secret_env(hub, s3, monkeypatch, tmp_path):
    """Sentinel credentials in the environment; every cache and the instance under tmp_path."""
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WEKA_ASSETS_CACHE", str(tmp_path / "weka-cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    hub.token = HF_TOKEN
    corpus = write_corpus(generate_corpus("semianalysis", 3, 5), tmp_path / "src" / "t.jsonl")
    hub.commit(REPO, {"traces.jsonl": corpus.read_bytes()})
    client = s3.client()
    for bucket in ("corpora", "store"):
        client.create_bucket(Bucket=bucket)
    client.upload_file(str(corpus), "corpora", "c/traces.jsonl")
    (tmp_path / "dagster-home").mkdir()
    return tmp_path


def _resources(tmp_path: Path, corpora: dict, **store_config) -> dict:
    store = WekaStore(
        base_path="s3://store/weka",
        cache_dir=str(tmp_path / "store-cache"),
        endpoint_url=dg.EnvVar("AWS_ENDPOINT_URL"),
        aws_access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=store_config.pop("secret", dg.EnvVar("AWS_SECRET_ACCESS_KEY")),
    )
    catalog = CorpusCatalog(corpora=corpora, hf_token=dg.EnvVar("HF_TOKEN"))
    return resources_for(store, catalog)


CORPORA = {
    "sample": "builtin:sample",
    "hub": f"hf://datasets/{REPO}",
    "bucket": "s3://corpora/c/traces.jsonl",
    "hub-missing": "hf://datasets/org/missing",
    "bucket-missing": "s3://corpora/c/missing.jsonl",
}


def _log_text(records) -> bytes:
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in records).encode()


def test_no_secret_in_logs_events_metadata_config_or_files(secret_env, hub, s3, capfd, caplog):
    tmp_path = secret_env
    caplog.set_level(logging.DEBUG)
    secrets = list(SECRETS.values())
    defs = build_defs(resource_defs=_resources(tmp_path, CORPORA))
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster-home")) as instance:
        # the whole chain for the built-in sample, its store on S3 with the sentinel keys
        steps = materialize_corpus("sample", instance, defs, log_level="DEBUG")
        assert [s.success for s in steps] == [True, True], [s.failures for s in steps]
        # fetched from the Hub with the token and from S3 with the keys, inside Dagster
        for name in ("hub", "bucket"):
            instance.add_dynamic_partitions("corpus", [name])
            out = run_selection(defs, instance, ["raw_traces", "trace_scope"], name, "DEBUG")
            assert out.success, out.failures
        assert len(hub.requests) > 0  # the token was really sent
        # failure paths: missing sources, and the Hub refusing the token
        for name in ("hub-missing", "bucket-missing"):
            instance.add_dynamic_partitions("corpus", [name])
            out = run_selection(defs, instance, ["raw_traces"], name, "DEBUG")
            assert not out.success and out.failures
        hub.token = "hf_another_token"
        out = run_selection(defs, instance, ["raw_traces"], "hub", "DEBUG")
        assert not out.success and any("hub" in f for f in out.failures)
        hub.token = HF_TOKEN
        # the discovery sensor resolves every source with the same credentials
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
            result = corpus_discovery_sensor(ctx)
        assert {r.partition_key for r in result.run_requests} >= {"sample", "hub", "bucket"}

        # the command line: fetch with the token and with the keys from the environment
        for uri in (f"hf://datasets/{REPO}", "s3://corpora/c/traces.jsonl"):
            assert cli.main(["fetch", uri, "--out", str(tmp_path / "cli-fetch")]) == 0
        assert cli.main(["fetch", "hf://datasets/org/missing", "--out", str(tmp_path)]) == 1

        leaks = scan_instance(instance, secrets)
        # what was scanned is the real thing: runs, events with metadata, logs, outputs
        assert len(instance.get_runs()) == 7
        rep = instance.get_latest_materialization_event(dg.AssetKey("replay_benchmark"))
        assert rep is not None and rep.asset_materialization.metadata
    captured = capfd.readouterr()
    leaks |= {
        f"output: {k}": v
        for k, v in {
            "stdout": scan_bytes(captured.out.encode(), secrets),
            "stderr": scan_bytes(captured.err.encode(), secrets),
            "logging": scan_bytes(_log_text(caplog.records), [HF_TOKEN, AWS_SECRET]),
            # the key id is an identifier AWS puts in every request's Authorization header,
            # which botocore's own DEBUG log prints (root logging at DEBUG, as here): it must
            # not appear anywhere else
            "logging (not botocore)": scan_bytes(
                _log_text(r for r in caplog.records if not r.name.startswith("botocore")),
                [AWS_KEY_ID],
            ),
        }.items()
        if v
    }
    leaks |= scan_tree(tmp_path, secrets)
    leaks |= scan_buckets(s3, secrets)
    assert leaks == {}, f"secrets found: {leaks}"
    # the chain did run and store what it should
    assert (tmp_path / "dagster-home" / "history" / "runs.db").is_file()
    assert any((tmp_path / "hf-cache").rglob("traces.jsonl"))
    assert '"revision"' in captured.out  # the fetch command's JSON lines
    assert "sample: 12 traces" in captured.err + caplog.text  # raw_traces' own log line


def test_control_a_literal_secret_in_resource_config_is_found(secret_env, s3):
    """The scan is not blind: a secret passed as a literal (what the docs forbid) is stored by
    Dagster in the run's job snapshot, compressed in runs.db, and the scan finds it there."""
    tmp_path = secret_env
    defs = build_defs(resource_defs=_resources(tmp_path, CORPORA, secret=CONTROL))
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster-home")) as instance:
        instance.add_dynamic_partitions("corpus", ["bucket"])
        out = run_selection(defs, instance, ["raw_traces"], "bucket", "ERROR")
        assert out.success, out.failures
        found = scan_instance(instance, [CONTROL])
    assert any("job snapshot" in k for k in found), found
    assert any("runs.db" in k for k in scan_tree(tmp_path / "dagster-home", [CONTROL]))
    # ... while the key id given through dg.EnvVar, used by the same run, is not
    assert scan_tree(tmp_path / "dagster-home", [AWS_KEY_ID]) == {}


def test_the_code_locations_resources_hold_no_secret_value(monkeypatch):
    """The code location's own resources take credentials from the environment when they are
    used, never copy them into their config: nothing secret can reach a definitions or run
    snapshot, whatever the environment holds when the code location loads."""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    defs = build_defs()
    store, catalog = defs.resources["store"], defs.resources["catalog"]
    assert store.aws_access_key_id == "" and store.aws_secret_access_key == ""
    assert catalog.hf_token == ""
    assert scan_bytes(repr(defs.resources).encode(), list(SECRETS.values())) == set()
