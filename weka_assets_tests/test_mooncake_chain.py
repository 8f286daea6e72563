"""A Mooncake corpus through the whole chain: scope report, decode, replay, the capacity curve,
the live replay's schedule, and the command line (with and without --format).

The figures a Mooncake corpus must give are those of one cache for the whole corpus
(`weka_assets_tests.mooncake.expected_hits`): its ids form one namespace, so a prefix sent by
one request is a hit for every later request that starts with it. The file is one trace whose
requests are its calls (`traces.requests.RequestTable`), each request a session of its own."""

import asyncio
import json

import httpx
import numpy as np
import pytest

from weka_assets.decoding.dataset import open_dataset
from weka_assets.pipeline import decode_corpus, replay, scope_report
from weka_assets.replay.capacity import capacity_curve
from weka_assets.replay.live import LiveReplay, build_plan, max_tokens_for
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
    # the file is one trace of N requests
    assert report.traces == 1 and report.calls == N and report.subagents == 0
    assert report.declared_scope == {"global": 1}
    assert report.block_sizes == {"512": 1}
    assert report.decode_scopes == {"corpus": 1}
    assert report.ids == sum(len(r["hash_ids"]) for r in reqs)
    assert report.hashing["ceil"] == N  # every prompt ends in a hashed partial block
    (row,) = report.per_trace
    assert (row["trace"], row["file"], row["calls"]) == ("trace.jsonl", str(path), N)
    assert row["ids"] == report.ids and row["decode_scope"] == "corpus"
    given = scope_report(path, fmt=CorpusFormat("mooncake", 256))
    assert given.block_sizes == {"256": 1} and given.calls == N


def test_decode_keeps_every_request_and_its_recorded_time(corpus, dataset):
    path, reqs = corpus
    m = dataset.manifest
    assert m["corpus_format"] == "mooncake" and dataset.material["corpus_format"] == "mooncake"
    assert (m["traces"], m["calls"]) == (1, N)
    assert m["prompt_tokens"] == sum(r["input_length"] for r in reqs)
    # each distinct id is stored once: one namespace, one block each
    assert m["blocks"] == len({h for r in reqs for h in r["hash_ids"]})
    ds = open_dataset(dataset.path)
    (trace,) = ds.traces
    assert (trace["id"], trace["layout"], trace["calls"]) == ("trace.jsonl", "requests", N)
    # stored in time order (file order on ties); `request` is the request's index in the file
    request = np.asarray(ds.column("request"), dtype=np.int64)
    assert request.tolist() == sorted(range(N), key=lambda k: (reqs[k]["timestamp"], k))
    t_abs = np.asarray(ds.calls["t_abs"])
    for i, k in enumerate(request.tolist()):
        r = reqs[k]
        assert t_abs[i] == r["timestamp"] / 1000
        assert int(ds.calls["tokens_in"][i]) == r["input_length"]
        assert int(ds.calls["tokens_out"][i]) == r["output_length"]
    # the same id decodes to the same tokens in every request (one namespace)
    first = {}
    for i in range(ds.n_calls):
        r = reqs[int(request[i])]
        tokens = ds.expand_call(i)
        assert tokens.size == r["input_length"]
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
    corpus-wide figure); the file is one trace, so the per-trace figures are the same."""
    _, reqs = corpus
    want = expected_hits(reqs)
    result, _ = replay(dataset.path)
    assert result.calls == N and result.fidelity_mismatched_calls == 0
    assert (result.blocks, result.hits) == (want["blocks"], want["hits"])
    assert result.corpus_wide_theoretical_hit_rate == want["hits"] / want["blocks"]
    assert result.theoretical_hit_rate == want["hits"] / want["blocks"]
    assert want["hits"] > 0
    (row,) = result.per_trace
    assert (row["trace"], row["calls"], row["blocks"]) == ("trace.jsonl", N, want["blocks"])
    assert row["theoretical_hit_rate"] == want["hits"] / want["blocks"]
    assert result.cross_trace_shared_blocks == 0  # one trace: nothing shared across traces
    # the headline is the corpus-wide figure
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
    request = np.asarray(ds.column("request"), dtype=np.int64)
    want = np.array([(reqs[k]["timestamp"] - t0) / 1000 for k in request.tolist()])
    np.testing.assert_allclose(plan.start_s, want)
    assert plan.start_s.max() > 1.0  # not all at once
    # the requests of a file are sessions of their own: none waits for another
    assert len(plan.deps) == N and all(d == () for d in plan.deps)
    # a request over the context is dropped alone, with --drop traces too (its session)
    need = np.asarray(ds.calls["tokens_in"], dtype=np.int64) + max_tokens_for(ds, 16)
    limit = int(np.median(need))
    too_long = need > limit
    assert 0 < too_long.sum() < N
    capped = build_plan(ds, arrival=arrival_for(ds), max_context=limit, drop="traces")
    assert capped.keep.tolist() == (~too_long).tolist()
    assert capped.dropped_traces == sorted(request[too_long].tolist())

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
    assert json.loads(out.read_text())["block_sizes"] == {"128": 1}
    assert run.rc == 0, run.err
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in reqs[:3]]
    lines[1] = json.dumps({"timestamp": 5, "text_input": "hello", "output_length": 2})
    lines.append(json.dumps({"id": "w", "models": [], "requests": []}))
    bad.write_text("\n".join(lines) + "\n")
    run = cli("validate", bad)
    assert run.rc == 1
    # every bad line, located in the file's one trace: its line and request
    errs = run.err.strip().splitlines()
    assert len(errs) == 2, run.err
    assert "bad.jsonl:2, trace 'bad.jsonl', request 1: [mooncake_no_hash_ids]" in errs[0]
    assert "bad.jsonl:4, trace 'bad.jsonl', request 3: [format_mismatch]" in errs[1]
    assert "0 valid trace(s)" in run.out and "2 hard error(s)" in run.out
    run = cli("validate", path)  # the good file: one trace of N requests
    assert run.rc == 0, run.err
    ids = sum(len(r["hash_ids"]) for r in reqs)
    assert f"1 valid trace(s), {N} calls, {ids} hash ids; 0 hard error(s)" in run.out
    run = cli("validate", bad, "--format", "weka")
    assert run.rc == 1 and run.err.count("[format_mismatch]") == 3
    assert "read as Weka (--format)" in run.err
    run = cli("validate", path, "--block-size", "0")
    assert run.rc == 2
