"""What each prompt and SFT target costs in tokens, checked against the run's limits before step 1.

    check_token_limits(train_set, vlm, cfg, what="training", targets=True)   # train.py, once, before step 1
    check_token_limits(held_out, vlm, cfg, what="held-out", targets=False)   # eval.py

A prompt (system prompt with the enabled tools, question template, images as the model sees them, prefill) must
leave rollout.max_new_tokens of room under rollout.max_total_tokens, or its answers are cut before they can be
as long as the run allows; an SFT target (the tokens SFT trains on, turn end included) must fit in
rollout.max_new_tokens, or SFT teaches answers the rollout can never finish. Either kind is refused with its
count, the longest and the value to raise the setting to, unless data.overlong = truncate: then SFT cuts targets
to rollout.max_new_tokens (engine/algo/sft.py) and such prompts are answered in the room they leave, each kind
counted in one line. Counts are exact: the same template, chat rendering (models/chat.py), image encoding and
SFT pieces (engine/setup/targets.py) the run uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from data.example import Example, format_question
from engine.config.settings import Config
from engine.setup.targets import sampled_tokens, target_text
from models.chat import chat_ids
from models.load import VLM
from models.vision import encode_images, num_image_tokens, resize_short_side
from tools.schema import system_with_tools


@dataclass
class Lengths:
    origin: str
    prompt: int  # tokens of the prompt, images included
    target: int | None = None  # tokens SFT trains on (None: not measured)


@dataclass
class _Shown:
    """What the SFT target pieces read of a prompt: the example, its original images and their grid."""
    example: Example
    images: list
    grid_thw: object


def system_prompt(cfg: Config, vlm: VLM) -> str:
    """data.system_prompt, followed by the enabled tools' signatures and call format (rollout.tools)."""
    return system_with_tools(cfg.data.system_prompt, cfg.rollout.protocol, cfg.rollout.tools, vlm.family.box_frame)


def measure(example: Example, vlm: VLM, cfg: Config, *, target: bool, system: str | None = None) -> Lengths:
    """The prompt's tokens (as engine.rollout.trajectory.build_prompt builds it) and, with `target`, the SFT
    target's."""
    d = cfg.data
    images = example.open_images()
    _, grid = encode_images(vlm.image_processor, [resize_short_side(im, d.image_short_side) for im in images])
    ids = chat_ids(vlm.tokenizer, system=system_prompt(cfg, vlm) if system is None else system,
                   text=format_question(example, d.question_template), num_images=len(images), prefill=d.prefill)
    prompt = len(ids) - len(images) + sum(num_image_tokens(g, vlm.family) for g in grid)  # each pad widened
    if not target:
        return Lengths(example.origin, prompt)
    shown = _Shown(example, images, grid)
    return Lengths(example.origin, prompt, sampled_tokens(target_text(example, d.sft_template, shown, vlm), shown, vlm))


def check_token_limits(examples: list[Example], vlm: VLM, cfg: Config, *, what: str, targets: bool,
                       verbose: bool = True) -> list[Lengths]:
    """Measure every example; refuse (ValueError) or, with data.overlong = truncate, say (one line per kind) the
    prompts over the room and the SFT targets over the cap (module docstring). Returns the lengths."""
    r = cfg.rollout
    system = system_prompt(cfg, vlm)
    lengths = [measure(e, vlm, cfg, target=targets, system=system) for e in examples]
    room = r.max_total_tokens - r.max_new_tokens
    problems = []  # (what the run would do with them under truncate, the line)
    long_prompts = [x for x in lengths if x.prompt > room]
    if long_prompts:
        worst = max(long_prompts, key=lambda x: x.prompt)
        problems.append(("answered in the room they leave", f"{len(long_prompts)} of {len(lengths)} {what} prompts "
                         f"leave less than rollout.max_new_tokens {r.max_new_tokens} under rollout.max_total_tokens "
                         f"{r.max_total_tokens} (longest: {worst.prompt} tokens, {worst.origin}): raise "
                         f"--rollout.max_total_tokens to {worst.prompt + r.max_new_tokens}"))
    long_targets = [x for x in lengths if x.target is not None and x.target > r.max_new_tokens]
    if long_targets:
        worst = max(long_targets, key=lambda x: x.target)
        problems.append((f"cut to {r.max_new_tokens} tokens", f"{len(long_targets)} of {len(lengths)} SFT targets "
                         f"are longer than rollout.max_new_tokens {r.max_new_tokens} (longest: {worst.target} tokens, "
                         f"{worst.origin}): raise --rollout.max_new_tokens to {worst.target}"))
    if problems and cfg.data.overlong == "refuse":
        raise ValueError("; ".join(line for _, line in problems) + ". Or accept them cut: --data.overlong truncate")
    for done, line in problems if verbose else ():
        print(f"data: {line} (data.overlong = truncate: {done})")
    return lengths
