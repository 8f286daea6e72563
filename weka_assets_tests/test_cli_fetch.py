"""`weka-assets fetch` (and corpus URIs in scope-report) against a Hub and an S3 endpoint given
by the standard variables, HF_ENDPOINT and AWS_ENDPOINT_URL; failures are one line, exit 1."""

import json
import os
import subprocess
import sys

from weka_assets_tests.corpora import synthetic

REPO = "semianalysisai/cc-traces-cli"


def run(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "weka_assets.cli", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def base_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    env["WEKA_ASSETS_CACHE"] = str(tmp_path / "cache")
    return env


def test_fetch_from_a_hub_given_by_hf_endpoint(hub, tmp_path):
    body = synthetic("semianalysis", traces=3, seed=2).read_bytes()
    sha = hub.commit(REPO, {"traces.jsonl": body})
    env = base_env(tmp_path, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
    proc = run(["fetch", f"hf://datasets/{REPO}", "--out", str(tmp_path / "raw")], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"uri", "revision", "sha256", "bytes", "traces", "path"} <= set(line)
    assert line["revision"] == sha and line["bytes"] == len(body) and line["traces"] == 3
    assert open(line["path"], "rb").read() == body

    report = tmp_path / "r.json"
    proc = run(
        ["scope-report", f"hf://datasets/{REPO}@{sha}", "--json", str(report)], env, tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["traces"] == 3

    missing = run(
        ["fetch", "hf://datasets/nobody/nothing", "--out", str(tmp_path / "raw")], env, tmp_path
    )
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert "nobody/nothing" in missing.stderr and "not found" in missing.stderr


def test_fetch_from_s3_given_by_aws_endpoint_url(s3, tmp_path):
    client = s3.client()
    client.create_bucket(Bucket="corpora")
    body = synthetic("kv-cache-tester", traces=3, seed=2).read_bytes()
    client.put_object(Bucket="corpora", Key="c/traces.jsonl", Body=body)
    env = base_env(tmp_path, **s3.env)
    proc = run(
        ["fetch", "s3://corpora/c/traces.jsonl", "--out", str(tmp_path / "raw")], env, tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (
        line["revision"].startswith("etag:") and line["traces"] == 3 and line["bytes"] == len(body)
    )

    # synth can write straight to S3, and scope-report reads it back
    out = run(
        [
            "synth",
            "--profile",
            "semianalysis",
            "--traces",
            "2",
            "--seed",
            "1",
            "--out",
            "s3://corpora/s/x.jsonl",
        ],
        env,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    rep = run(
        ["scope-report", "s3://corpora/s/x.jsonl", "--json", str(tmp_path / "r.json")],
        env,
        tmp_path,
    )
    assert rep.returncode == 0, rep.stderr

    missing = run(
        ["fetch", "s3://corpora/nope.jsonl", "--out", str(tmp_path / "raw")], env, tmp_path
    )
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "nope.jsonl" in missing.stderr
