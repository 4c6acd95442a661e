"""Shared pytest hooks: the fault-injection suite's one-line tally at the end of the run (tests/fault_tally.py)."""

from tests.fault_tally import TALLY


def pytest_terminal_summary(terminalreporter):
    if TALLY.injected or TALLY.tried:
        terminalreporter.write_line(TALLY.line())


import pytest  # noqa: E402


@pytest.fixture
def registered():
    """`registered(REGISTRY, name, fn, **kw)` registers a throwaway component for one test and removes it after
    (the registry is process-wide: a test must not leave a name behind for the others)."""
    made = []

    def add(registry, name, fn, **kw):
        assert name not in registry, f"{name!r} is already registered"
        registry.register(name, **kw)(fn)
        made.append((registry, name))
        return fn

    yield add
    for registry, name in made:
        registry.unregister(name)
