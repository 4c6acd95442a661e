"""Prompts and trajectories: the records the rollout produces and the trainer consumes.

A Trajectory is one sampled answer: its full token ids (prompt + response, tool results injected), a loss mask
that is 1 ONLY on tokens the policy sampled (prompt, injected images and tool text are 0), the sampler's
per-token log-probs, its images (original first, then tool outputs) already encoded for the model, and its
tool calls. Shapes: T tokens, N images, P patches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from data.example import Example, format_question
from models.load import VLM
from models.chat import chat_ids
from models.vision import encode_images, expand_image_pads, image_block, resize_short_side  # noqa: F401 (re-exported)


@dataclass
class Prompt:
    example: Example
    ids: list[int]  # chat-templated prompt, images expanded, ending with the assistant header (+ prefill)
    images: list[Image.Image]
    pixel_values: torch.Tensor  # [P, D]
    grid_thw: torch.Tensor  # [N, 3]
    prefill: str = ""  # text already placed at the start of the assistant turn (e.g. "<think>")


@dataclass
class ToolCallRecord:
    name: str
    args: dict
    ok: bool
    error: str | None = None
    box_pixels: list[float] | None = None  # the call's "box" in original-image pixels (args keep the model's frame)


@dataclass
class Trajectory:
    prompt: Prompt
    group: int  # index of the prompt in the step: samples of one prompt share a group
    ids: list[int]
    mask: list[int]  # 1 on sampled tokens
    sampler_logp: list[float]  # per token, 0 where mask is 0
    images: list[Image.Image]
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    stop: str = ""  # "eos" | "tool" | "length" | "limit"
    text: str = ""  # the response as text (what rewards read)
    positions: torch.Tensor | None = None  # [3, T], filled when the trajectory is complete
    token_class: list[int] | None = None  # [T] engine/algo/diagnostics.py TOKEN_CLASSES index of sampled tokens, else -1

    @classmethod
    def start(cls, prompt: Prompt, group: int) -> "Trajectory":
        n = len(prompt.ids)
        return cls(prompt=prompt, group=group, ids=list(prompt.ids), mask=[0] * n, sampler_logp=[0.0] * n,
                   images=list(prompt.images), pixel_values=prompt.pixel_values, grid_thw=prompt.grid_thw)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt.ids)

    @property
    def num_sampled(self) -> int:
        return sum(self.mask)

    def append_sampled(self, tokens: list[int], logps: list[float]) -> None:
        self.ids += tokens
        self.mask += [1] * len(tokens)
        self.sampler_logp += logps

    def append_injected(self, tokens: list[int]) -> None:
        self.ids += tokens
        self.mask += [0] * len(tokens)
        self.sampler_logp += [0.0] * len(tokens)

    def append_image(self, image: Image.Image, vlm: VLM) -> None:
        """Encode a tool's output image and inject its placeholder block (mask 0)."""
        pv, grid = encode_images(vlm.image_processor, [image])
        self.images.append(image)
        self.pixel_values = torch.cat([self.pixel_values, pv.to(self.pixel_values.dtype)])
        self.grid_thw = torch.cat([self.grid_thw, grid])
        self.append_injected(image_block(grid[0], vlm.family))


def build_prompt(example: Example, vlm: VLM, *, system_prompt: str, question_template: str,
                 prefill: str = "", short_side: int = 0) -> Prompt:
    """Chat-template one example: [system], user(images..., question) and the assistant header + prefill.
    `question_template` formats with {question}, {choices} and {options} (data.example.format_question).
    `short_side` > 0: the model sees each image resized to that shorter side (seed 001's 448 px rule); the
    Prompt keeps the originals, which crops are cut from and original-pixel boxes refer to."""
    images = example.open_images()
    ids = chat_ids(vlm.tokenizer, system=system_prompt, text=format_question(example, question_template),
                   num_images=len(images), prefill=prefill)
    pixel_values, grid = encode_images(vlm.image_processor, [resize_short_side(im, short_side) for im in images])
    return Prompt(example=example, ids=expand_image_pads(ids, grid, vlm.family), images=images,
                  pixel_values=pixel_values, grid_thw=grid, prefill=prefill)
