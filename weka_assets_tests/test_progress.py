"""The progress reporter on a fake clock: throttling, rate, time left, stage ends, the terminal
bar, and the CLI / Dagster adapters (no wall-clock assertions)."""

import io

import pytest

from weka_assets.progress import (
    ProgressReporter,
    TerminalProgress,
    cli_progress,
    dagster_progress,
    format_count,
    format_done,
    format_duration,
    format_left,
)


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def reporter(**kw) -> tuple[ProgressReporter, list[str], FakeClock]:
    lines: list[str] = []
    clock = FakeClock()
    return ProgressReporter(lines.append, clock=clock, **kw), lines, clock


def test_lines_are_throttled_to_one_per_interval_plus_the_final_one():
    progress, lines, clock = reporter()
    for done in range(1, 392):  # 391 traces at 64 traces/s
        progress("decode", done, 391, "traces")
        clock.t += 1 / 64
    # about 6 s of work: one line per second, then the final one
    assert len(lines) == 7
    assert lines[0] == "decode 65/391 traces, 64.0 traces/s, ~5 s left"
    assert lines[-1] == "decode 391/391 traces in 6.1 s, 64.0 traces/s"
    assert all("left" in line for line in lines[:-1])


def test_rate_and_time_left_follow_the_work_since_the_first_report():
    progress, lines, clock = reporter()
    progress("replay", 10, 1000, "traces")  # the first report: the rate's baseline
    clock.t += 2.0
    progress("replay", 110, 1000, "traces")  # 100 traces in 2 s
    assert lines == ["replay 110/1,000 traces, 50.0 traces/s, ~18 s left"]
    clock.t += 0.5
    progress("replay", 200, 1000, "traces")  # throttled: half a second since the last line
    assert len(lines) == 1
    clock.t += 120
    progress("replay", 300, 1000, "traces")
    # 290 traces in 122.5 s, 700 to go
    assert lines[-1] == "replay 300/1,000 traces, 2.4 traces/s, ~4 min 56 s left"


def test_an_unknown_total_has_no_time_left_and_ends_at_finish():
    progress, lines, clock = reporter()
    for done in range(1, 31):
        progress("scope", done, None, "traces")
        clock.t += 0.125
    assert lines == [f"scope {n} traces, 8.0 traces/s" for n in (9, 17, 25)]
    clock.t += 60
    progress.finish()
    # timed to the last report, not to when finish() was called
    assert lines[-1] == "scope 30 traces in 3.6 s, 8.0 traces/s"
    progress.finish()
    assert len(lines) == 4


def test_expect_supplies_the_total_the_reports_leave_out():
    progress, lines, clock = reporter()
    progress.expect("decode", 4)
    for done in range(1, 5):
        clock.t += 1.5
        progress("decode", done, None, "traces")
    assert lines[-1] == "decode 4/4 traces in 4.5 s, 0.7 traces/s"
    assert "~3 s left" in lines[0]  # 2/4 after 1.5 s: 2 more at 0.67/s
    # a total in traces says nothing about a stage that reports bytes
    progress("decode", 2**20, None, "bytes")
    clock.t += 1
    progress("decode", 2**21, None, "bytes")
    assert lines[-1] == "decode 2.0 MiB, 1.0 MiB/s"


def test_a_new_stage_ends_the_previous_one():
    progress, lines, clock = reporter()
    for done in range(1, 13):
        progress("scope", done, None, "traces")
        clock.t += 1 / 64
    clock.t += 3.0  # work between the stages is not counted in either
    progress("decode", 1, 12, "traces")
    assert lines == ["scope 12 traces in 0.17 s, 64.0 traces/s"]
    for done in range(2, 13):
        clock.t += 0.5
        progress("decode", done, 12, "traces")
    assert lines[-1] == "decode 12/12 traces in 5.5 s, 2.0 traces/s"


def test_quiet_below_keeps_fast_stages_silent():
    progress, lines, clock = reporter(quiet_below=1.0)
    for done in range(1, 13):
        progress("scope", done, None, "traces")
        clock.t += 1 / 16
    progress.finish()
    assert lines == []
    for done in range(1, 41):
        progress("decode", done, 40, "traces")
        clock.t += 1 / 16
    assert lines == [
        "decode 17/40 traces, 16.0 traces/s, ~1 s left",
        "decode 33/40 traces, 16.0 traces/s, <1 s left",
        "decode 40/40 traces in 2.4 s, 16.0 traces/s",
    ]


def test_bytes_are_scaled():
    progress, lines, clock = reporter()
    progress("read", 0, 50 * 2**20, "bytes")
    clock.t += 1.0
    progress("read", 12 * 2**20, 50 * 2**20, "bytes")
    assert lines == ["read 12.0/50.0 MiB, 12.0 MiB/s, ~3 s left"]
    assert format_count(512, "bytes") == "512 B"
    assert format_done(3 * 2**30, None, "bytes") == "3.0 GiB"


def test_the_context_manager_finishes_on_success_and_not_on_error():
    progress, lines, clock = reporter(label="legacy scope: ")
    with progress:
        progress("scope", 1, None, "traces")
        clock.t += 1
        progress("scope", 2, None, "traces")
    assert lines == [
        "legacy scope: scope 2 traces, 1.0 traces/s",
        "legacy scope: scope 2 traces in 1.0 s, 1.0 traces/s",
    ]
    progress, lines, clock = reporter()
    with pytest.raises(RuntimeError), progress:
        progress("decode", 1, 10, "traces")
        raise RuntimeError("boom")
    assert lines == []


def test_terminal_bar_redraws_one_line_and_keeps_the_final_one():
    out = io.StringIO()
    clock = FakeClock()
    bar = TerminalProgress(out, clock=clock)
    for done in range(1, 11):
        bar("replay", done, 10, "traces")
        clock.t += 0.25
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = text.split("\r")[1:]
    assert frames[0].startswith("replay [") and "#" in frames[0] and "~" in frames[0]
    assert frames[-1].strip() == "replay 10/10 traces in 2.2 s, 4.0 traces/s"
    # an error mid-stage ends the half-drawn line, with no final line
    out2 = io.StringIO()
    bar2 = TerminalProgress(out2, clock=clock)
    with pytest.raises(KeyError), bar2:
        bar2("decode", 1, 10, "traces")
        clock.t += 0.5
        bar2("decode", 2, 10, "traces")
        raise KeyError("x")
    assert out2.getvalue().endswith("\n") and "in " not in out2.getvalue()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_progress_draws_a_bar_on_a_terminal_and_lines_otherwise():
    assert isinstance(cli_progress(_Tty()), TerminalProgress)
    plain = io.StringIO()
    clock = FakeClock()
    lines = cli_progress(plain, clock=clock)
    assert not isinstance(lines, TerminalProgress)
    for done in range(1, 5):
        clock.t += 0.5
        lines("decode", done, 4, "traces")
    assert plain.getvalue() == (
        "decode 3/4 traces, 2.0 traces/s, <1 s left\ndecode 4/4 traces in 1.5 s, 2.0 traces/s\n"
    )


def test_dagster_progress_logs_through_the_context():
    class Log:
        def __init__(self):
            self.lines = []

        def info(self, msg):
            self.lines.append(msg)

    class Context:
        log = Log()

    clock = FakeClock()
    progress = dagster_progress(Context, clock=clock)
    progress("replay", 1, 2, "traces")
    clock.t += 1 / 64
    progress("replay", 2, 2, "traces")
    # the final line even for a fast stage: the run log keeps every step's figures
    assert Context.log.lines == ["replay 2/2 traces in 0.02 s, 64.0 traces/s"]


@pytest.mark.parametrize(
    "seconds, text",
    [(0.44, "0.44 s"), (6.2, "6.2 s"), (12.4, "12 s"), (125, "2 min 5 s"), (3780, "1 h 3 min")],
)
def test_durations(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "seconds, text", [(0.3, "<1 s left"), (5.6, "~6 s left"), (125, "~2 min 5 s left")]
)
def test_time_left(seconds, text):
    assert format_left(seconds) == text
