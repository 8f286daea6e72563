"""Sizing from one corpus (`replay.sizing`): the LRU curve unchanged, every policy at the same
capacities against its direct simulation and under Belady's bound, tiers and a fleet through the
report, the leading-trace budget, and `weka-assets replay --capacity ... --policy ...`."""

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from weka_assets.cli import main
from weka_assets.decoding.dataset import ROLES
from weka_assets.replay.accesses import timeline
from weka_assets.replay.block_pool import ServiceModel, vllm_call_hits
from weka_assets.replay.capacity import (
    KV_PRESETS,
    LRU_DEFINITION,
    capacity_curve,
    capacity_traces,
)
from weka_assets.replay.policies import opt_reference_hits, ttl_reference_hits
from weka_assets.replay.schedule import Arrival, arrival_for
from weka_assets.replay.sizing import (
    POLICIES,
    SizingOptions,
    capacity_report,
    parse_policies,
    plot_png,
    sized_report,
)
from weka_assets_tests.corpora import decoded, synthetic

PNG = b"\x89PNG\r\n\x1a\n"
ALL = ["lru", "vllm", "opt", "ttl"]
GEOMETRY = KV_PRESETS["llama-3.1-8b"]  # 128 KiB a token: 8 MiB a block of 64 tokens
ARRIVALS = [Arrival(), Arrival("staggered", interval_s=45.0)]


@pytest.fixture(scope="module")
def ds():
    out = decoded(synthetic("kv-cache-tester", traces=6, seed=3))
    assert out.block_sizes == [64] and len(out.traces) == 6
    return out


def _caps(curve) -> list[int | None]:
    return [p.capacity_blocks for p in curve.points]


def _without_policy(curve) -> dict:
    return curve.model_dump(exclude={"policy", "definition"})


# ---- 1. lru alone is today's curve ----------------------------------------------------------


def test_lru_alone_is_capacity_curve(ds):
    for options in (None, SizingOptions(), SizingOptions(policies=["lru"])):
        report = capacity_report(ds, options=options)
        assert len(report.curves) == 1 and report.tiers is None and report.fleet is None
        curve = report.curves[0]
        assert curve.policy == "lru" and curve.definition == LRU_DEFINITION
        assert curve.model_dump() == capacity_curve(ds).model_dump()
        assert report.curve("lru") is curve and report.curve("opt") is None
    # given capacities, another arrival, a geometry and a sweep size: still the same curve
    arrival = Arrival("poisson", rate_per_s=0.02, seed=5)
    for kw in (
        {"capacities": [0, 7, 50, 50, 3, 10**6]},
        {"points": 5},
        {"capacities": [40], "geometry": GEOMETRY},
    ):
        got = capacity_report(ds, arrival=arrival, time_scale=0.5, **kw).curves[0]
        want = capacity_curve(ds, arrival=arrival, time_scale=0.5, **kw)
        assert got.model_dump() == want.model_dump(), kw


# ---- 2. every policy at the same capacities -------------------------------------------------


@pytest.fixture(scope="module", params=ARRIVALS, ids=lambda a: a.mode)
def policies_case(request, ds):
    arrival = request.param
    report = capacity_report(ds, arrival=arrival, options=SizingOptions(policies=ALL))
    return arrival, report, timeline(ds, arrival)


def test_policies_share_capacities_and_denominator(policies_case, ds):
    arrival, report, tl = policies_case
    assert [c.policy for c in report.curves] == ALL
    lru = report.curve("lru")
    assert lru.model_dump() == capacity_curve(ds, arrival=arrival).model_dump()
    caps = _caps(lru)
    assert caps[-1] is None and len(caps) > 5 and caps[-2] == lru.distinct_blocks
    for c in report.curves:
        assert _caps(c) == caps, c.policy
        assert c.blocks_total == lru.blocks_total == int(tl.lengths.sum())
        assert c.calls == lru.calls == tl.calls
        assert all(p.blocks == c.blocks_total for p in c.points)
        assert "full blocks" in c.definition and c.definition.startswith(c.policy + ":")
    assert "300 s" in report.curve("ttl").definition


def test_per_role_hits_sum_to_the_total(policies_case):
    _, report, tl = policies_case
    for c in report.curves:
        for p in c.points:
            assert set(p.per_role) == set(ROLES)
            assert sum(r.hits for r in p.per_role.values()) == p.hits, (c.policy, p)
            assert sum(r.blocks for r in p.per_role.values()) == p.blocks
            for k, role in enumerate(ROLES):
                assert p.per_role[role].blocks == int(tl.lengths[tl.role == k].sum())
            if p.blocks:
                assert p.hit_rate == p.hits / p.blocks


def test_opt_bounds_every_policy(policies_case):
    _, report, _ = policies_case
    opt = report.curve("opt")
    for c in report.curves:
        for p, o in zip(c.points, opt.points, strict=True):
            assert p.hits <= o.hits, (c.policy, p.capacity_blocks, p.hits, o.hits)
    # the fixture is not trivial: OPT beats LRU somewhere, LRU and OPT differ from vLLM
    lru = report.curve("lru")
    assert any(o.hits > p.hits for p, o in zip(lru.points, opt.points, strict=True))
    assert [p.hits for p in report.curve("vllm").points] != [p.hits for p in lru.points]
    # stack policies: hits never fall as the capacity grows
    for name in ("lru", "opt", "ttl"):
        hits = [p.hits for p in report.curve(name).points]
        assert hits == sorted(hits), name


def test_unbounded_opt_is_unbounded_lru(policies_case):
    _, report, _ = policies_case
    lru, opt = report.curve("lru").points[-1], report.curve("opt").points[-1]
    assert lru.capacity_blocks is None and opt.capacity_blocks is None
    assert opt.hits == lru.hits > 0
    assert opt.per_role == lru.per_role


def test_ttl_without_expiry_is_lru(ds):
    report = capacity_report(ds, options=SizingOptions(policies=["lru", "ttl"], ttl_s=1e12))
    lru, ttl = report.curves
    assert ttl.policy == "ttl" and "1e+12 s" in ttl.definition
    assert _without_policy(ttl) == _without_policy(lru)
    # and the default TTL (300 s) does expire blocks on this fixture
    short = capacity_report(ds, options=SizingOptions(policies=["ttl"])).curves[0]
    assert any(s.hits < p.hits for s, p in zip(short.points, lru.points, strict=True))


def _check_against(curve, tl, per_call: dict) -> None:
    """Each point's hits (and per role) are the sum of the reference's per-call hits."""
    for p in curve.points:
        if p.capacity_blocks not in per_call:
            continue
        h = np.asarray(per_call[p.capacity_blocks])
        assert h.shape == (tl.calls,)
        assert p.hits == int(h.sum()), (curve.policy, p.capacity_blocks)
        for k, role in enumerate(ROLES):
            assert p.per_role[role].hits == int(h[tl.role == k].sum()), (curve.policy, role)


def test_opt_points_are_the_direct_simulation(policies_case):
    _, report, tl = policies_case
    opt = report.curve("opt")
    caps = [c for c in _caps(opt) if c is not None]
    some = [caps[3], caps[len(caps) // 2], caps[-3]]  # small, middle, large
    ref = {c: opt_reference_hits(tl.keys, tl.lengths, c) for c in some}
    assert len({int(h.sum()) for h in ref.values()}) == 3  # three different points
    _check_against(opt, tl, ref)


def test_vllm_points_are_vllm_call_hits(policies_case):
    _, report, tl = policies_case
    vllm = report.curve("vllm")
    ref = {
        c: vllm_call_hits(
            tl.keys, tl.lengths, tl.start_s, tl.tokens_in, tl.tokens_out, 64, c, ServiceModel()
        )
        for c in _caps(vllm)
    }
    _check_against(vllm, tl, ref)
    # at most (n - 1) // B blocks a call, as the server reports
    for h in ref.values():
        assert (h <= np.maximum(tl.tokens_in - 1, 0) // 64).all()
        assert (h <= tl.lengths).all()


def test_vllm_follows_the_service_model(ds):
    slow = ServiceModel(prefill_tokens_per_s=100.0, decode_tokens_per_s=1.0, max_num_seqs=2)
    report = capacity_report(ds, options=SizingOptions(policies=["vllm"], service=slow))
    tl = timeline(ds)
    ref = {
        c: vllm_call_hits(tl.keys, tl.lengths, tl.start_s, tl.tokens_in, tl.tokens_out, 64, c, slow)
        for c in _caps(report.curves[0])
    }
    _check_against(report.curves[0], tl, ref)


def test_ttl_points_are_the_direct_simulation(policies_case, ds):
    arrival, _, tl = policies_case
    for ttl_s in (300.0, 20.0):
        report = capacity_report(
            ds, arrival=arrival, options=SizingOptions(policies=["ttl"], ttl_s=ttl_s)
        )
        ttl = report.curves[0]
        ref = {c: ttl_reference_hits(tl.keys, tl.lengths, tl.start_s, ttl_s, c) for c in _caps(ttl)}
        _check_against(ttl, tl, ref)


def test_vllm_accepts_a_capacity_of_zero(ds):
    report = capacity_report(ds, capacities=[0, 5], options=SizingOptions(policies=["vllm"]))
    assert report.curves[0].points[0].hits == 0


def test_policy_options_without_capacity_are_refused(ds, tmp_path):
    for extra in (["--policy", "opt"], ["--tiers", "gpu=1GiB"], ["--replicas", "2"]):
        rc, stdout, stderr = _cli("replay", ds.path, "--json", tmp_path / "r.json", *extra)
        assert rc == 2 and "need --capacity" in stderr and len(stderr.strip().splitlines()) == 1


# ---- 3. parse_policies ----------------------------------------------------------------------


def test_parse_policies(ds):
    assert parse_policies("lru,opt") == ["lru", "opt"]
    assert parse_policies("opt,lru,opt,lru") == ["opt", "lru"]
    assert parse_policies("LRU") == ["lru"]
    assert parse_policies(" Lru , OPT ,") == ["lru", "opt"]
    assert parse_policies(["ttl", "TTL", "vllm"]) == ["ttl", "vllm"]
    assert parse_policies(",".join(POLICIES)) == list(POLICIES) == ALL
    for bad in ("lfu", "lru,lfu", ["opt", "belady"]):
        with pytest.raises(ValueError) as exc:
            parse_policies(bad)
        msg = str(exc.value)
        assert "\n" not in msg
        assert ("'lfu'" if "lfu" in bad else "'belady'") in msg
        assert all(p in msg for p in POLICIES)
    for empty in ("", " ", ",", " , ", []):
        with pytest.raises(ValueError, match="no policy"):
            parse_policies(empty)
    with pytest.raises(ValueError, match="'lfu'"):
        capacity_report(ds, options=SizingOptions(policies=["lfu"]))


# ---- 4. tiers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["gpu=100MiB,host=700MiB", "gpu=12blocks,host=87"], ids=["bytes", "blocks"]
)
def test_tiers_total_is_lru_at_the_summed_capacity(ds, spec):
    # 100 MiB / 8 MiB = 12.5 -> 12 blocks, 700 MiB -> 87 blocks: 99 in all
    options = SizingOptions(tiers=spec)
    report = capacity_report(ds, capacities=[99], geometry=GEOMETRY, options=options)
    t = report.tiers
    assert t is not None and report.fleet is None
    assert [r["name"] for r in t["tiers"]] == ["gpu", "host"]
    assert [r["capacity_blocks"] for r in t["tiers"]] == [12, 87]
    assert t["bytes_per_block"] == GEOMETRY.bytes_per_block(64) == 8 * 2**20
    lru = report.curves[0]
    assert _caps(lru) == [99, None]
    assert t["total"]["capacity_blocks"] == 99
    assert t["total"]["blocks"] == lru.points[0].hits > 0
    assert t["total"]["blocks"] == sum(r["blocks"] for r in t["tiers"])
    assert t["blocks_total"] == lru.blocks_total
    assert t["total"]["blocks"] + t["miss"]["blocks"] == lru.blocks_total
    # the fastest tier serves at least what an LRU cache of its own size would hit
    alone = capacity_curve(ds, [12]).points[0].hits
    assert t["tiers"][0]["blocks"] >= alone
    assert t["tiers"][1]["blocks"] > 0


def test_tiers_need_a_geometry(ds):
    with pytest.raises(ValueError, match="model geometry"):
        capacity_report(ds, capacities=[99], options=SizingOptions(tiers="gpu=1GiB"))


# ---- 5. replicas ----------------------------------------------------------------------------


def test_fleet_through_the_report(ds):
    assert capacity_report(ds, options=SizingOptions(replicas=1)).fleet is None
    report = capacity_report(ds, options=SizingOptions(replicas=3))
    lru, f = report.curves[0], report.fleet
    assert f is not None and f["replicas"] == 3 and f["routing"] == "session"
    assert [p["capacity_blocks"] for p in f["points"]] == _caps(lru)
    assert f["blocks_total"] == lru.blocks_total and f["calls"] == lru.calls
    assert sum(x["blocks"] for x in f["load"]) == lru.blocks_total
    assert sum(x["calls"] for x in f["load"]) == lru.calls
    for fp, p in zip(f["points"], lru.points, strict=True):
        assert fp["hits"] == sum(fp["replica_hits"])
        # a session stays on one replica and no key is shared across traces: each replica
        # sees every access of its keys with fewer others in between, so at least the hits
        # of one cache of that size, and the same hits unbounded
        assert fp["hits"] >= p.hits, p.capacity_blocks
    assert f["points"][-1]["hits"] == lru.points[-1].hits
    # given capacities: the same ones, plus unbounded
    report = capacity_report(
        ds, capacities=[50, 5], options=SizingOptions(replicas=2, routing="round_robin")
    )
    assert [p["capacity_blocks"] for p in report.fleet["points"]] == [5, 50, None]
    assert report.fleet["routing"] == "round_robin"


# ---- 7. sized_report: the leading traces ----------------------------------------------------


def test_sized_report_covers_the_leading_traces(ds):
    per_trace = [
        int((ds.column("tokens_in") // ds.column("block_size"))[sl].sum())
        for sl in ds.trace_slices()
    ]
    two = per_trace[0] + per_trace[1]
    for budget, want in ((two, 2), (two - 1, 1), (1, 1), (0, len(ds.traces))):
        report, n = sized_report(ds, max_blocks=budget, options=SizingOptions(policies=ALL))
        assert n == want == capacity_traces(ds, budget), budget
        part = ds.head(n)
        curve = report.curve("lru")
        assert curve.model_dump() == capacity_curve(part, arrival=arrival_for(part)).model_dump()
        assert curve.calls == part.n_calls
        if budget:
            assert curve.blocks_total <= max(budget, per_trace[0])
        assert all(c.blocks_total == curve.blocks_total for c in report.curves)
    with pytest.raises(ValueError, match="max_blocks"):
        sized_report(ds, max_blocks=-1)


def test_sized_report_capacities_and_geometry(ds):
    options = SizingOptions(policies=["lru", "opt"], tiers="gpu=100MiB,host=700MiB")
    report, n = sized_report(ds, capacities="16MiB, 5", kv_model="llama-3.1-8b", options=options)
    assert n == len(ds.traces)
    for c in report.curves:
        assert _caps(c) == [2, 5, None]  # 16 MiB: two blocks of 8 MiB
        assert [p.capacity_bytes for p in c.points] == [16 * 2**20, 40 * 2**20, None]
    assert report.tiers["total"]["blocks"] == capacity_curve(ds, [99]).points[0].hits
    with pytest.raises(ValueError, match="16GiB"):
        sized_report(ds, capacities="16GiB")  # bytes without a geometry


def test_plot_png(ds):
    one = capacity_report(ds)
    many = capacity_report(ds, options=SizingOptions(policies=ALL))
    for report in (one, many):
        assert plot_png(report).startswith(PNG)


# ---- 6. the command line --------------------------------------------------------------------


def _cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


TIERS = "gpu=100MiB,host=700MiB"


def test_cli_every_policy_tiers_fleet_and_plot(ds, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "P.png"
    policies = ["lru", "opt", "vllm", "ttl"]
    rc, stdout, stderr = _cli(
        "replay", ds.path, "--json", out, "--capacity", "auto", "--policy", ",".join(policies),
        "--kv-model", "llama-3.1-8b", "--tiers", TIERS, "--replicas", 2, "--plot", png,
    )  # fmt: skip
    assert rc == 0, stderr
    data = json.loads(out.read_text())
    curves = data["capacity_policies"]
    assert [c["policy"] for c in curves] == policies
    assert data["capacity_curve"]["policy"] == "lru"
    assert data["capacity_curve"] == curves[0]
    for c in curves:
        assert isinstance(c["definition"], str) and "full blocks" in c["definition"]
        assert [p["capacity_blocks"] for p in c["points"]] == [
            p["capacity_blocks"] for p in curves[0]["points"]
        ]
    # the same figures as the library
    report, _ = sized_report(
        ds,
        capacities="auto",
        kv_model="llama-3.1-8b",
        options=SizingOptions(policies=policies, tiers=TIERS, replicas=2),
    )
    assert curves == [c.model_dump(mode="json") for c in report.curves]
    assert data["capacity_tiers"] == report.tiers
    assert [t["name"] for t in data["capacity_tiers"]["tiers"]] == ["gpu", "host"]
    assert data["capacity_fleet"] == report.fleet and data["capacity_fleet"]["replicas"] == 2
    # the table: a column per policy, in the order asked, then the roles
    lines = stdout.splitlines()
    head = next(k for k, line in enumerate(lines) if line.strip().startswith("capacity (blocks)"))
    assert lines[head].split()[2:] == [*policies, "parent", "subagent"]
    rows = lines[head + 1 : head + 1 + len(curves[0]["points"])]
    assert rows[-1].split()[0] == "unbounded"
    for row, pts in zip(rows, zip(*(c["points"] for c in curves), strict=True), strict=True):
        cells = row.split()
        assert len(cells) == 1 + len(policies) + 2
        assert cells[1 : 1 + len(policies)] == [f"{p['hit_rate']:.4f}" for p in pts]
    assert "tiers (llama-3.1-8b" in stdout and "fleet: 2 replicas" in stdout
    assert png.read_bytes().startswith(PNG)


def test_cli_without_policy_is_unchanged(ds, tmp_path):
    out = tmp_path / "r.json"
    rc, stdout, stderr = _cli("replay", ds.path, "--json", out, "--capacity", "auto")
    assert rc == 0, stderr
    data = json.loads(out.read_text())
    assert "capacity_policies" not in data
    assert "capacity_tiers" not in data and "capacity_fleet" not in data
    want = capacity_curve(ds, arrival=arrival_for(ds)).model_dump(mode="json")
    assert data["capacity_curve"] == want
    head = next(line for line in stdout.splitlines() if "capacity (blocks)" in line)
    assert head.split()[2:] == ["lru", "parent", "subagent"]


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--policy", "lfu"], "'lfu'"),
        (["--policy", ""], "--policy"),
        (["--kv-model", "llama-3.1-8b", "--tiers", "gpu=lots"], "'lots'"),
        (["--tiers", "gpu=1GiB"], "--kv-model"),
        (["--kv-model", "not-a-model"], "'not-a-model'"),
        (["--replicas", "0"], "--replicas"),
        (["--ttl-s", "0"], "--ttl-s"),
        (["--capacity-max-blocks", "-1"], "--capacity-max-blocks"),
        (["--prefill-tps", "0"], "--prefill-tps"),
        (["--decode-tps", "-1"], "--decode-tps"),
    ],
)
def test_cli_bad_input_is_one_line(ds, tmp_path, extra, fragment):
    out = tmp_path / "r.json"
    rc, stdout, stderr = _cli("replay", ds.path, "--json", out, "--capacity", "auto", *extra)
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("weka-assets replay: error: "), stderr
    assert fragment in lines[0], stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not out.exists()


# The capacity asset's policy sweep, from a process that has not imported numba: it runs in a
# worker process, and the same report comes back.
_POLICY_CHILD = """
import json, sys
if __name__ == "__main__":
    from weka_assets.decoding.dataset import open_dataset
    from weka_assets.defs.resources import ReplayOptions
    from weka_assets.store_chain import policy_report

    ds = open_dataset(sys.argv[1])
    options = ReplayOptions(policies=["lru", "opt", "vllm"], policy_max_blocks=0)
    report, n = policy_report(ds, options, None, "c")
    print(json.dumps({"numba": "numba" in sys.modules, "traces": n,
                      "report": report.model_dump(mode="json")}))
"""


def test_the_policy_sweep_leaves_numba_in_its_worker(ds, tmp_path):
    """numba's compiler and LLVM stay loaded in the process that imports them (about 150 MB):
    the asset's policy sweep (vllm and opt compile with it) runs in a worker of its own, so a
    Dagster run's process, which executes every later step, never holds them; the report is
    the one `sized_report` gives in process."""
    import os
    import subprocess
    import sys

    from weka_assets.defs.resources import ReplayOptions

    script = tmp_path / "child.py"
    script.write_text(_POLICY_CHILD)
    env = {**os.environ, "WEKA_ASSETS_WORKERS": "2"}
    run = subprocess.run(
        [sys.executable, str(script), str(ds.path)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["numba"] is False
    options = ReplayOptions(policies=["lru", "opt", "vllm"], policy_max_blocks=0)
    sizing, model, _ = options.sizing(None)
    want, n = sized_report(
        ds, max_blocks=0, arrival_mode="", kv_model=model, points=options.points, options=sizing
    )
    assert out["traces"] == n == len(ds.traces)
    assert out["report"] == json.loads(want.model_dump_json())
    assert {c["policy"] for c in out["report"]["curves"]} == {"lru", "opt", "vllm"}
