"""Tool-use collapse warning: a policy trained with tools can learn to stop calling them (the calls cost tokens and
can fail, and an answer without a crop is sometimes right anyway); once the call rate is near zero, RL has no
tool samples left to reinforce and tool use rarely comes back. This watches the per-step tool-call rate
(`tools/call_rate` of engine/algo/step.py: the fraction of trajectories with at least one call) and says so once.

    monitor = ToolCallMonitor(window=10, min_rate=0.02)
    for step ...:
        warning = monitor.update(metrics["tools/call_rate"])
        if warning:
            print(f"step {step}: {warning}")

Rule: the moving average over the last `window` steps (fewer at the start) is compared with `min_rate`. The
monitor arms the first time the average is at or above `min_rate`; an armed monitor whose average then falls
below `min_rate` returns one warning and disarms. After a collapse it re-arms only when the average climbs back
to `rearm_rate` (default 2 x min_rate): the gap keeps an average that hovers around `min_rate` from warning every
other step. A run that never used tools (average always below `min_rate`) never warns.
"""

from __future__ import annotations

import math
from collections import deque


class ToolCallMonitor:
    def __init__(self, window: int = 10, min_rate: float = 0.02, *, rearm_rate: float | None = None):
        rearm_rate = 2 * min_rate if rearm_rate is None else rearm_rate
        if window < 1:
            raise ValueError(f"ToolCallMonitor window={window}: must be >= 1 step")
        if not 0 < min_rate <= rearm_rate:
            raise ValueError(f"ToolCallMonitor needs 0 < min_rate ({min_rate}) <= rearm_rate ({rearm_rate})")
        self.window, self.min_rate, self.rearm_rate = window, min_rate, rearm_rate
        self.rates: deque[float] = deque(maxlen=window)
        self.armed = False
        self.arm_at = min_rate  # rearm_rate after the first collapse
        self.peak = 0.0  # highest average since the monitor last armed, for the message
        self.num_collapses = 0

    @property
    def average(self) -> float:
        """Moving average of the call rate over the last `window` steps (0 before the first update)."""
        return sum(self.rates) / len(self.rates) if self.rates else 0.0

    def update(self, call_rate: float) -> str | None:
        """Add one step's call rate (a fraction in [0, 1]); a warning string on the step a collapse is seen."""
        call_rate = float(call_rate)
        if not (math.isfinite(call_rate) and 0.0 <= call_rate <= 1.0):
            raise ValueError(f"tool-call rate {call_rate} must be a fraction in [0, 1]")
        self.rates.append(call_rate)
        avg = self.average
        if not self.armed:
            if avg >= self.arm_at:
                self.armed, self.peak = True, avg
            return None
        self.peak = max(self.peak, avg)
        if avg >= self.min_rate:
            return None
        self.armed, self.arm_at = False, self.rearm_rate
        self.num_collapses += 1
        return (f"tool use collapsed: the tool-call rate averaged {avg:.3f} over the last {len(self.rates)} steps, "
                f"below {self.min_rate:g} (it had reached {self.peak:.3f}); the policy has nearly stopped calling "
                f"tools. Check the rewards (e.g. a tool_success weight), the tool error rate, and the SFT warm-start.")
