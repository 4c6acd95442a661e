"""Image-as-reward (seed 000): how much a tool's processed image helps, judged by a model through `ctx.scorer`.

They need a scorer: train with `reward.scorer = "policy"` (rewards/scorer.py), or see the fake scorers in
tests/test_rewards_model_rewards.py.

Every reward here scores the trajectory's PROCESSED images: the tool outputs, i.e. `ctx.images` after the
original ones (the first `len(ctx.image_sizes)` images; 1 when the context does not record them). A trajectory
without a processed image scores 0 and costs no model call (so "image_*" pays only for tool use that helped;
pair it with an accuracy-gated reward, as seed 000 does, so calling tools for their own sake is not enough).
- "image_self": the policy itself is asked, with the processed images and JUDGE_TEMPLATE, whether they help
  answer the question; the reward is P(yes) = softmax over the (yes, no) logits (`scorer.prob_yes`).
- "image_teacher": the same question to a separate, larger VLM: `ctx.scorer.teacher.prob_yes` (seed 000 uses
  Qwen2.5-VL-72B; here any local VLM folder, `reward.teacher_path`).
- "image_attention": `scorer.attention_share(...)`: with the original and processed images in the user turn and
  the policy's answer (its last `<answer>` content, else its whole response) as the assistant turn, the share of
  the answer tokens' attention mass on image tokens that falls on the processed images (rewards/scorer.py).
- "image_embedding": CLIP (`scorer.embed_text` / `scorer.embed_image`): max over processed images of
  cos(processed, question) - cos(original, question), clipped to [0, 1], where the original is ctx.images[0]:
  the processed view must match the question better than the original did. A real CLIP's image-text cosines lie
  in a narrow band, so expect small values and weight the part accordingly. Departure from seed 000, which scores
  the processed image's similarity alone: that pays for any tool call on an image already similar to the question.
Each has a `.batch` (rewards/registry.py) so a training step makes one batched model call per reward. A context
without a scorer (or a scorer without the needed method) raises ValueError for the whole batch: score_batch
scores every sample 0 and counts it, since that is a set-up error, not a property of one sample.
"""

from __future__ import annotations

import numpy as np

from data.example import Example
from rewards.format import extract_answer, response_text
from rewards.registry import RewardContext, register

JUDGE_TEMPLATE = "Question: {question}\nDoes this processed image help answer the question? Answer yes or no."


def num_original(ctx: RewardContext) -> int:
    """How many of ctx.images are the prompt's own (the rest are tool outputs)."""
    return len(ctx.image_sizes) if ctx.image_sizes else 1


def processed_images(ctx: RewardContext) -> list:
    return list(ctx.images[num_original(ctx):])


def _handle(ctx: RewardContext, reward: str, methods: tuple[str, ...], *, teacher: bool = False):
    """The object whose `methods` the reward calls (the scorer, or its teacher); ValueError when missing."""
    scorer = ctx.scorer
    if scorer is None:
        raise ValueError(f"reward {reward!r} needs a model scorer but the context has none: set "
                         f"reward.scorer = 'policy'")
    if teacher:
        scorer = getattr(scorer, "teacher", None)
        if scorer is None:
            raise ValueError(f"reward {reward!r} needs a teacher model: set reward.teacher_path to a local VLM folder")
    missing = [m for m in methods if not callable(getattr(scorer, m, None))]
    if missing:
        raise ValueError(f"reward {reward!r} needs scorer.{missing[0]}(...), which {type(scorer).__name__} lacks")
    return scorer


def _group(contexts, reward: str, methods: tuple[str, ...], teacher: bool = False) -> dict:
    """Indices of samples with processed images, grouped by the handle that scores them (usually one)."""
    handles = [_handle(ctx, reward, methods, teacher=teacher) for ctx in contexts]  # every context, or raise
    groups: dict[int, tuple[object, list[int]]] = {}
    for i, (ctx, handle) in enumerate(zip(contexts, handles)):
        if processed_images(ctx):
            groups.setdefault(id(handle), (handle, []))[1].append(i)
    return groups


def _judge_batch(reward: str, teacher: bool):
    def batch(completions: list[str], examples: list[Example], contexts: list[RewardContext]) -> list[float]:
        values = [0.0] * len(completions)
        for handle, idx in _group(contexts, reward, ("prob_yes",), teacher).values():
            probs = handle.prob_yes([processed_images(contexts[i]) for i in idx],
                                    [JUDGE_TEMPLATE.format(question=examples[i].question) for i in idx])
            for i, p in zip(idx, probs):
                values[i] = float(p)
        return values

    return batch


def _single(batch):
    """The per-sample RewardFn of a batch reward: a batch of one."""
    def fn(completion: str, example: Example, ctx: RewardContext) -> float:
        return batch([completion], [example], [ctx])[0]

    fn.batch = batch
    return fn


image_self = register("image_self")(_single(_judge_batch("image_self", teacher=False)))
image_teacher = register("image_teacher")(_single(_judge_batch("image_teacher", teacher=True)))
# What each reward needs from the scorer: rewards.scorer.build_scorer checks the config against it at start-up.
image_self.scorer_needs = "scorer"
image_teacher.scorer_needs = "teacher"


def answer_text(completion: str, ctx: RewardContext) -> str:
    """What the attention reward treats as the answer: the last <answer> content, else the whole response."""
    response = response_text(completion, ctx)
    return extract_answer(response, "tags") or response


def _attention_batch(completions, examples, contexts) -> list[float]:
    values = [0.0] * len(completions)
    for handle, idx in _group(contexts, "image_attention", ("attention_share",)).values():
        shares = handle.attention_share([list(contexts[i].images) for i in idx], [examples[i].question for i in idx],
                                        [answer_text(completions[i], contexts[i]) for i in idx],
                                        [num_original(contexts[i]) for i in idx])
        for i, s in zip(idx, shares):
            values[i] = float(s)
    return values


image_attention = register("image_attention")(_single(_attention_batch))
image_attention.scorer_needs = "scorer"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _embedding_batch(completions, examples, contexts) -> list[float]:
    values = [0.0] * len(completions)
    for handle, idx in _group(contexts, "image_embedding", ("embed_text", "embed_image")).values():
        text_NE = _unit(np.asarray(handle.embed_text([examples[i].question for i in idx]), dtype=np.float64))
        views = [[contexts[i].images[0]] + processed_images(contexts[i]) for i in idx]  # original, then processed
        image_ME = _unit(np.asarray(handle.embed_image([v for vs in views for v in vs]), dtype=np.float64))
        start = 0
        for k, (i, vs) in enumerate(zip(idx, views)):
            sims = image_ME[start:start + len(vs)] @ text_NE[k]  # cosines (re-normalised: any vector length)
            start += len(vs)
            values[i] = float(np.clip(sims[1:].max() - sims[0], 0.0, 1.0))
    return values


image_embedding = register("image_embedding")(_single(_embedding_batch))
image_embedding.scorer_needs = "clip"
