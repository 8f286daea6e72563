"""Hypothesis profiles for the fuzz tests, the count of cases they tried, and a hard limit on
each case's time.

Profiles (chosen by `WEKA_FUZZ`, default `ci`):

- `ci`: a fixed number of examples per test (`fuzz_settings(n)` gives n), derandomized, no
  example database: a CI run is reproducible and the fuzz tests take well under a minute.
- `long`: 25 n examples per test, random seeds, Hypothesis's example database (`.hypothesis/`,
  git-ignored) so that a failure found once is replayed first next time:
  `WEKA_FUZZ=long .venv/bin/python -m pytest weka_assets_tests/robustness -k fuzz`.

Every fuzz example calls `tried()`; conftest.py prints the counts per test and in total in
pytest's terminal summary and records each test's count as its `fuzz_cases` property.
"""

import os
import signal
from collections import Counter
from contextlib import contextmanager

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("WEKA_FUZZ", "ci")
SCALE = {"ci": 1, "long": 25}
if PROFILE not in SCALE:
    raise RuntimeError(f"WEKA_FUZZ={PROFILE!r}: use one of {', '.join(SCALE)}")

# A case that runs longer than this is a hang (examples take milliseconds; the limit is far
# above any slow machine, and it is no speed assertion).
HANG_LIMIT_S = 60

_SUPPRESS = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
    HealthCheck.filter_too_much,
    HealthCheck.function_scoped_fixture,  # tmp_path is shared by a test's examples on purpose
]
settings.register_profile(
    "ci",
    deadline=None,  # timing is not asserted; `bounded()` catches hangs
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "long", deadline=None, derandomize=False, print_blob=True, suppress_health_check=_SUPPRESS
)


def fuzz_settings(n: int) -> settings:
    """The chosen profile with n examples (25 n for `long`); applied per test, so the rest of
    the suite keeps Hypothesis's own defaults."""
    return settings(settings.get_profile(PROFILE), max_examples=n * SCALE[PROFILE])


CASES: Counter = Counter()
CURRENT = [""]


def tried() -> None:
    """Count one fuzz case for the running test."""
    CASES[CURRENT[0]] += 1


class CaseHung(AssertionError):
    """A fuzz case ran past HANG_LIMIT_S: the code under test hangs on this input."""


@contextmanager
def bounded(limit_s: float = HANG_LIMIT_S):
    """Fail the case (CaseHung) if the body runs longer than `limit_s` (SIGALRM; main thread)."""

    def _alarm(signum, frame):
        raise CaseHung(f"no result after {limit_s} s: the input makes the code hang")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
