"""engine/report/tool_health.py: the tool-use collapse warning on hand-made call-rate sequences. Each expected warning step
is worked out by hand from the moving averages written next to it (rates are multiples of 1/8, exact in floats).
Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_tool_stats.py`.
"""

from __future__ import annotations

import math

import pytest

from engine.report.tool_health import ToolCallMonitor


def warnings_at(monitor: ToolCallMonitor, rates: list[float]) -> list[int]:
    """Indices of the steps whose update returned a warning."""
    return [i for i, rate in enumerate(rates) if monitor.update(rate) is not None]


def test_collapse_warns_once_when_the_window_empties():
    m = ToolCallMonitor(window=4, min_rate=0.1)
    # averages over the last 4: 0.5 x5, then 0.375, 0.25, 0.125 (still >= 0.1), 0.0 (< 0.1: warn at index 8), 0, 0
    rates = [0.5] * 5 + [0.0] * 6
    assert warnings_at(m, rates) == [8]
    assert m.num_collapses == 1 and m.average == 0.0 and not m.armed


def test_message_names_the_average_and_the_peak():
    m = ToolCallMonitor(window=2, min_rate=0.05)
    assert m.update(0.75) is None and m.update(0.25) is None  # averages 0.75, 0.5
    assert m.update(0.0) is None  # average 0.125
    message = m.update(0.0)  # average 0.0
    assert message is not None
    assert "averaged 0.000 over the last 2 steps" in message and "below 0.05" in message
    assert "reached 0.750" in message


def test_a_run_that_never_used_tools_never_warns():
    m = ToolCallMonitor(window=4, min_rate=0.1)
    assert warnings_at(m, [0.0, 0.0625, 0.0, 0.0625] * 10 + [0.0] * 10) == []  # averages <= 0.0625 < 0.1
    assert warnings_at(ToolCallMonitor(), [0.0] * 50) == []


def test_recovery_then_a_second_collapse_warns_again():
    m = ToolCallMonitor(window=4, min_rate=0.1)  # re-arms at 0.2
    # 0.5 x4 -> zeros: averages 0.375, 0.25, 0.125, 0.0 -> warn at index 7
    # 0.5 x4: averages 0.125 (not re-armed: < 0.2), 0.25 (re-armed), 0.375, 0.5
    # zeros: 0.375, 0.25, 0.125, 0.0 -> warn at index 15
    rates = [0.5] * 4 + [0.0] * 4 + [0.5] * 4 + [0.0] * 4
    assert warnings_at(m, rates) == [7, 15]
    assert m.num_collapses == 2


def test_hovering_around_the_threshold_warns_once():
    m = ToolCallMonitor(window=1, min_rate=0.125)  # window 1: the average is the step's rate; re-arms at 0.25
    # 0.1875 arms (first time: >= min_rate); 0.0625 collapses (warn at 1); 0.1875 < 0.25 does not re-arm, ...
    rates = [0.1875, 0.0625] * 4
    assert warnings_at(m, rates) == [1]
    # 0.25 re-arms, 0.0625 collapses again
    assert warnings_at(m, [0.25, 0.0625]) == [1]


def test_an_average_equal_to_min_rate_is_not_a_collapse():
    m = ToolCallMonitor(window=2, min_rate=0.25)
    assert warnings_at(m, [0.5, 0.5, 0.0]) == []  # averages 0.5, 0.5, 0.25 (not below 0.25)
    assert m.update(0.0) is not None  # average 0.0


def test_partial_window_at_the_start():
    m = ToolCallMonitor(window=10, min_rate=0.25)
    # averages over the steps so far: 0.5, then (0.5 + 0) / 2 = 0.25, then 0.5 / 3 < 0.25 -> warn at index 2
    assert warnings_at(m, [0.5, 0.0, 0.0]) == [2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        ToolCallMonitor(window=0)
    with pytest.raises(ValueError, match="min_rate"):
        ToolCallMonitor(min_rate=0.0)
    with pytest.raises(ValueError, match="rearm_rate"):
        ToolCallMonitor(min_rate=0.1, rearm_rate=0.05)
    m = ToolCallMonitor()
    for bad in (math.nan, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            m.update(bad)
    assert not m.rates  # a refused value is not recorded
