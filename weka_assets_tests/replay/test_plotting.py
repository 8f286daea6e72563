"""The figures keep fixed margins: no label may fall outside the image, however large the
corpus behind the numbers."""

import pytest

from weka_assets.replay.blast_radius import PLOT_MARGINS as BLAST_MARGINS
from weka_assets.replay.blast_radius import BlastRadius, RoleBlast, blast_radius_figure
from weka_assets.replay.capacity import (
    KV_PRESETS,
    CapacityCurve,
    CapacityPoint,
    RolePoint,
    plot_figure,
)
from weka_assets.replay.capacity import PLOT_MARGINS as CAPACITY_MARGINS
from weka_assets.replay.plotting import figure_png


def overhang(fig, margins: dict) -> dict:
    """How far (inches) what the figure draws reaches past each edge, once laid out with
    `margins` as it is published: empty when everything is inside."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure_png(fig, margins)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    drawn = fig.get_tightbbox(canvas.get_renderer())  # inches, every drawn artist
    page = fig.bbox_inches
    out = {
        "left": page.x0 - drawn.x0,
        "bottom": page.y0 - drawn.y0,
        "right": drawn.x1 - page.x1,
        "top": drawn.y1 - page.y1,
    }
    return {edge: round(v, 3) for edge, v in out.items() if v > 0.01}


def curve(calls: int, top_blocks: int, model: str) -> CapacityCurve:
    geometry = KV_PRESETS[model]
    caps = [max(1, top_blocks // 4**k) for k in range(12)][::-1]
    rate = 0.97

    def point(cap):
        per_role = {
            r: RolePoint(hits=1, blocks=2, hit_rate=rate * (0.9 if r == "subagent" else 1))
            for r in ("parent", "subagent")
        }
        return CapacityPoint(
            capacity_blocks=cap,
            capacity_bytes=None if cap is None else cap * geometry.bytes_per_block(64),
            hits=1,
            blocks=2,
            hit_rate=rate,
            per_role=per_role,
        )

    return CapacityCurve(
        dataset="k" * 24,
        arrival={"mode": "poisson", "interval_s": None, "rate_per_s": 2.5, "seed": 7},
        time_scale=1.0,
        geometry={"name": geometry.name, "bytes_per_token": geometry.bytes_per_token},
        block_size=64,
        calls=calls,
        blocks_total=top_blocks * 3,
        distinct_blocks=top_blocks,
        points=[point(c) for c in caps] + [point(None)],
    )


@pytest.mark.parametrize(
    "calls,top,model", [(120, 300, "qwen2.5-7b"), (12_345_678, 4_000_000_000, "llama-3.1-405b")]
)
def test_capacity_plot_labels_stay_inside(calls, top, model):
    assert overhang(plot_figure(curve(calls, top, model)), CAPACITY_MARGINS) == {}


def blast(calls: int, previous: int | None) -> BlastRadius:
    role = RoleBlast(
        calls=calls,
        calls_tokens_changed=calls // 3,
        full_blocks_changed=calls * 40,
        distinct_blocks_changed=calls * 7,
        calls_cache_changed=calls // 2,
        token_replay_hit_rate=0.95,
        previous_token_replay_hit_rate=None if previous is None else 0.71,
        hit_rate_change=None if previous is None else 0.24,
    )
    return BlastRadius(
        **role.model_dump(),
        current_key="c" * 24,
        previous_key=None if previous is None else "p" * 24,
        current_manifest_version=(previous or 0) + 1,
        previous_manifest_version=previous,
        per_role={"parent": role, "subagent": role},
        by_cause={},
        tokens_changed_by_cause={},
        table=[],
    )


@pytest.mark.parametrize("calls,previous", [(9, None), (48_000_000, 117)])
def test_blast_radius_plot_labels_stay_inside(calls, previous):
    assert overhang(blast_radius_figure(blast(calls, previous)), BLAST_MARGINS) == {}
