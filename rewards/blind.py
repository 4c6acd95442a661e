"""Vision-SR1's "blindfolded test" reward "blind" (seed 004): can the policy solve the problem from its own image
description, without the image?

Pass 1 is the rollout: the policy writes `<scan>description</scan><think>...</think><answer>...</answer>` with the
image. Pass 2 (here): the description (the LAST closed `<scan>` block of the response, prefill included) goes to
`ctx.scorer.answer` with NO image, as BLIND_TEMPLATE (plus a "Choices: A. x, B. y" line when the example has
choices, which the policy's own prompt also showed), greedy; the reply's last `<answer>` is matched against the
references with the accuracy reward's rule (`rewards.accuracy.vqa_score` > 0, i.e. any reference matches under
VQA normalisation, multiple choice or numeric tolerance).
Values (seed 004's table): +1.0 when pass 2 is right, -0.5 when it is wrong or gives no `<answer>`, and -0.5
without a filled `<scan>` block (no description is an insufficient description; that sample makes no model call).
The seed pairs it with format_scan 0.1 and accuracy 1.0 (configs/seed004_blind.toml). The pass-2 reply length is
the scorer's `max_new_tokens` (reward.scorer_max_new_tokens).
All samples of a batch go to the scorer in ONE `answer` call. A context without a scorer with an `answer`
method raises ValueError for the whole batch (score_batch scores 0 and counts every sample).
"""

from __future__ import annotations

from data.example import Example
from rewards.accuracy import vqa_score
from rewards.format import extract_answer, is_placeholder, response_text, tag_blocks
from rewards.registry import RewardContext, register

BLIND_TEMPLATE = "{question}\nImage description: {scan}\nAnswer in <answer></answer>."
RIGHT, WRONG = 1.0, -0.5


def scan_text(completion: str, ctx: RewardContext) -> str | None:
    """The last filled `<scan>` block of the response, stripped, or None."""
    scans = tag_blocks(response_text(completion, ctx), "scan")
    return None if not scans or is_placeholder(scans[-1]) else scans[-1].strip()


def blind_prompt(example: Example, scan: str) -> str:
    text = BLIND_TEMPLATE.format(question=example.question, scan=scan)
    if example.choices:
        text += "\nChoices: " + ", ".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(example.choices))
    return text


def blind_batch(completions: list[str], examples: list[Example], contexts: list[RewardContext],
                ) -> list[float | None]:
    values = [WRONG] * len(completions)
    groups: dict[int, tuple[object, list[int], list[str]]] = {}  # scorer id -> (scorer, sample indices, prompts)
    for i, (completion, example, ctx) in enumerate(zip(completions, examples, contexts)):
        if ctx.scorer is None or not callable(getattr(ctx.scorer, "answer", None)):
            raise ValueError("reward 'blind' needs a model scorer with .answer(images, questions): set "
                             "reward.scorer = 'policy'")
        scan = scan_text(completion, ctx)
        if scan is not None:
            _, idx, prompts = groups.setdefault(id(ctx.scorer), (ctx.scorer, [], []))
            idx.append(i)
            prompts.append(blind_prompt(example, scan))
    for scorer, idx, prompts in groups.values():
        replies = scorer.answer([[] for _ in idx], prompts)
        for i, reply in zip(idx, replies):
            pred = extract_answer(reply, "auto")
            refs = [a for a in examples[i].answers if a and a.strip()]
            # No reference is a data error (as in "accuracy"): None, which score_batch scores 0 and counts.
            values[i] = None if not refs else RIGHT if vqa_score(pred, refs, examples[i].choices) > 0 else WRONG
    return values


@register("blind")
def blind_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    return blind_batch([completion], [example], [ctx])[0]


blind_reward.batch = blind_batch
blind_reward.scorer_needs = "scorer"  # checked at start-up by rewards.scorer.build_scorer
