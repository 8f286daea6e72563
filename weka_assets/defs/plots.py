"""Small PNG plots for asset metadata (rendered inline in the UI as markdown images) and the
files kept beside the data."""

import base64

from weka_assets.replay.blast_radius import BlastRadius
from weka_assets.replay.capacity import figure_png

ROLES_SHOWN = ("all", "parent", "subagent")


def markdown_image(png: bytes, alt: str) -> str:
    """A PNG as an inline markdown image (tens of KB: what the UI renders without a file)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def blast_radius_png(br: BlastRadius) -> bytes:
    """Two panels: calls whose tokens / cache hits changed per role, and the token-replay hit
    rate per role before and after the change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = [("all", br)] + [(r, br.per_role[r]) for r in ROLES_SHOWN[1:] if r in br.per_role]
    names = [name for name, _ in roles]
    x = range(len(roles))
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 3.2), dpi=90)
    try:
        w = 0.38
        for k, (field, label) in enumerate(
            (
                ("calls_tokens_changed", "tokens changed"),
                ("calls_cache_changed", "cache hits changed"),
            )
        ):
            values = [getattr(f, field) for _, f in roles]
            bars = left.bar(
                [i + (k - 0.5) * w for i in x], values, w, label=label, color=f"C{k + 3}"
            )
            left.bar_label(bars, fontsize=7)
        left.set_xticks(list(x), names)
        left.set_ylabel("calls")
        left.set_title(f"changed calls (of {br.calls})", fontsize=9)
        left.legend(fontsize=7)
        left.set_ylim(0, max([1] + [r.calls for _, r in roles]) * 1.1)

        before = [f.previous_token_replay_hit_rate for _, f in roles]
        after = [f.token_replay_hit_rate for _, f in roles]
        if any(v is not None for v in before):
            right.bar(
                [i - w / 2 for i in x],
                [v or 0 for v in before],
                w,
                label=f"manifest v{br.previous_manifest_version}",
                color="C7",
            )
        right.bar(
            [i + w / 2 for i in x],
            [v or 0 for v in after],
            w,
            label=f"manifest v{br.current_manifest_version}",
            color="C0",
        )
        right.set_xticks(list(x), names)
        right.set_ylim(0, 1.05)
        right.set_ylabel("token-replay hit rate")
        right.set_title(
            "no earlier dataset" if br.previous_key is None else "hit rate before / after",
            fontsize=9,
        )
        right.legend(fontsize=7, loc="lower right")
        return figure_png(fig)
    finally:
        plt.close(fig)
