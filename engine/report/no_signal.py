"""The "RL is a no-op" warning: GRPO-family advantages are group-relative, so a step whose every group has equal
rewards (all right, or, more often on a new task, all wrong) has advantage 0 on every token and a zero policy
gradient: the update moves nothing but the KL term. A run can go on like that for its whole budget with a reward
of 0 and no error. This watches `groups/informative_fraction` (engine/algo/diagnostics.py) and the gradient norm
and says so once, with what to do.

    monitor = NoSignalMonitor(patience=5)
    for step ...:
        warning = monitor.update(metrics)
        if warning:
            print(f"step {step}: warning: {warning}")

Rule: `patience` consecutive steps with no informative group (or, with some, a gradient norm of exactly 0) give one
warning; a step with signal resets the count, and a later streak warns again.
"""

from __future__ import annotations


class NoSignalMonitor:
    def __init__(self, patience: int = 5):
        if patience < 1:
            raise ValueError(f"NoSignalMonitor patience={patience}: must be >= 1 step")
        self.patience = patience
        self.streak = 0  # consecutive steps without signal
        self.rewards: list[float] = []  # the streak's mean rewards, for the message
        self.warned = False

    def update(self, metrics: dict) -> str | None:
        """One RL step's metrics (floats); a warning string on the step the streak reaches `patience`."""
        informative = float(metrics.get("groups/informative_fraction", 1.0))
        grad_norm = float(metrics.get("train/grad_norm", 1.0))
        if informative > 0 and grad_norm != 0:
            self.streak, self.rewards, self.warned = 0, [], False
            return None
        self.streak += 1
        self.rewards.append(float(metrics.get("reward/total", float("nan"))))
        if self.streak < self.patience or self.warned:
            return None
        self.warned = True
        low, high = min(self.rewards), max(self.rewards)
        why = ("every group's samples got the same reward (groups/informative_fraction 0), so every advantage is 0"
               if informative == 0 else "the gradient norm was 0")
        return (f"RL has learned nothing for {self.streak} steps: {why}; mean reward {low:.3f}-{high:.3f}. The "
                "policy needs samples that differ: more SFT first (--sft.steps), a higher --rollout.temperature or a "
                "larger --rollout.group_size, or a reward that gives partial credit (e.g. a format part) "
                "(docs/METRICS.md).")
