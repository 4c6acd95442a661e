"""The reward contract: `RewardFn(completion, example, ctx) -> float`, the `REWARDS` dict, and `@register`.

A reward is a plain function. It never touches a model, a tokenizer or torch.distributed; a model-based reward
reads a `scorer` handle from the context instead. `rewards/__init__.py` imports every reward module, so
`from rewards import REWARDS` sees them all. See docs/DESIGN.md, "Rewards".

A reward may also carry a `batch(completions, examples, contexts) -> list[float | None]` attribute (the HTTP
judge does): `rewards.combine.score_batch` then calls it once per batch instead of once per sample, and a `None`
entry means "this sample failed: score 0 and count it as an error".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from data.example import Example


@dataclass
class RewardContext:
    images: list = field(default_factory=list)  # the trajectory's PIL images: original first, then tool outputs
    tool_calls: list = field(default_factory=list)  # each with .name and .ok (or .error, None when it worked)
    box_frame: str = "pixels"  # the frame the model writes boxes in: "pixels" | "resized" | "norm1000"
    image_sizes: list = field(default_factory=list)  # (w, h) of each original image
    resized_sizes: list = field(default_factory=list)  # (w, h) of each image after the processor's resize
    scorer: object | None = None  # handle for model-based rewards (e.g. `.embed(list[str]) -> unit vectors`)
    prompt_prefill: str = ""  # text the chat template already put at the start of the assistant turn


RewardFn = Callable[[str, Example, RewardContext], float]

REWARDS: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """`@register("accuracy")` puts the function into REWARDS under that name."""

    def add(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is registered twice; pick another name")
        REWARDS[name] = fn
        return fn

    return add
