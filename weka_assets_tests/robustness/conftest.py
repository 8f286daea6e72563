"""The fuzz case counts (weka_assets_tests.robustness.fuzzing) in pytest's output."""

from collections import Counter

import pytest

from weka_assets_tests.robustness.fuzzing import CASES, CURRENT, PROFILE


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    CURRENT[0] = item.nodeid
    before = CASES[item.nodeid]
    try:
        return (yield)
    finally:
        n = CASES[item.nodeid] - before
        if n:
            item.user_properties.append(("fuzz_cases", n))
        CURRENT[0] = ""


def pytest_terminal_summary(terminalreporter):
    if not CASES:
        return
    by_test: Counter = Counter()
    for nodeid, n in CASES.items():
        by_test[nodeid.split("[", 1)[0]] += n  # parametrized cases under their test
    tr = terminalreporter
    tr.section(f"fuzz cases tried (hypothesis profile {PROFILE!r})")
    for test, n in sorted(by_test.items()):
        tr.write_line(f"{n:>8}  {test}")
    tr.write_line(f"{sum(by_test.values()):>8}  in total")
