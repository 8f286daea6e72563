"""One shared timeline for every trace of a corpus: when each trace starts, when each call starts.

All traces of a corpus are put on one clock, as if their sessions shared one server. Trace `k`
(index into `ds.traces`) starts at `trace_offsets(...)[k]`; a call starts at its trace's offset
plus its absolute time within the trace (`t_abs`: relative subagent times already made
absolute), scaled by `time_scale` (0.5 replays twice as fast).

The recorded times are used as they are. They already encode the dependencies of an agentic
session: a parent's next call was recorded after its non-background subagents returned, so
replaying the recorded start times keeps that order without modelling it again. Nothing here
models call durations or queueing; the bounded-cache simulator treats each call as
instantaneous at its start time, and the live replay measures what a real server does.

A dataset of a format whose call times share one corpus-wide clock (`TraceFormat.corpus_clock`,
named by the manifest's `corpus_format`: Mooncake, one trace of requests per file, and
Bailian, one session per trace) is different: its `t_abs` are the requests' recorded timestamps
on that clock (`corpus_clock`), not times within a trace. Under `recorded` (its default,
`arrival_for`) they are used as they are; under the other modes each time is taken relative to
its own session (`DecodedDataset.sessions`: a trace, or one request of a file of requests), so
the arrival model alone places it (`together`: all at once, `staggered`: one every
`interval_s`). What the modes below call a trace is a session.

Arrival modes:
- `recorded`: no offset; every call at its recorded time counted from the dataset's first call
  (`t_abs - min(t_abs)`): a Mooncake request at its timestamp minus the first timestamp. On Weka
  traces, whose clocks each start near 0, it is `together` shifted by a constant.
- `together`: every trace starts at 0.
- `staggered`: trace `k` starts at `k * interval_s`.
- `poisson`: trace 0 starts at 0 and the gaps between consecutive trace starts are exponential
  with rate `rate_per_s` (mean gap `1 / rate_per_s`), drawn from `numpy.random.default_rng(seed)`:
  the same seed always gives the same offsets.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np

from weka_assets.decoding.dataset import DecodedDataset
from weka_assets.traces import formats

ArrivalMode = Literal["together", "staggered", "poisson", "recorded"]
ARRIVAL_MODES = ("together", "staggered", "poisson", "recorded")


@dataclass(frozen=True)
class Arrival:
    """How the traces of a corpus arrive on the shared timeline."""

    mode: ArrivalMode = "together"
    interval_s: float = 60.0  # staggered: trace k starts at k * interval_s
    rate_per_s: float = 0.05  # poisson: exponential gaps between trace starts with this rate
    seed: int = 0  # poisson: the gaps' random seed

    def __post_init__(self):
        if self.mode not in ARRIVAL_MODES:
            raise ValueError(f"unknown arrival mode {self.mode!r}")
        if not np.isfinite(self.interval_s) or self.interval_s < 0:
            raise ValueError(f"interval_s must be finite and >= 0, got {self.interval_s}")
        if not np.isfinite(self.rate_per_s) or self.rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be finite and > 0, got {self.rate_per_s}")


def trace_offsets(n_traces: int, arrival: Arrival) -> np.ndarray:
    """Start offset in seconds of each trace on the shared timeline (float64 [n_traces])."""
    if n_traces < 0:
        raise ValueError(f"n_traces must be >= 0, got {n_traces}")
    if arrival.mode in ("together", "recorded"):
        return np.zeros(n_traces, dtype=np.float64)
    if arrival.mode == "staggered":
        return np.arange(n_traces, dtype=np.float64) * arrival.interval_s
    gaps = np.random.default_rng(arrival.seed).exponential(
        1.0 / arrival.rate_per_s, max(n_traces - 1, 0)
    )
    return np.concatenate([[0.0], np.cumsum(gaps)])[:n_traces]


def corpus_clock(ds: DecodedDataset) -> bool:
    """True when the dataset's call times share one corpus-wide clock: its format says so
    (Mooncake, Bailian; `traces.formats`)."""
    manifest = ds.manifest if isinstance(ds.manifest, dict) else {}
    return formats.corpus_clock(manifest.get("corpus_format"))


def arrival_for(ds: DecodedDataset, mode: str | None = None, **kw) -> Arrival:
    """`Arrival(mode, **kw)`, where no mode (None, "" or "auto") means the dataset's default:
    `recorded` on a corpus-wide clock (Mooncake, Bailian), `together` otherwise."""
    if mode in (None, "", "auto"):
        mode = "recorded" if corpus_clock(ds) else "together"
    return Arrival(mode, **kw)


def call_start_times(
    ds: DecodedDataset, arrival: Arrival = Arrival(), time_scale: float = 1.0
) -> np.ndarray:
    """Start time of every call (aligned with `ds.calls`): offset[trace] + t * time_scale, with
    t = `t_abs`, or (see the module doc) taken from the first call under `recorded` and from
    the trace's first call on a corpus-wide clock."""
    if not np.isfinite(time_scale) or time_scale <= 0:
        raise ValueError(f"time_scale must be finite and > 0, got {time_scale}")
    trace, ids = _sessions(ds)
    offsets = trace_offsets(len(ids), arrival)
    t = np.asarray(ds.calls["t_abs"], dtype=np.float64)
    if t.size and arrival.mode == "recorded":
        t = t - t.min()
    elif t.size and corpus_clock(ds):
        first = np.full(len(ids), np.inf)
        np.minimum.at(first, trace, t)
        t = t - first[trace]
    return offsets[trace] + t * time_scale


def _sessions(ds) -> tuple[np.ndarray, list]:
    """What an arrival model places: sessions (`DecodedDataset.sessions`: a trace, or one
    request of a file of requests, as when each line was a trace of its own)."""
    if isinstance(ds, DecodedDataset):
        return ds.sessions()
    return np.asarray(ds.calls["trace"], dtype=np.int64), list(ds.traces)


def global_order(
    ds: DecodedDataset, arrival: Arrival = Arrival(), time_scale: float = 1.0
) -> np.ndarray:
    """Call indices in start-time order; ties by (trace, position in the trace's replay order).

    Within one trace this is exactly the trace's replay order: its calls are stored in that
    order, the offset is the same for all of them, and scaling by a positive factor (rounding
    included) never reverses two times.
    """
    start = call_start_times(ds, arrival, time_scale)
    trace = np.asarray(ds.calls["trace"], dtype=np.int64)
    position = np.arange(start.size, dtype=np.int64)  # calls are grouped by trace, in order
    return np.lexsort((position, trace, start))
