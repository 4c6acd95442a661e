"""The reward contract: `RewardFn(completion, example, ctx) -> float`, the `REWARDS` registry, and `@register`.

A reward is a plain function. It never touches a model, a tokenizer or torch.distributed; a model-based reward
reads a `scorer` handle from the context instead. The registry imports every built-in reward module on first use,
so `from rewards import REWARDS` sees them all; a plugin registers its own the same way. See docs/DESIGN.md,
"Rewards", and docs/PLUGINS.md.

A reward that owns settings registers a BUILDER: `@register("length", settings=LengthSettings)` on
`make(settings) -> RewardFn`. The settings are the config section `[reward.length]` (`--reward.length.scale 0.1`),
typed, ranged and documented like every setting; the run builds the reward once from them
(`rewards.combine.score_batch(..., settings=cfg.reward.components)`). The HTTP judge is one: `[reward.judge]`.

A reward may also carry a `batch(completions, examples, contexts) -> list[float | None]` attribute (the HTTP
judge does): `rewards.combine.score_batch` then calls it once per batch instead of once per sample, and a `None`
entry means "this sample failed: score 0 and count it as an error".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from data.example import Example
from registry import Registry


@dataclass
class RewardContext:
    images: list = field(default_factory=list)  # the trajectory's PIL images: original first, then tool outputs
    tool_calls: list = field(default_factory=list)  # each with .name and .ok (or .error, None when it worked)
    box_frame: str = "pixels"  # the frame the model writes boxes in: "pixels" | "resized" | "norm1000"
    image_sizes: list = field(default_factory=list)  # (w, h) of each original image
    resized_sizes: list = field(default_factory=list)  # (w, h) of each image after the processor's resize
    scorer: object | None = None  # handle for model-based rewards (e.g. `.embed(list[str]) -> unit vectors`)
    prompt_prefill: str = ""  # text the chat template already put at the start of the assistant turn
    answer_prob: float | None = None  # the policy's p(reference answer) where its answer starts, when "answer_prob"
    #                                   is weighted (engine/algo/reference_answer.py; the step fills it in)


RewardFn = Callable[[str, Example, RewardContext], float]

REWARDS = Registry("reward", "reward.weights", builtins=(
    "rewards.accuracy", "rewards.blind", "rewards.format", "rewards.grounding", "rewards.image_rewards",
    "rewards.judge", "rewards.reasoning", "rewards.tool_target", "rewards.visual"))
register = REWARDS.register  # `@register("accuracy")`; `@register("length", settings=LengthSettings)` on a builder
