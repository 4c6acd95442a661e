"""Shared pytest hooks: the fault-injection suite's one-line tally at the end of the run (tests/fault_tally.py)."""

from tests.fault_tally import TALLY


def pytest_terminal_summary(terminalreporter):
    if TALLY.injected or TALLY.tried:
        terminalreporter.write_line(TALLY.line())
