"""engine/algo/diagnostics.py: token classes from the sampled text, per-class loss statistics and their exact reduction
over rows, group and crop-on-target counts; and, on the tiny model, that the advantage reaches the tool-call
(box) tokens of a crop-then-answer trajectory through the real loss (engine/algo/objective.py).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_diagnostics.py
"""

from __future__ import annotations

import pytest
import torch

from data.example import Example
from engine.config.settings import AlgoConfig
from engine.algo.diagnostics import class_metrics, finalize_class_metrics, reduce_rollout_records, rollout_record
from engine.rollout.token_classes import TOKEN_CLASSES, classify_tokens
from engine.algo.losses import LossInputs, PPOClipSettings, ppo_clip
from engine.algo.objective import StepBatch, policy_loss
from engine.forward.packing import pack
from engine.algo.sft import sft_trajectory
from engine.rollout.trajectory import Prompt, ToolCallRecord, Trajectory
from tests.engine_helpers import load_tiny, make_prompt

TOOL, ANSWER, TEXT = range(3)
VOCAB = ["<think>", "look", "<tool_call>", "[1,", " 2]", "</tool_call>", "\n", "<answer>", "dots", "</answer>", "",
         "<answ", "er>"]


def _decode(seqs):
    return [VOCAB[s[0]] for s in seqs]


def test_classify_tokens_by_hand():
    # positions: 2 prompt tokens (mask 0), then sampled, an injected run (mask 0, holding "<answer>" text the
    # policy did not write), sampled again, and the end-of-turn token that decodes to "" (a special token)
    ids = [0, 1, 0, 1, 2, 3, 4, 5, 7, 8, 6, 7, 8, 9, 10]
    mask = [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1]
    got = classify_tokens(ids, mask, _decode)
    assert TOKEN_CLASSES == ("tool", "answer", "text")
    assert got == [-1, -1, TEXT, TEXT, TOOL, TOOL, TOOL, TOOL, -1, -1, TEXT, ANSWER, ANSWER, ANSWER, TEXT]
    # an answer cut off by the length limit runs to the end; a tag split over two tokens still opens it
    assert classify_tokens([11, 12, 8], [1, 1, 1], _decode) == [ANSWER, ANSWER, ANSWER]
    assert classify_tokens([1, 8], [0, 0], _decode) == [-1, -1]


def _reduce(rows: list[dict[str, torch.Tensor]], counts: list[int]) -> dict:
    """What engine/algo/step.py does with row metrics: token-weighted mean over rows, then finalize."""
    total = sum(counts)
    m = {f"train/{k}": sum(float(r[k]) * n for r, n in zip(rows, counts)) / total for k in rows[0]}
    finalize_class_metrics(m)
    return m


def test_class_metrics_reduce_to_exact_class_means():
    # two rows; class -1 (unknown) counts in the row size but in no class
    class_a, class_b = torch.tensor([TOOL, TOOL, ANSWER, TEXT]), torch.tensor([TOOL, TEXT, TEXT, -1, TEXT])
    adv_a, adv_b = torch.tensor([1.0, 1.0, -2.0, 3.0]), torch.tensor([-1.0, 0.5, 0.5, 9.0, -1.5])
    ent_a, ent_b = torch.tensor([0.1, 0.3, 1.0, 0.0]), torch.tensor([0.2, 0.4, 0.6, 9.0, 0.8])
    # old log-probs that make the ratio 2 on tokens 0 and 1 of row a (A > 0, above 1 + 0.28: clipped high) and
    # 0.5 on token 0 of row b (A < 0, below 1 - 0.2: clipped low); 1 elsewhere
    lp_a, lp_b = torch.zeros(4), torch.zeros(5)
    old_a = torch.tensor([-0.6931, -0.6931, 0.0, 0.0])
    old_b = torch.tensor([0.6931, 0.0, 0.0, 0.0, 0.0])
    s = PPOClipSettings(clip_low=0.2, clip_high=0.28)

    def rows_metrics(cls, adv, ent, lp, old):  # the loss called once; its per-token metrics reduced per class
        x = LossInputs(logp=lp, old_logp=old, adv=adv, mask=torch.ones_like(lp), seq_idx=torch.zeros_like(cls),
                       num_seqs=1)
        return class_metrics(cls, adv_K=adv, token_metrics={**ppo_clip(x, s)[1], "entropy": ent})

    m = _reduce([rows_metrics(class_a, adv_a, ent_a, lp_a, old_a), rows_metrics(class_b, adv_b, ent_b, lp_b, old_b)],
                [4, 5])
    # by hand over all 9 tokens: tool = a0, a1, b0; answer = a2; text = a3, b1, b2, b4
    assert m["train/tokens/tool/share"] == pytest.approx(3 / 9)
    assert m["train/tokens/answer/share"] == pytest.approx(1 / 9)
    assert m["train/tokens/text/share"] == pytest.approx(4 / 9)
    assert m["train/tokens/tool/adv_mean"] == pytest.approx((1 + 1 - 1) / 3)
    assert m["train/tokens/tool/adv_abs"] == pytest.approx(3 / 3)
    assert m["train/tokens/text/adv_mean"] == pytest.approx((3 + 0.5 + 0.5 - 1.5) / 4)
    assert m["train/tokens/answer/entropy"] == pytest.approx(1.0)
    assert m["train/tokens/text/entropy"] == pytest.approx((0.0 + 0.4 + 0.6 + 0.8) / 4)
    assert m["train/tokens/tool/clip_frac"] == pytest.approx(3 / 3)
    assert m["train/tokens/tool/clip_frac_high"] == pytest.approx(2 / 3)
    assert m["train/tokens/tool/clip_frac_low"] == pytest.approx(1 / 3)
    assert m["train/tokens/text/clip_frac"] == pytest.approx(0.0)


def test_a_class_without_tokens_keeps_share_zero_and_no_means():
    m = _reduce([class_metrics(torch.tensor([TEXT, TEXT]), adv_K=torch.ones(2),
                               token_metrics={"entropy": torch.ones(2)})], [2])
    assert m["train/tokens/tool/share"] == 0.0 and "train/tokens/tool/adv_mean" not in m
    assert m["train/tokens/text/adv_mean"] == pytest.approx(1.0)


def _traj(group: int, box, target) -> Trajectory:
    ex = Example(question="q", answers=["a"], images=[b""], metadata={} if target is None else {"target_box": target})
    prompt = Prompt(example=ex, ids=[1], images=[], pixel_values=torch.zeros(1, 1), grid_thw=torch.zeros(0, 3))
    calls = [] if box is None else [ToolCallRecord("crop", {"box": box}, True, box_pixels=box)]
    return Trajectory(prompt=prompt, group=group, ids=[1], mask=[0], sampler_logp=[0.0], images=[],
                      pixel_values=torch.zeros(1, 1), grid_thw=torch.zeros(0, 3), tool_calls=calls)


def test_groups_and_crops_on_target_by_hand():
    cell = [0, 0, 100, 100]
    # group 0: rewards differ; crops: on target (IoU 1), the neighbouring cell (0), none -> hits differ
    # group 1: rewards all equal; both crops half-overlapping the target (IoU 50/150 = 1/3: a miss)
    trajs = [_traj(0, cell, cell), _traj(0, [100, 0, 200, 100], cell), _traj(0, None, cell),
             _traj(1, [50, 0, 150, 100], cell), _traj(1, [50, 0, 150, 100], cell)]
    rewards_B = torch.tensor([1.2, 0.2, 0.0, 0.2, 0.2])
    rank0 = rollout_record(trajs[:3], rewards_B[:3])  # groups never span ranks: split by group
    rank1 = rollout_record(trajs[3:], rewards_B[3:])
    m = reduce_rollout_records([rank0, rank1])
    assert m["groups/informative_fraction"] == 0.5
    assert m["tools/target_hit_rate"] == pytest.approx(1 / 5)
    assert m["tools/target_iou"] == pytest.approx((1 + 0 + 0 + 1 / 3 + 1 / 3) / 5)
    assert m["groups/hit_informative_fraction"] == 0.5
    # population std of [1.2, 0.2, 0.0] and 0 for the constant group
    assert m["groups/reward_std"] == pytest.approx(float(torch.tensor([1.2, 0.2, 0.0]).std(unbiased=False)) / 2)
    # data without targets has no crop metrics at all (not a rate of 0)
    assert "tools/target_hit_rate" not in reduce_rollout_records([rollout_record([_traj(0, cell, None)],
                                                                                torch.tensor([1.0]))])


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


def test_advantage_reaches_the_box_tokens_through_the_loss(vlm):
    """A crop-then-answer trajectory (as SFT builds it and RL samples it) through pack + policy_loss: the tool-call
    tokens are loss tokens and carry the trajectory's advantage, as many as the tokenizer writes for the call."""
    prompt = make_prompt(vlm, (100, 80), "What pattern?", 0)
    target = "<think>I look closer.\n<tool_call>[25, 20, 75, 60]</tool_call>\n</think><answer>dots</answer>"
    trajs = [sft_trajectory(prompt, target, vlm), sft_trajectory(prompt, "<answer>dots</answer>", vlm)]
    call_ids = vlm.tokenizer("<tool_call>[28, 21, 84, 63]</tool_call>", add_special_tokens=False).input_ids
    answer_ids = vlm.tokenizer("<answer>dots</answer>", add_special_tokens=False).input_ids
    assert sum(c == TOOL for c in trajs[0].token_class) == len(call_ids)  # the box in the family frame
    assert sum(c == ANSWER for c in trajs[1].token_class) == len(answer_ids)
    (row,) = pack(trajs, 4096)
    adv_B = torch.tensor([1.5, -0.5])
    n = sum(t.num_sampled for t in trajs)
    batch = StepBatch(adv_B=adv_B, num_tokens=n, num_seqs=2)
    with torch.no_grad():
        _, metrics, count = policy_loss(vlm.model, row, 0, batch, AlgoConfig())
    m = _reduce([metrics], [count])
    assert m["train/tokens/tool/share"] == pytest.approx(len(call_ids) / n)
    assert m["train/tokens/tool/adv_mean"] == pytest.approx(1.5)  # only trajectory 0 calls the tool
    n_answer = 2 * len(answer_ids)
    assert m["train/tokens/answer/adv_mean"] == pytest.approx((1.5 - 0.5) * len(answer_ids) / n_answer)
    assert m["train/tokens/tool/entropy"] > 0 and m["train/tokens/tool/clip_frac"] == 0.0  # on-policy: ratio 1
