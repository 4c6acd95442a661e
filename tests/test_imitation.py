"""algo.imitation (engine/algo/imitation.py, engine/algo/objective.py): best-of-group imitation beside the policy
gradient.

- The coefficients by hand: a group with a tie for best (each best sample half the group's weight), a group whose
  rewards are all equal (nothing imitated), a group with one best; each token 1/T of its trajectory.
- Through the engine (rows packed small, policy_loss on the real tiny model), the gradient equals an independent
  one: d/dθ of Σ_s Σ_t −A_s log p_t / N + Σ_s c_s Σ_{t < end_s} −log p_t from plain per-trajectory forwards, with
  end_s the trajectory's end and, for the span, a position inside it. Without the setting the gradient differs.
- imitation_span: "first_call" ends at the first tool result (the tokens sampled before it are counted).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_imitation.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.algo.imitation import imitation_coefficients, imitation_span
from engine.algo.objective import StepBatch, policy_loss
from engine.config.parsing import build_config
from engine.config.settings import AlgoConfig, Config, RolloutConfig
from engine.forward.packing import pack
from engine.rollout.rollout import rollout
from engine.rollout.trajectory import ToolCallRecord
from tests.engine_helpers import load_tiny, loss_positions, make_prompt, plain_logits, take_grad

TEMPERATURE = 0.7


def test_coefficients_by_hand():
    rewards = torch.tensor([1.0, 0.5, 1.0, 0.2, 0.3, 0.3, 0.3, 0.3, 0.0, 2.0, 1.0, 1.0])
    groups = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    lengths = torch.tensor([4, 5, 8, 3, 2, 2, 2, 2, 6, 10, 1, 1])
    got = imitation_coefficients(rewards, groups, 0.5, lengths)
    want = [0.0] * 12
    want[0] = 0.5 / (2 * 2 * 4)  # two imitated groups; group 0's two best share it; 4 tokens
    want[2] = 0.5 / (2 * 2 * 8)
    want[9] = 0.5 / (2 * 1 * 10)
    assert got.tolist() == pytest.approx(want)
    assert imitation_coefficients(torch.ones(4), torch.zeros(4, dtype=torch.long), 1.0,
                                  torch.ones(4)).tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="algo.imitation"):
        build_config(Config, overrides=["--algo.imitation", "-0.1"])


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


def test_gradient_equals_hand_objective(vlm):
    prompts = [make_prompt(vlm, (90, 60), "What colour?", 0), make_prompt(vlm, (112, 84), "How many dots?", 1)]
    trajs = rollout(vlm, prompts, RolloutConfig(group_size=3, temperature=1.0, max_new_tokens=8), protocol=None,
                    generator=torch.Generator().manual_seed(0))
    adv_B = torch.randn(len(trajs), generator=torch.Generator().manual_seed(3))
    rewards = torch.tensor([0.2, 1.0, 0.5, 0.0, 0.7, 0.7])  # group 0: one best; group 1: a tie for best
    groups = torch.tensor([t.group for t in trajs])
    coef_B = imitation_coefficients(rewards, groups, 0.8, torch.tensor([t.num_sampled for t in trajs]))
    N = sum(t.num_sampled for t in trajs)
    model = vlm.model

    def hand_grad(end_B):
        model.zero_grad(set_to_none=True)
        for s, t in enumerate(trajs):
            where = loss_positions(t)
            logits = plain_logits(vlm, t.ids, t.pixel_values, t.grid_thw)[where - 1] / TEMPERATURE
            logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(t.ids)[where][:, None])[:, 0]
            inside = (where < int(end_B[s])).float()
            ((-adv_B[s] * logp).sum() / N - coef_B[s] * (inside * logp).sum()).backward()
        return take_grad(model)

    def engine_grad(imitate_B, end_B=None):
        model.zero_grad(set_to_none=True)
        batch = StepBatch(adv_B=adv_B, num_tokens=N, num_seqs=len(trajs), imitate_B=imitate_B, imitate_end_B=end_B)
        for i, row in enumerate(pack(trajs, 100)):
            policy_loss(model, row, i, batch, AlgoConfig(), temperature=TEMPERATURE)[0].backward()
        return take_grad(model)

    whole = torch.tensor([len(t.ids) for t in trajs])
    ref = hand_grad(whole)
    got = engine_grad(coef_B)
    assert float((got - ref).norm() / ref.norm()) < 1e-4
    plain = engine_grad(None)
    assert float((plain - ref).norm() / ref.norm()) > 1e-2
    part = torch.tensor([t.prompt_len + 3 for t in trajs])  # the first three sampled tokens only
    ref_part = hand_grad(part)
    assert float((engine_grad(coef_B, part) - ref_part).norm() / ref_part.norm()) < 1e-4
    assert float((ref_part - ref).norm() / ref.norm()) > 1e-2



def test_first_call_span_ends_at_the_tool_result():
    calls = [ToolCallRecord(name="crop", args={"box": [0, 0, 9, 9]}, ok=True)]
    with_call = SimpleNamespace(ids=list(range(10)), mask=[0, 0, 1, 1, 1, 0, 0, 1, 1, 1], prompt_len=2,
                                tool_calls=calls)
    without = SimpleNamespace(ids=list(range(6)), mask=[0, 0, 1, 1, 1, 1], prompt_len=2, tool_calls=[])
    end, tokens = imitation_span([with_call, without], "first_call")
    assert end.tolist() == [5, 6] and tokens.tolist() == [3, 4]
    end, tokens = imitation_span([with_call, without], "trajectory")
    assert end.tolist() == [10, 6] and tokens.tolist() == [6, 4]
