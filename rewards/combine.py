"""Score a batch of completions with several weighted rewards: each part kept and logged, failures contained.

Used once per training step: `score_batch(completions, examples, contexts, {"accuracy": 1.0, "format": 0.5})`;
a reward that owns settings (rewards/registry.py: a builder) is built from `settings=` (the run's
`cfg.reward.components`), once per distinct settings value, and reused.
The total is sum(weight * part); a weight of 0 still computes and logs that part (a monitor, not a reward).
A reward that raises, or returns NaN/inf, scores 0 for that sample and is counted in `errors[name]`; one warning
per reward name per call (not per sample) carries the first error. A reward with a `batch` attribute (see
rewards/registry.py) is called once for the whole batch; its `None` entries are errors.
`debug_path` appends one JSON line per sample: {origin, completion, answer, parts, total}.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from data.example import Example
from rewards.registry import REWARDS, RewardContext, RewardFn

log = logging.getLogger(__name__)


@dataclass
class RewardBatch:
    total: list[float]  # [B] weighted sum over the parts
    parts: dict[str, list[float]]  # name -> [B] unweighted values (0 where it failed)
    errors: dict[str, int]  # name -> how many samples failed (raised, non-finite, or a batch None)


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


_BUILT: dict[tuple[str, str], RewardFn] = {}  # (name, repr of its settings) -> the reward its builder made


def reward_fn(name: str, settings: dict | None = None) -> RewardFn:
    """The reward function of `name`: the registered function, or for a reward that owns settings the one its
    builder makes from `settings[name]` (built once per distinct settings value)."""
    entry = REWARDS.entry(name)
    if entry.settings is None:
        return entry.fn
    own = (settings or {}).get(name)
    if own is None:
        raise ValueError(f"reward {name!r} needs its settings ([reward.{name}]): pass settings=cfg.reward.components")
    key = (name, repr(own))
    if key not in _BUILT:
        _BUILT[key] = entry.fn(own)
    return _BUILT[key]


def _score_one_reward(fn: RewardFn, name, completions, examples, contexts) -> tuple[list[float], int]:
    first_error = None
    if callable(getattr(fn, "batch", None)):
        try:
            raw = list(fn.batch(completions, examples, contexts))
            assert len(raw) == len(completions), f"{name}.batch returned {len(raw)} values for {len(completions)}"
        except Exception as exc:  # the whole batch failed: every sample scores 0
            raw, first_error = [None] * len(completions), repr(exc)
    else:
        raw = []
        for completion, example, ctx in zip(completions, examples, contexts):
            try:
                raw.append(fn(completion, example, ctx))
            except Exception as exc:  # a reward's bug must not kill the step: 0, counted, warned once
                raw.append(None)
                first_error = first_error or f"{example.origin or 'sample'}: {exc!r}"
    values = [_finite(v) for v in raw]
    num_errors = sum(v is None for v in values)
    if num_errors:
        bad = first_error or f"got {next(r for r, v in zip(raw, values) if v is None)!r}, not a finite number"
        log.warning("reward %r failed on %d/%d samples (scored 0); first: %s", name, num_errors, len(values), bad)
    return [0.0 if v is None else v for v in values], num_errors


def score_batch(
    completions: list[str],
    examples: list[Example],
    contexts: list[RewardContext],
    weights: dict[str, float],
    *,
    settings: dict | None = None,
    debug_path: str | Path | None = None,
) -> RewardBatch:
    """Compute every weighted reward for every sample. Raises ValueError for an unknown name or ragged inputs.
    `settings`: name -> settings of the rewards that own some (cfg.reward.components)."""
    unknown = [name for name in weights if name not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; registered rewards are: {REWARDS.names()}")
    if not len(completions) == len(examples) == len(contexts):
        raise ValueError(f"need one example and one context per completion, got {len(completions)} completions, "
                         f"{len(examples)} examples, {len(contexts)} contexts")
    parts, errors = {}, {}
    for name in weights:
        parts[name], errors[name] = _score_one_reward(reward_fn(name, settings), name, completions, examples,
                                                      contexts)
    total = [sum(weights[name] * parts[name][i] for name in weights) for i in range(len(completions))]
    if debug_path is not None:
        _write_debug(Path(debug_path), completions, examples, parts, total)
    return RewardBatch(total=total, parts=parts, errors=errors)


def _write_debug(path: Path, completions, examples, parts, total) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for i, (completion, example) in enumerate(zip(completions, examples)):
            row = {"origin": example.origin, "completion": completion, "answer": example.answer,
                   "parts": {name: values[i] for name, values in parts.items()}, "total": total[i]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
