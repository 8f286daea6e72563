"""A Mooncake corpus through the whole chain: scope report, decode, replay, the capacity curve,
the live replay's schedule, and the command line (with and without --format).

The figures a Mooncake corpus must give are those of one cache for the whole corpus
(`weka_assets_tests.mooncake.expected_hits`): its ids form one namespace, so a prefix sent by
one request is a hit for every later request that starts with it."""

import asyncio
import json

import httpx
import numpy as np
import pytest

from weka_assets.decoding.dataset import open_dataset
from weka_assets.pipeline import decode_corpus, replay, scope_report
from weka_assets.replay.capacity import capacity_curve
from weka_assets.replay.live import LiveReplay, build_plan
from weka_assets.replay.live_options import LiveOptions
from weka_assets.replay.schedule import arrival_for
from weka_assets.traces.reader import CorpusFormat
from weka_assets_tests.mooncake import expected_hits, mooncake_requests, write_mooncake
from weka_assets_tests.test_cli import cli

N = 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    reqs = mooncake_requests(N, seed=3)
    return write_mooncake(tmp_path_factory.mktemp("mooncake") / "trace.jsonl", reqs), reqs


@pytest.fixture(scope="module")
def dataset(corpus, tmp_path_factory):
    path, _ = corpus
    return decode_corpus(path, tmp_path_factory.mktemp("datasets"))


def test_scope_report_reads_one_global_namespace(corpus):
    path, reqs = corpus
    report = scope_report(path)
    assert report.passed, report.failure_reasons
    assert report.traces == N and report.calls == N and report.subagents == 0
    assert report.declared_scope == {"global": N}
    assert report.block_sizes == {"512": N}
    assert report.ids == sum(len(r["hash_ids"]) for r in reqs)
    assert report.hashing["ceil"] == N  # every prompt ends in a hashed partial block
    given = scope_report(path, fmt=CorpusFormat("mooncake", 256))
    assert given.block_sizes == {"256": N}


def test_decode_keeps_every_request_and_its_recorded_time(corpus, dataset):
    path, reqs = corpus
    m = dataset.manifest
    assert m["corpus_format"] == "mooncake"
    assert (m["traces"], m["calls"]) == (N, N)
    assert m["prompt_tokens"] == sum(r["input_length"] for r in reqs)
    ds = open_dataset(dataset.path)
    by_line = {t["line"]: k for k, t in enumerate(ds.traces)}
    t_abs = np.asarray(ds.calls["t_abs"])
    for line, r in enumerate(reqs, start=1):
        assert t_abs[by_line[line]] == r["timestamp"] / 1000
    # the same id decodes to the same tokens on every line (one namespace)
    first = {}
    for i in range(ds.n_calls):
        r = reqs[ds.traces[int(ds.calls["trace"][i])]["line"] - 1]
        tokens = ds.expand_call(i)
        for k, hid in enumerate(r["hash_ids"][: r["input_length"] // 512]):
            block = tokens[k * 512 : (k + 1) * 512].tobytes()
            assert first.setdefault(hid, block) == block, (i, k, hid)
    # decoding again reuses the key; a given format gives the same key as the detected one
    again = decode_corpus(path, dataset.path.parent, fmt=CorpusFormat("mooncake"))
    assert again.reused and again.key == dataset.key


def test_capacity_curve_shares_blocks_across_requests(corpus, dataset):
    _, reqs = corpus
    ds = open_dataset(dataset.path)
    want = expected_hits(reqs)
    curve = capacity_curve(ds, None, arrival_for(ds))
    assert curve.arrival["mode"] == "recorded"
    unbounded = curve.points[-1]
    assert unbounded.capacity_blocks is None
    assert (unbounded.hits, unbounded.blocks) == (want["full_hits"], want["full_blocks"])
    assert want["full_rate"] > 0.5  # the corpus shares a lot: a lost namespace would show


def test_replay_counts_hits_across_requests(corpus, dataset):
    """The unbounded replay of a corpus-wide namespace: one cache for all requests (the
    corpus-wide figure), beside the per-trace one (one request per trace: nothing to hit)."""
    _, reqs = corpus
    want = expected_hits(reqs)
    result, _ = replay(dataset.path)
    assert result.calls == N and result.fidelity_mismatched_calls == 0
    assert result.blocks == want["blocks"] and result.hits == 0
    assert result.corpus_wide_theoretical_hit_rate == want["hits"] / want["blocks"]
    assert want["hits"] > 0
    # the headline is the corpus-wide figure: the per-trace one is 0 by construction
    assert result.namespace == "corpus"
    name, value, definition = result.headline_figure()
    assert (name, value) == ("corpus-wide theoretical hit rate", want["hits"] / want["blocks"])
    assert "one seen-set for the whole corpus" in definition
    # aiperf's figure: the mean of per-request leading-run rates, same order and seen-set
    order = sorted(range(len(reqs)), key=lambda i: (reqs[i]["timestamp"], i))
    seen, rates = set(), []
    for i in order:
        ids = reqs[i]["hash_ids"]
        run = next((k for k, h in enumerate(ids) if h not in seen), len(ids))
        if ids:
            rates.append(run / len(ids))
        seen.update(ids)
    assert result.aiperf_analyze_trace_hit_rate == pytest.approx(sum(rates) / len(rates), abs=1e-12)


def test_live_replay_sends_each_request_at_its_timestamp(corpus, dataset):
    _, reqs = corpus
    ds = open_dataset(dataset.path)
    plan = build_plan(ds, arrival=arrival_for(ds))
    t0 = min(r["timestamp"] for r in reqs)
    lines = [ds.traces[int(k)]["line"] for k in ds.calls["trace"]]
    want = np.array([(reqs[line - 1]["timestamp"] - t0) / 1000 for line in lines])
    np.testing.assert_allclose(plan.start_s, want)
    assert plan.start_s.max() > 1.0  # not all at once

    scale = 0.002
    sent = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        body = json.loads(request.content)
        n = len(body["prompt"])
        chunks = [
            {"choices": [{"index": 0, "text": "x"}]},
            {"choices": [], "usage": {"prompt_tokens": n, "completion_tokens": 1}},
        ]
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(
            200, content=text.encode(), headers={"content-type": "text/event-stream"}
        )

    live = LiveReplay(
        ds, LiveOptions(url="http://stub/v1", model="tiny", concurrency=N, time_scale=scale)
    )

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await live.run(client)

    asyncio.run(go())
    result = live.result()
    assert result.complete and result.totals.ok == N
    assert result.settings.arrival["mode"] == "recorded"
    for rec in result.calls:
        sent[rec.index] = rec
        assert rec.scheduled_s == pytest.approx(want[rec.index] * scale, abs=1e-9)
        assert rec.sent_s >= rec.scheduled_s - 1e-3


@pytest.mark.parametrize("given", [[], ["--format", "mooncake"]])
def test_cli_decode_and_replay_with_and_without_format(corpus, tmp_path, given):
    path, reqs = corpus
    run = cli("decode", path, "--out", tmp_path / "ds", *given)
    assert run.rc == 0, run.err
    out = tmp_path / "replay.json"
    run = cli("replay", run.last, "--json", out, "--capacity", "auto")
    assert run.rc == 0, run.err
    result = json.loads(out.read_text())
    want = expected_hits(reqs)
    assert result["calls"] == N
    assert result["capacity_curve"]["arrival"]["mode"] == "recorded"
    unbounded = result["capacity_curve"]["points"][-1]
    assert unbounded["hits"] == want["full_hits"]
    # the printed table leads with the corpus-wide rate and labels the per-trace rows
    lines = run.out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("corpus-wide theoretical"))
    assert f"{want['hits'] / want['blocks']:.4f}" in lines[head]
    assert lines[head + 1].startswith("per trace below")
    assert lines[head + 2].split()[:2] == ["role", "calls"]


def test_cli_block_size_and_bad_lines(corpus, tmp_path):
    path, reqs = corpus
    out = tmp_path / "report.json"
    run = cli("scope-report", path, "--json", out, "--block-size", "128")
    # 512-token blocks read as 128: fewer ids than in // 128, a finding, not an error
    assert json.loads(out.read_text())["block_sizes"] == {"128": N}
    assert run.rc == 0, run.err
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in reqs[:3]]
    lines[1] = json.dumps({"timestamp": 5, "text_input": "hello", "output_length": 2})
    lines.append(json.dumps({"id": "w", "models": [], "requests": []}))
    bad.write_text("\n".join(lines) + "\n")
    run = cli("validate", bad)
    assert run.rc == 1
    errs = run.err.strip().splitlines()
    assert errs[0].startswith("bad.jsonl:2") or "bad.jsonl:2, trace 'bad.jsonl:2'" in errs[0]
    assert "[mooncake_no_hash_ids]" in errs[0]
    assert "bad.jsonl:4" in errs[1] and "[format_mismatch]" in errs[1]
    assert "2 valid trace(s)" in run.out
    run = cli("validate", bad, "--format", "weka")
    assert run.rc == 1 and run.err.count("[format_mismatch]") == 3
    assert "read as Weka (--format)" in run.err
    run = cli("validate", path, "--block-size", "0")
    assert run.rc == 2
