"""engine/algo/call_credit.py (`algo.call_credit = "first_call"`), against advantages worked out by hand.

- One group of 8: three crops shared by 2, 3 and 1 samples, two samples without a call. The call's advantage is
  GRPO over the group on each node's mean reward; the answer's is (reward − node mean) / (the group's reward std +
  eps) (0 for a node of one, and a trajectory without a call is a node of its own), computed here with `statistics`
  from the numbers alone; with drgrpo the scale is 1.
- With every call distinct the split is the plain estimator exactly, before the call, and 0 after.
- The split offset is the first injected token after the prompt, and each token gets its part's advantage
  (token_advantages, what policy_loss and the loss's step pass read).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_call_credit.py
"""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
import torch

from engine.algo.advantages import grpo
from engine.algo.call_credit import split_advantages, split_offset
from engine.algo.objective import StepBatch, token_advantages
from engine.config.settings import AlgoConfig
from engine.rollout.trajectory import ToolCallRecord

EPS = 1e-6  # grpo's default


def _traj(box, group=0, prompt_len=3, ids_len=9, injected=(5, 6)):
    calls = [] if box is None else [ToolCallRecord(name="crop", args={"box": box}, ok=True)]
    mask = [0] * prompt_len + [0 if k in injected else 1 for k in range(prompt_len, ids_len)]
    return SimpleNamespace(tool_calls=calls, group=group, prompt_len=prompt_len, ids=list(range(ids_len)), mask=mask)


def _grpo(values):
    mean, std = statistics.mean(values), statistics.stdev(values)
    return [(v - mean) / (std + EPS) for v in values]


def test_first_call_advantages_by_hand():
    a, b, c = [0, 0, 112, 112], [112, 0, 224, 112], [0, 112, 112, 224]
    boxes = [a, a, b, b, b, c, None, None]
    rewards = [1.3, 0.3, 0.3, 0.3, 1.3, 0.3, 0.3, 1.3]
    trajs = [_traj(x) for x in boxes]
    before, after, split = split_advantages(trajs, torch.tensor(rewards), torch.zeros(8, dtype=torch.long),
                                            AlgoConfig())
    q = [0.8, 0.8, 1.9 / 3, 1.9 / 3, 1.9 / 3, 0.3, 0.3, 1.3]  # node means; no call: its own reward
    assert before.tolist() == pytest.approx(_grpo(q), abs=1e-5)
    sd = statistics.stdev(rewards) + EPS
    want_after = [(r - m) / sd for r, m in zip(rewards, [0.8, 0.8] + [1.9 / 3] * 3 + [0.3, 0.3, 1.3])]
    assert want_after[5:] == [0.0, 0.0, 0.0]
    assert after.tolist() == pytest.approx(want_after, abs=1e-5)
    assert split.tolist() == [5] * 8
    _, after_dr, _ = split_advantages(trajs, torch.tensor(rewards), torch.zeros(8, dtype=torch.long),
                                      AlgoConfig(advantage="drgrpo"))
    assert after_dr.tolist() == pytest.approx([0.5, -0.5, -1 / 3, -1 / 3, 2 / 3, 0, 0, 0], abs=1e-5)


def test_distinct_calls_are_the_plain_estimator_and_groups_stay_apart():
    boxes = [[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3], [0, 0, 4, 4]] * 2
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.3, 0.3, 0.9, 0.1])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # the same boxes in two groups: never one node
    before, after, _ = split_advantages([_traj(x) for x in boxes], rewards, group, AlgoConfig())
    assert torch.allclose(before, grpo(rewards_B=rewards, group_B=group))
    assert after.tolist() == [0.0] * 8


def test_split_offset_and_token_advantages():
    assert split_offset(_traj([0, 0, 1, 1])) == 5
    assert split_offset(_traj(None, injected=())) == 9  # nothing injected: every token is "before"
    batch = StepBatch(adv_B=torch.tensor([1.0, -2.0]), num_tokens=8, num_seqs=2,
                      adv_after_B=torch.tensor([0.5, 3.0]), split_B=torch.tensor([5, 9]))
    seq_K = torch.tensor([0, 0, 0, 0, 1, 1])
    offset_K = torch.tensor([3, 4, 7, 8, 3, 8])
    assert token_advantages(batch, seq_K, offset_K).tolist() == [1.0, 1.0, 0.5, 0.5, -2.0, -2.0]
    plain = StepBatch(adv_B=torch.tensor([1.0, -2.0]), num_tokens=8, num_seqs=2)
    assert token_advantages(plain, seq_K, offset_K).tolist() == [1.0, 1.0, 1.0, 1.0, -2.0, -2.0]


def test_centred_call_credit_by_hand():
    """first_call_centred: two groups; crop a is made in both groups, so its call advantages are centred over the
    step's a-samples; crop b (group 0 only) and c (group 1 only) keep first_call's."""
    a, b, c = [0, 0, 112, 112], [112, 0, 224, 112], [0, 112, 112, 224]
    boxes = [a, a, b, b, a, c, c, c]
    rewards = [1.3, 1.3, 0.3, 0.3, 0.3, 1.3, 0.3, 1.3]
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    trajs = [_traj(x) for x in boxes]
    plain, after, _ = split_advantages(trajs, torch.tensor(rewards), group, AlgoConfig(call_credit="first_call"))
    centred, after_c, _ = split_advantages(trajs, torch.tensor(rewards), group,
                                           AlgoConfig(call_credit="first_call_centred"))
    # group 0: Q = [1.3, 1.3, 0.3, 0.3]; group 1: Q = [0.3, 0.9667, 0.9667, 0.9667] (c's mean reward 2.9/3)
    q0, q1 = _grpo([1.3, 1.3, 0.3, 0.3]), _grpo([0.3, 2.9 / 3, 2.9 / 3, 2.9 / 3])
    assert plain.tolist() == pytest.approx(q0 + q1, abs=1e-5)
    a_mean = (q0[0] + q0[1] + q1[0]) / 3  # the three a-samples' call advantages
    want = [q0[0] - a_mean, q0[1] - a_mean, q0[2], q0[3], q1[0] - a_mean, q1[1], q1[2], q1[3]]
    assert centred.tolist() == pytest.approx(want, abs=1e-5)
    assert torch.equal(after, after_c)  # the answers' credit is first_call's
