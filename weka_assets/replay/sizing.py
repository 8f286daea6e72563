"""What a team sizes hardware with, from one corpus: the hit rate against KV-cache capacity under
each eviction policy (with Belady's bound as the ceiling), what each tier of a tiered cache
serves and the read bandwidth it needs, and a fleet of replicas behind a router.

Policies (`POLICIES`; the same capacities, the same full-block denominator):
- `lru`: `capacity`'s one-pass sweep (today's figures, unchanged);
- `vllm`: vLLM 0.32's own block pool (`block_pool`): calls run for a modelled time
  (`ServiceModel`), blocks of running calls are pinned, a finished call's blocks are released
  tail first, its generated tokens' blocks take room, and a call hits at most `(n - 1) // B`
  blocks, as the server reports; the capacity is the pool's data blocks (vLLM's null block
  comes on top);
- `opt`: Belady's clairvoyant eviction (`policies`): no policy hits more at that capacity;
- `ttl`: a block expires `ttl_s` seconds after its last use, within an LRU cache of the
  capacity (hosted prompt caches; the unbounded point is the TTL alone).
"""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pydantic import BaseModel, Field

from weka_assets.decoding.dataset import ROLES, DecodedDataset, open_dataset
from weka_assets.replay.accesses import Timeline, timeline
from weka_assets.replay.block_pool import ServiceModel, vllm_curve_hits
from weka_assets.replay.capacity import (
    CapacityCurve,
    CapacityPoint,
    KVGeometry,
    RolePoint,
    capacity_curve,
    previous_touch,
    reuse_profile,
    sweep_capacities,
)
from weka_assets.replay.schedule import Arrival

POLICIES = ("lru", "vllm", "opt", "ttl")

DEFINITIONS = {
    "vllm": "vllm: vLLM 0.32's block pool of this many data blocks (tail-first release, running "
    "calls pinned, generated blocks counted, at most (n - 1) // B hit blocks), calls running "
    "for the service model's time; hit rate = hit blocks / full blocks of all calls (aggregate)",
    "opt": "opt: Belady's clairvoyant eviction (farthest next use; the deeper block of one next "
    "call first), the bound no eviction policy beats at this capacity; calls instantaneous; hit "
    "rate = leading-run hit blocks / full blocks of all calls (aggregate)",
    "ttl": "ttl: a block expires {ttl:g} s after its last use, within an LRU cache of this "
    "capacity; calls instantaneous; hit rate = leading-run hit blocks / full blocks of all "
    "calls (aggregate)",
}


def parse_policies(text: str | Sequence[str]) -> list[str]:
    """["lru", "opt"] from "lru,opt" (or a list); a one-line ValueError for an unknown one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in (str(x).strip().lower() for x in items):
        if not item:
            continue
        if item not in POLICIES:
            raise ValueError(f"unknown policy {item!r}: expected one of {', '.join(POLICIES)}")
        if item not in out:
            out.append(item)
    if not out:
        raise ValueError(f"no policy given: expected one or more of {', '.join(POLICIES)}")
    return out


class SizingOptions(BaseModel):
    """Which policies to sweep, how the `vllm` and `ttl` policies are parameterised, and the
    optional tiers and fleet."""

    policies: list[str] = Field(default_factory=lambda: ["lru"])
    ttl_s: float = Field(default=300.0, gt=0, description="ttl: seconds after a block's last use")
    service: ServiceModel = Field(default_factory=ServiceModel)
    tiers: str | None = Field(default=None, description='e.g. "gpu=80GiB,host=1TiB"')
    replicas: int = Field(default=1, ge=1)
    routing: str = Field(default="session", description="round_robin | session | prefix")


class CapacityReport(BaseModel):
    curves: list[CapacityCurve]  # one per policy, in the order asked, at the same capacities
    tiers: dict | None = None  # tiers.TierReport, dumped
    fleet: dict | None = None  # replicas.FleetCurve, dumped

    def curve(self, policy: str) -> CapacityCurve | None:
        return next((c for c in self.curves if c.policy == policy), None)


def _role_hits(tl: Timeline, hits: dict[int | None, np.ndarray]) -> dict:
    """{capacity: hits per role (index into ROLES)} from per-call hits (timeline order)."""
    return {
        cap: np.bincount(tl.role, weights=h, minlength=len(ROLES)).astype(np.int64)
        for cap, h in hits.items()
    }


def _curve(
    lru: CapacityCurve, tl: Timeline, policy: str, role_hits: dict, ttl_s: float
) -> CapacityCurve:
    """A curve of `policy` at each of `lru`'s capacities, from its hits per role there."""
    lengths = tl.lengths
    total = int(lengths.sum())
    role_blocks = np.bincount(tl.role, weights=lengths, minlength=len(ROLES)).astype(np.int64)
    points = []
    for base in lru.points:
        h = role_hits[base.capacity_blocks]
        per_role = {}
        for k, role in enumerate(ROLES):
            rh, rb = int(h[k]), int(role_blocks[k])
            per_role[role] = RolePoint(hits=rh, blocks=rb, hit_rate=rh / rb if rb else None)
        n = int(sum(int(x) for x in h))
        points.append(
            CapacityPoint(
                capacity_blocks=base.capacity_blocks,
                capacity_bytes=base.capacity_bytes,
                hits=n,
                blocks=total,
                hit_rate=n / total if total else None,
                per_role=per_role,
            )
        )
    return lru.model_copy(
        update={
            "policy": policy,
            "definition": DEFINITIONS[policy].format(ttl=ttl_s),
            "points": points,
        }
    )


def _simulated_hits(
    policy: str, tl: Timeline, caps: list[int], prev: np.ndarray, options: SizingOptions
) -> dict[int | None, np.ndarray]:
    """Per-call hits of a policy simulated capacity by capacity (opt, vllm): they need the
    keys and their previous touches, not the LRU depths, so they run beside the LRU pass."""
    if policy == "opt":
        from weka_assets.replay.policies import opt_curve_hits

        return opt_curve_hits(tl.keys, tl.lengths, [*caps, None], prev)
    sizes = np.unique(tl.block_size)
    if sizes.size > 1:
        raise ValueError(f"the vllm policy needs one block size; this corpus mixes {sizes}")
    bs = int(sizes[0]) if sizes.size else 1
    return vllm_curve_hits(
        tl.keys, tl.lengths, tl.start_s, tl.tokens_in, tl.tokens_out, bs, [*caps, None],
        options.service, prev,
    )  # fmt: skip


def capacity_report(
    ds: DecodedDataset,
    capacities: Sequence[int] | None = None,
    arrival: Arrival = Arrival(),
    time_scale: float = 1.0,
    geometry: KVGeometry | None = None,
    points: int = 12,
    options: SizingOptions | None = None,
) -> CapacityReport:
    """Every asked policy's curve at the same capacities (the LRU sweep's, from its distinct
    blocks, when none are given), plus the tier report and the fleet curve when asked.

    opt and vllm run on a thread of their own while this one computes the LRU depths (mostly
    single-threaded numpy): their capacities only need the count of distinct blocks, which
    the previous touches give (a key's first touch has none)."""
    options = options or SizingOptions()
    policies = parse_policies(options.policies)
    need_timeline = set(policies) - {"lru"} or options.tiers or options.replicas > 1
    tl = prev = None
    caps = None if capacities is None else sorted({int(c) for c in capacities})
    simulated = [p for p in policies if p in ("opt", "vllm")]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="policies") as beside:
        pending = {}
        if need_timeline:  # the keys and their previous touches once, for every policy
            tl = timeline(ds, arrival, time_scale)
            prev = previous_touch(tl.keys)
            if caps is None:
                caps = sweep_capacities(int(np.count_nonzero(prev < 0)), points)
            pending = {
                p: beside.submit(_simulated_hits, p, tl, caps, prev, options) for p in simulated
            }
        prof = reuse_profile(ds, arrival, time_scale, timeline=tl, prev=prev)
        if caps is None:
            caps = sweep_capacities(prof.distinct_blocks, points)
        lru = capacity_curve(ds, caps, arrival, time_scale, geometry, profile=prof)
        curves: dict[str, CapacityCurve] = {"lru": lru}
        if "ttl" in policies:  # totals per role straight from the profile: one sort per role
            from weka_assets.replay.policies import ttl_profile

            ttl = ttl_profile(tl.keys, tl.lengths, tl.start_s, prof, prev)
            by_role = [
                ttl.total_hits(options.ttl_s, [*caps, None], tl.role == k)
                for k in range(len(ROLES))
            ]
            role_hits = {c: np.array([r[c] for r in by_role]) for c in [*caps, None]}
            curves["ttl"] = _curve(lru, tl, "ttl", role_hits, options.ttl_s)
        for policy, hits in pending.items():
            curves[policy] = _curve(lru, tl, policy, _role_hits(tl, hits.result()), options.ttl_s)
    report = CapacityReport(curves=[curves[p] for p in policies])
    if options.tiers:
        from weka_assets.replay.tiers import tier_report

        if geometry is None:
            raise ValueError("tiers in bytes need a model geometry (--kv-model)")
        sizes = np.unique(tl.block_size)
        if sizes.size > 1:
            raise ValueError(f"tiers need one block size; this corpus mixes {sizes.tolist()}")
        bs = int(sizes[0]) if sizes.size else 1
        # the LRU pass's depths: its order is the timeline's (both `global_order`)
        tiers = tier_report(prof, tl.start_s, geometry, options.tiers, bs)
        report.tiers = tiers.model_dump(mode="json")
    if options.replicas > 1:
        from weka_assets.replay.replicas import fleet_curve

        fleet = fleet_curve(tl, options.replicas, options.routing, [*caps, None], tl.session_ids)
        report.fleet = fleet.model_dump(mode="json")
    return report


def sized_report(
    ds: DecodedDataset,
    *,
    max_blocks: int = 0,
    capacities: str | None = None,
    arrival_mode: str | None = None,
    time_scale: float = 1.0,
    kv_model: str | None = None,
    kv_model_revision: str | None = None,
    points: int = 12,
    options: SizingOptions | None = None,
) -> tuple[CapacityReport, int]:
    """The capacity report of the command line and the capacity asset alike: the leading traces
    up to `max_blocks` block accesses (0: all), the model geometry from a preset name or a
    config (`tiers.resolve_geometry`), capacities as text ("auto"/None: the default sweep; else
    comma-separated blocks or sizes). Returns (report, traces covered); a ValueError names
    what is wrong in one line."""
    from weka_assets.replay.capacity import capacity_part, parse_capacity
    from weka_assets.replay.schedule import arrival_for
    from weka_assets.replay.tiers import resolve_geometry

    if max_blocks < 0:
        raise ValueError(f"max_blocks must be 0 or more, got {max_blocks}")
    part, n = capacity_part(ds, max_blocks)
    geometry = resolve_geometry(kv_model, kv_model_revision) if kv_model else None
    sizes = None
    if capacities and capacities != "auto":
        bs = part.block_sizes[0] if len(part.block_sizes) == 1 else 64
        sizes = [
            parse_capacity(x.strip(), bs, geometry) for x in capacities.split(",") if x.strip()
        ]
    report = capacity_report(
        part,
        sizes,
        arrival_for(part, arrival_mode),
        time_scale,
        geometry,
        points=points,
        options=options,
    )
    return report, n


def sized_report_at(path: str, kw: dict) -> tuple[CapacityReport, int]:
    """`sized_report(**kw)` of the dataset stored at `path`: a worker process's task, the
    dataset memory-mapped there (the caller verified it)."""
    return sized_report(open_dataset(path), **kw)


def plot_png(report: CapacityReport) -> bytes:
    """`plot_figure` as a small PNG."""
    from weka_assets.replay.capacity import PLOT_MARGINS
    from weka_assets.replay.plotting import figure_png

    return figure_png(plot_figure(report), PLOT_MARGINS)


def plot_figure(report: CapacityReport):
    """One policy: `capacity.plot_figure` (a line per role). Several: hit rate of all calls
    against capacity, a line per policy, Belady's bound (`opt`) dashed as the ceiling."""
    from weka_assets.replay.capacity import plot_figure as lru_figure
    from weka_assets.replay.plotting import new_figure, plain_log_labels

    if len(report.curves) == 1:
        return lru_figure(report.curves[0])
    first = report.curves[0]
    fig, ax = new_figure(6.4, 4.0)
    for k, curve in enumerate(report.curves):
        pts = [p for p in curve.points if p.capacity_blocks]
        y = [np.nan if p.hit_rate is None else p.hit_rate for p in pts]
        bound = curve.policy == "opt"
        ax.plot(
            [p.capacity_blocks for p in pts],
            y,
            marker="" if bound else "o",
            ms=3,
            ls="--" if bound else "-",
            color="black" if bound else f"C{k}",
            label="opt (bound)" if bound else curve.policy,
        )
    ax.set_xscale("log")
    plain_log_labels(ax.xaxis)
    ax.set_ylim(0, 1.02)
    unit = f"blocks of {first.block_size} tokens" if first.block_size else "blocks"
    ax.set_xlabel(f"KV-cache capacity ({unit})")
    ax.set_ylabel("prefix-cache hit rate (blocks)")
    ax.set_title(
        f"eviction policies, {first.calls} calls, arrival {first.arrival['mode']}", fontsize=9
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig
