"""Rewards: plain functions `RewardFn(completion, example, ctx) -> float` in the `REWARDS` registry.

Importing this package imports every reward module, which fills REWARDS through `@register`:
format, format_strict, format_tools, format_json, format_scan (rewards/format.py); accuracy, tool_success,
tool (rewards/accuracy.py); iou, iou50 (rewards/grounding.py); crop_target (rewards/tool_target.py); reasoning
(rewards/reasoning.py); visual_grounding (rewards/visual.py); image_self, image_teacher, image_attention,
image_embedding (rewards/image_rewards.py) and blind (rewards/blind.py), which need a model scorer (rewards/scorer.py);
judge (rewards/judge.py), an HTTP judge that owns settings (`[reward.judge] url, model, ...`): a builder that
score_batch calls once with them. rewards/setup.py attaches the sentence embedder of reward.embedder_path
("reasoning") to the scorer handle. Score a batch with
`score_batch` (rewards/combine.py); try one reward from the shell with
`python -m rewards.explain NAME --completion TEXT --answer TEXT`.
Tests: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_rewards*.py`.
"""

from rewards import (  # noqa: F401  (fill REWARDS)
    accuracy, blind, format, grounding, image_rewards, judge, reasoning, tool_target, visual,
)
from rewards.accuracy import answers_match, vqa_score
from rewards.combine import RewardBatch, score_batch
from rewards.format import extract_answer
from rewards.judge import make_judge_reward
from rewards.normalize import normalize_answer
from rewards.registry import REWARDS, RewardContext, RewardFn, register

__all__ = [
    "REWARDS", "RewardBatch", "RewardContext", "RewardFn", "answers_match", "extract_answer", "make_judge_reward",
    "normalize_answer", "register", "score_batch", "vqa_score",
]
