"""Progress of long steps (reading, scope analysis, decoding, replay) as a person reads it.

`weka_assets.pipeline` reports `progress(stage, done, total, unit)` as it goes (`ProgressFn`);
a `ProgressReporter` turns those calls into lines such as

    decode 120/391 traces, 45.1 traces/s, ~6 s left
    decode 391/391 traces in 8.7 s, 45.0 traces/s

at most one line per `interval` seconds, plus the final line of each stage. The rate is the
average since the stage's first report; the time left is (total - done) / rate. A stage ends
when `done` reaches `total`, when another stage starts, or at `finish()` (a stage whose total
is unknown has no other end). `expect(stage, total)` supplies a total the caller knows when the
reporting code passes None.

- `ProgressReporter(emit)`: plain lines to any `emit(str)` (a logger, `print`).
- `TerminalProgress(stream)`: one bar redrawn in place on a terminal, ending in the final line.
- `cli_progress()`: the bar when stderr is a terminal, plain lines otherwise.
- `dagster_progress(context)`: lines through `context.log.info` (any object with `log.info`).

No Dagster import: the CLI and the assets share this module. Time comes from an injectable
clock, so the throttling and the figures are tested without waiting.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

Clock = Callable[[], float]

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_count(n: float, unit: str) -> str:
    """`1,234 traces`, or bytes scaled: `12.3 MiB`."""
    if unit == "bytes":
        value, k = float(n), 0
        while value >= 1024 and k < len(_BINARY_UNITS) - 1:
            value /= 1024
            k += 1
        return f"{int(value)} B" if k == 0 else f"{value:.1f} {_BINARY_UNITS[k]}"
    return f"{int(n):,} {unit}"


def format_done(done: int, total: int | None, unit: str) -> str:
    """`120/391 traces`, `12.3/50.0 MiB`, or `120 traces` when the total is unknown."""
    if total is None:
        return format_count(done, unit)
    if unit == "bytes":
        whole = format_count(total, unit)
        scale = whole.split()[-1]
        k = _BINARY_UNITS.index(scale)
        part = done if k == 0 else f"{done / 1024**k:.1f}"
        return f"{part}/{whole}"
    return f"{done:,}/{format_count(total, unit)}"


def format_rate(rate: float, unit: str) -> str:
    if unit == "bytes":
        return f"{format_count(rate, unit)}/s"
    number = f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"
    return f"{number} {unit}/s"


def format_duration(seconds: float) -> str:
    """`0.44 s`, `6.2 s`, `12 s`, `2 min 5 s`, `1 h 3 min`."""
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def format_left(seconds: float) -> str:
    """`~6 s left`: whole seconds, never `~0 s`."""
    if seconds < 1:
        return "<1 s left"
    if seconds < 60:
        return f"~{round(seconds)} s left"
    return f"~{format_duration(seconds)} left"


@dataclass
class StageState:
    """What a reporter knows about the stage in progress."""

    name: str
    unit: str
    started: float  # clock at the stage's first report
    first_done: int  # `done` at that report (the rate counts what happened after it)
    done: int = 0
    total: int | None = None
    now: float = 0.0
    shown: bool = False  # a line (or the bar) was shown for this stage
    finished: bool = False

    @property
    def elapsed(self) -> float:
        return self.now - self.started

    @property
    def rate(self) -> float | None:
        """Units per second since the first report; None before any time has passed."""
        if self.elapsed <= 0 or self.done <= self.first_done:
            return None
        return (self.done - self.first_done) / self.elapsed

    @property
    def seconds_left(self) -> float | None:
        rate = self.rate
        if self.total is None or rate is None:
            return None
        return max(self.total - self.done, 0) / rate

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(self.done / self.total, 1.0)

    def line(self, final: bool = False) -> str:
        """`decode 120/391 traces, 45.1 traces/s, ~6 s left`, or the final line."""
        parts = [f"{self.name} {format_done(self.done, self.total, self.unit)}"]
        if final and self.elapsed > 0:
            parts[0] += f" in {format_duration(self.elapsed)}"
        rate = self.rate
        if rate is not None:
            parts.append(format_rate(rate, self.unit))
        left = self.seconds_left
        if not final and left is not None:
            parts.append(format_left(left))
        return ", ".join(parts)


class ProgressReporter:
    """A `ProgressFn` (call it as `progress(stage, done, total, unit)`) that shows throttled lines.

    - `interval`: at least this many seconds between two progress lines (final lines always
      go out, except under `quiet_below`).
    - `quiet_below`: a stage that ends within this many seconds without having shown a line
      shows nothing at all (the command line keeps fast steps silent).
    - `label`: put before every line (`"legacy scope: "`).
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        *,
        interval: float = 1.0,
        quiet_below: float = 0.0,
        label: str = "",
        clock: Clock = time.monotonic,
    ):
        self.emit = emit
        self.interval = interval
        self.quiet_below = quiet_below
        self.label = label
        self.clock = clock
        self.stage: StageState | None = None
        self.expected: dict[tuple[str, str], int] = {}
        self._last_shown: float | None = None

    # -- the ProgressFn --------------------------------------------------------------------

    def __call__(self, stage: str, done: int, total: int | None, unit: str) -> None:
        now = self.clock()
        state = self.stage
        if state is None or state.name != stage or state.finished:
            self.finish()
            state = self.stage = StageState(stage, unit, started=now, first_done=done)
        state.done, state.now = done, now
        state.total = total if total is not None else self.expected.get((stage, unit))
        if state.total is not None and done >= state.total:
            self._end(state)
        elif self._due(state, now):
            self._last_shown = now
            state.shown = True
            self._show(state, final=False)

    def expect(self, stage: str, total: int, unit: str = "traces") -> None:
        """The total of `stage` in `unit` for reports that carry None (the caller knows it)."""
        self.expected[(stage, unit)] = total

    def finish(self) -> None:
        """End the stage in progress with its final line (timed to its last report), e.g. a
        stage whose total was unknown."""
        if self.stage is not None and not self.stage.finished:
            self._end(self.stage)

    def close(self) -> None:
        """Stop showing anything (a half-drawn bar is ended); no final line."""
        if self.stage is not None:
            self.stage.finished = True

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        self.close()

    # -- rendering (TerminalProgress overrides these) ---------------------------------------

    def _due(self, state: StageState, now: float) -> bool:
        since = state.started if self._last_shown is None else max(self._last_shown, state.started)
        return now - since >= self.interval

    def _end(self, state: StageState) -> None:
        state.finished = True
        if not state.shown and state.elapsed < self.quiet_below:
            return
        state.shown = True
        self._last_shown = state.now
        self._show(state, final=True)

    def _show(self, state: StageState, final: bool) -> None:
        self.emit(self.label + state.line(final))


class TerminalProgress(ProgressReporter):
    """One line redrawn in place (`\\r`) with a bar, at most every `interval` seconds; the
    stage's final line stays on screen."""

    BAR = 24

    def __init__(
        self,
        stream: TextIO,
        *,
        interval: float = 0.1,
        quiet_below: float = 0.0,
        label: str = "",
        clock: Clock = time.monotonic,
    ):
        super().__init__(
            lambda _: None, interval=interval, quiet_below=quiet_below, label=label, clock=clock
        )
        self.stream = stream
        self._open = 0  # width of the line being redrawn, 0 when none

    def _due(self, state: StageState, now: float) -> bool:
        return state.elapsed >= self.quiet_below and super()._due(state, now)

    def _show(self, state: StageState, final: bool) -> None:
        text = self.label + state.line(final)
        if not final:
            frac = state.fraction
            if frac is not None:
                filled = int(frac * self.BAR)
                text = f"{self.label}{state.name} [{'#' * filled}{'.' * (self.BAR - filled)}] " + (
                    state.line(False).removeprefix(state.name + " ")
                )
        pad = max(self._open - len(text), 0)
        self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
        self.stream.flush()
        self._open = 0 if final else len(text)

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = 0
        super().close()


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def cli_progress(
    stream: TextIO | None = None, *, clock: Clock = time.monotonic, label: str = ""
) -> ProgressReporter:
    """For the command line: a bar on a terminal, plain lines otherwise (both on stderr by
    default); steps that end within a second print nothing."""
    stream = stream if stream is not None else sys.stderr
    if _is_tty(stream):
        return TerminalProgress(stream, quiet_below=1.0, label=label, clock=clock)

    def emit(line: str) -> None:
        print(line, file=stream, flush=True)

    return ProgressReporter(emit, interval=1.0, quiet_below=1.0, label=label, clock=clock)


def dagster_progress(
    context, *, label: str = "", interval: float = 1.0, clock: Clock = time.monotonic
) -> ProgressReporter:
    """For an asset: lines in the run's log (`context.log.info`), every stage's final line
    included, so the log shows each step's count, duration and rate."""
    return ProgressReporter(context.log.info, interval=interval, label=label, clock=clock)
