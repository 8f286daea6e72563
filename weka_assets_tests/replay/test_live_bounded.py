"""The live replay against a REAL vLLM server whose KV cache fills (`scripts/vllm-cpu-server start
--kv-blocks N`, vLLM's --num-gpu-blocks-override): the prediction with vLLM's own eviction
(`block_pool`) at the size the server states on /metrics, call by call, and the server's own
prefix-cache counters against the predicted totals."""

import json
import os
import subprocess
import sys

import pytest

from weka_assets.replay.live import run_live_replay
from weka_assets.replay.live_options import LiveOptions
from weka_assets_tests.servers import VLLM_SCRIPT as SCRIPT
from weka_assets_tests.servers import vllm_cpu_server

KV_BLOCKS = 160  # 5,120 tokens: a few calls of the corpus fill it
CONTEXT = 2048

pytestmark = [pytest.mark.live, pytest.mark.slow]


@pytest.fixture(scope="module")
def small_cache_server(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vllm-run-bounded")
    args = ("--max-model-len", str(CONTEXT), "--kv-blocks", str(KV_BLOCKS))
    with vllm_cpu_server(run_dir, *args) as url:
        yield url


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from weka_assets.pipeline import decode_corpus
    from weka_assets.synthetic import iter_corpus, write_corpus

    tmp = tmp_path_factory.mktemp("bounded-corpus")
    corpus = write_corpus(iter_corpus("kv-cache-tester", 12, 3, "small"), tmp / "c.jsonl")
    return decode_corpus(corpus, tmp / "datasets", measure_drift=False).path


def test_start_refuses_a_cache_smaller_than_one_request(tmp_path):
    env = dict(os.environ, WEKA_VLLM_RUN=str(tmp_path))
    run = subprocess.run(
        [str(SCRIPT), "start", "--max-model-len", "4096", "--kv-blocks", "100"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and "fewer than --max-model-len 4096" in run.stderr


def test_one_call_at_a_time_every_call_is_predicted(small_cache_server, dataset, tmp_path):
    out = tmp_path / "live.json"
    run = subprocess.run(
        [sys.executable, "-m", "weka_assets.cli", "replay-live", str(dataset), "--url",
         small_cache_server, "--model", "tiny", "--concurrency", "1", "--time-scale", "0.001",
         "--max-context", str(CONTEXT), "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    t, s = data["totals"], data["settings"]
    assert data["complete"] and data["cache_reset"] is True and t["errors"] == 0
    assert data["prediction"] == "vllm_block_pool"
    assert (s["kv_blocks"], s["kv_blocks_source"]) == (KV_BLOCKS, "server")
    calls = [c for c in data["calls"] if c["status"] == "ok"]
    assert len(calls) == t["ok"] > 30
    differ = [
        (c["index"], c["cached_tokens"], c["predicted_cached_tokens"])
        for c in calls
        if c["cached_tokens"] != c["predicted_cached_tokens"]
    ]
    assert differ == [], differ
    # the cache filled: the pool evicted hundreds of blocks, and an unbounded cache would have
    # predicted more hits for the calls that lost theirs
    assert t["predicted_blocks_evicted"] >= 100
    assert t["calls_evicted"] > 0
    assert t["unbounded_predicted_cached_tokens"] > t["predicted_cached_tokens"]
    assert t["calls_evicted"] == sum(
        c["cached_tokens"] < c["unbounded_cached_tokens"] for c in calls
    )
    # the server's own counters over the run equal the predicted totals
    assert t["server_prefix_cache_hits"] == t["predicted_cached_tokens"] == t["cached_tokens"]
    assert t["server_prefix_cache_queries"] == t["prompt_tokens_sent"] > 0
    assert "this run at other pool sizes" in run.stdout

    # the compiled pool over the run's measured timings: at the server's size, every call's
    # cached tokens as measured; smaller pools hit less, larger ones more, up to unbounded
    from weka_assets.decoding.dataset import open_dataset
    from weka_assets.replay.live import LiveResult
    from weka_assets.replay.live_capacity import live_call_hits

    result = LiveResult.model_validate(data)
    order, hits = live_call_hits(open_dataset(dataset), result, [KV_BLOCKS])
    by_index = {c["index"]: c for c in calls}
    assert [32 * int(h) for h in hits[KV_BLOCKS]] == [by_index[i]["cached_tokens"] for i in order]
    points = {p["kv_blocks"]: p["cached_tokens"] for p in data["capacity_curve"]["points"]}
    assert points[KV_BLOCKS] == t["cached_tokens"]
    assert points[KV_BLOCKS // 4] < points[KV_BLOCKS] < points[4 * KV_BLOCKS] <= points[None]

    # the same corpus predicted with an unbounded cache (--kv-blocks 0): every shortfall is an
    # "evicted" it cannot account for (the server samples its outputs, so the completion
    # lengths, hence the generated blocks and the evictions, differ from run to run)
    unbounded = run_live_replay(
        dataset,
        LiveOptions(
            url=small_cache_server, model="tiny", concurrency=1, time_scale=0.001,
            max_context=CONTEXT, kv_blocks=0,
        ),
        out_path=tmp_path / "unbounded.json",
    )  # fmt: skip
    u = unbounded.totals
    assert unbounded.prediction == "unbounded" and unbounded.complete
    assert u.mismatched_calls > 0 and set(u.mismatches_by_explanation) == {"evicted"}
    assert u.cached_tokens < u.predicted_cached_tokens
    assert u.server_prefix_cache_hits == u.cached_tokens


def test_calls_in_flight_together_every_mismatch_names_a_concurrent_call(
    small_cache_server, dataset, tmp_path
):
    result = run_live_replay(
        dataset,
        LiveOptions(
            url=small_cache_server, model="tiny", concurrency=4, time_scale=0.001,
            max_context=CONTEXT,
        ),
        out_path=tmp_path / "c4.json",
    )  # fmt: skip
    t = result.totals
    assert result.complete and t.errors == 0 and result.prediction == "vllm_block_pool"
    by_index = {c.index: c for c in result.calls}
    for c in result.calls:
        if c.status != "ok" or c.cached_tokens == c.predicted_cached_tokens:
            continue
        other = by_index[c.related_call]
        if c.explanation == "diverged_earlier":  # an earlier call concurrency explained
            assert other.send_order < c.send_order, (c, other)
            assert other.explanation in ("concurrent_allocation", "reordered"), other
            continue
        assert c.explanation in ("concurrent_allocation", "in_flight_prefix", "reordered"), c
        # the named call was really in flight together with this one
        assert other.sent_s < c.finished_s and c.sent_s < other.finished_s, (c, other)
    # whatever the order, the server's counters are the measured figures
    assert t.server_prefix_cache_hits == t.cached_tokens
    assert t.server_prefix_cache_queries == t.prompt_tokens_sent
