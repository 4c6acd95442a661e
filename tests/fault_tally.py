"""The fault-injection suite's counts (tests/test_faults*.py), printed as one line by tests/conftest.py:

    fault-injection tally: 9 faults injected, 9 survived; 40 bad inputs tried, 40 rejected with a clear message;
    0 records lost; 0 tracebacks in 60 processes

A fault or bad input counts as survived / rejected only when every assertion in its `with` block passed. Every
subprocess the suite runs passes its stderr to `saw` (tests/fault_helpers.py does): a "Traceback" in it counts.
"""

from __future__ import annotations

from contextlib import contextmanager


class Tally:
    def __init__(self):
        self.injected = self.survived = self.tried = self.rejected = self.lost = 0
        self.processes = self.tracebacks = 0

    def saw(self, stderr: str | None) -> None:
        """One process ended: count it, and count it again if a traceback reached its user."""
        self.processes += 1
        self.tracebacks += "Traceback (most recent call last)" in (stderr or "")

    @contextmanager
    def fault(self):
        self.injected += 1
        yield
        self.survived += 1

    @contextmanager
    def bad_input(self, n: int = 1):
        self.tried += n
        yield
        self.rejected += n

    def line(self) -> str:
        return (f"fault-injection tally: {self.injected} faults injected, {self.survived} survived; {self.tried} bad "
                f"inputs tried, {self.rejected} rejected with a clear message; {self.lost} records lost; "
                f"{self.tracebacks} tracebacks in {self.processes} processes")


TALLY = Tally()
