"""When each call happens: subagent inner-time conventions and the replay order of a trace."""

import numpy as np

from weka_assets.traces.schema import Call, Subagent, Trace


def inner_time_convention(sub: Subagent) -> str | None:
    """`absolute` (every inner t >= entry t), `relative` (every inner t < entry t), else `mixed`."""
    if not sub.calls:
        return None
    ts = np.fromiter((c.t for c in sub.calls), dtype=np.float64, count=len(sub.calls))
    if (ts >= sub.t).all():
        return "absolute"
    if (ts < sub.t).all():
        return "relative"
    return "mixed"


def set_absolute_times(trace: Trace) -> None:
    """Fill `Call.t_abs`: relative inner times get their entry's spawn time added."""
    for call in trace.parent_calls:
        call.t_abs = call.t
    for sub in trace.subagents:
        shift = sub.t if inner_time_convention(sub) == "relative" else 0.0
        for call in sub.calls:
            call.t_abs = call.t + shift


def replay_order(trace: Trace) -> list[Call]:
    """Calls sorted by absolute start time, ties broken by document order."""
    set_absolute_times(trace)
    return sorted(trace.calls, key=lambda c: (c.t_abs, c.doc_index))
