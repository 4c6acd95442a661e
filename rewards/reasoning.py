"""Reasoning reward "reasoning": Match-F1 between the predicted reasoning steps and example.reference_steps.

Try one: `python -m rewards.explain reasoning --completion '{"reasoning_steps": ["the sign says stop"],
"answer": "stop"}' --answer stop --example '{"reference_steps": ["the sign says stop"]}'`.

Source: seed 003 (VQA training with JSON reasoning steps, "Match F1" from its mllm_evaluator). The rule here:
- predicted steps: the JSON "reasoning_steps" when the response is seed 003's JSON, else the lines of every
  `<think>` block, each split further into sentences; list bullets ("- ", "1. ", "Step 2:") are dropped;
- a predicted step matches a reference step when their similarity >= `threshold` (0.5). Similarity is the
  token-level F1 of SQuAD-normalised words (lowercase, punctuation and articles a/an/the removed; as in the
  SQuAD v2.0 evaluation script's `f1_score`). Matching is greedy and one-to-one: the most similar pair first;
- precision = matched / #predicted, recall = matched / #reference, score = their harmonic mean (F1).
Embedding hook: seed 003 compares steps by semantic similarity; the lexical F1 is the model-free default. When
`ctx.scorer` has an `embed(list[str]) -> unit vectors` callable, similarity is the cosine of the embeddings
instead (same threshold; vectors are re-normalised in case they are not unit length). In training that is
reward.embedder_path: a local sentence-embedding model, mean-pooled (rewards/text_embedder.py, set up by
rewards/setup.py). A random or weak encoder puts most sentences above the 0.5 threshold: use a real one.
An example without reference steps raises ValueError (score_batch counts it), since that is a data error.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable

import numpy as np

from data.example import Example
from rewards.format import parse_json_response, response_text, tag_blocks
from rewards.registry import RewardContext, register

THRESHOLD = 0.5
_BULLET = re.compile(r"\A\s*(?:[-*•]|\d+[.)]|step\s*\d+\s*[:.)])\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ARTICLES = {"a", "an", "the"}

Embed = Callable[[list[str]], "np.ndarray | list"]


def normalize_words(text: str) -> list[str]:
    """SQuAD-style: lowercase, punctuation to spaces, articles dropped."""
    return [w for w in re.sub(r"[\W_]+", " ", text.lower()).split() if w not in _ARTICLES]


def _count_f1(a: Counter, b: Counter) -> float:
    common = sum((a & b).values())
    if common == 0:
        return 0.0
    precision, recall = common / a.total(), common / b.total()
    return 2 * precision * recall / (precision + recall)


def token_f1(a: str, b: str) -> float:
    """F1 of the multiset overlap of normalised words (SQuAD's f1_score)."""
    return _count_f1(Counter(normalize_words(a)), Counter(normalize_words(b)))


def predicted_steps(response: str) -> list[str]:
    """JSON reasoning_steps, else the bullet-stripped lines/sentences of the <think> blocks."""
    obj = parse_json_response(response)
    if obj is not None and isinstance(obj.get("reasoning_steps"), list):
        return [s.strip() for s in obj["reasoning_steps"] if isinstance(s, str) and s.strip()]
    steps = []
    for block in tag_blocks(response, "think"):
        for line in block.splitlines():
            for sentence in _SENTENCE_END.split(_BULLET.sub("", line)):
                if sentence.strip():
                    steps.append(sentence.strip())
    return steps


def similarity_matrix(pred: list[str], ref: list[str], embed: Embed | None = None) -> np.ndarray:
    """[len(pred), len(ref)] similarities: token F1, or cosine of `embed` vectors when given."""
    if embed is None:
        pc, rc = [Counter(normalize_words(p)) for p in pred], [Counter(normalize_words(r)) for r in ref]
        return np.array([[_count_f1(p, r) for r in rc] for p in pc], dtype=np.float64).reshape(len(pred), len(ref))
    vecs = np.asarray(embed(list(pred) + list(ref)), dtype=np.float64)
    assert vecs.shape[0] == len(pred) + len(ref), "embed must return one vector per text"
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return vecs[: len(pred)] @ vecs[len(pred):].T


def match_f1(pred: list[str], ref: list[str], *, threshold: float = THRESHOLD, embed: Embed | None = None) -> float:
    """Greedy one-to-one Match-F1 of predicted vs reference steps (pairs with similarity >= threshold)."""
    if not pred or not ref:
        return 0.0
    sim = similarity_matrix(pred, ref, embed)
    pairs = sorted(((sim[i, j], i, j) for i in range(len(pred)) for j in range(len(ref))
                    if sim[i, j] >= threshold), key=lambda t: (-t[0], t[1], t[2]))
    used_pred, used_ref = set(), set()
    for _, i, j in pairs:
        if i not in used_pred and j not in used_ref:
            used_pred.add(i)
            used_ref.add(j)
    matched = len(used_pred)
    if matched == 0:
        return 0.0
    precision, recall = matched / len(pred), matched / len(ref)
    return 2 * precision * recall / (precision + recall)


@register("reasoning")
def reasoning_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    if not example.reference_steps:
        raise ValueError(f"{example.origin or 'example'}: 'reasoning' needs example.reference_steps")
    embed = getattr(ctx.scorer, "embed", None) if ctx.scorer is not None else None
    steps = predicted_steps(response_text(completion, ctx))
    return match_f1(steps, list(example.reference_steps), embed=embed if callable(embed) else None)
