"""algo.entropy_bonus (engine/algo/objective.py): − coef(class) × entropy on each loss token, per token class.

Through the engine (rows packed small, policy_loss on the real tiny model), the gradient equals an independent one:
d/dθ of Σ_s Σ_t (−A_s log p_t − c(class_t) H_t) / N from plain per-trajectory forwards, the classes assigned by hand
(tool / answer / text in turn), only the tool class weighted. Without the setting the gradient differs (teeth).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_entropy_bonus.py
"""

from __future__ import annotations

import pytest
import torch

from engine.algo.objective import StepBatch, class_coefficients, policy_loss
from engine.config.settings import AlgoConfig, RolloutConfig
from engine.forward.packing import pack
from engine.rollout.rollout import rollout
from tests.engine_helpers import (cycle_token_classes, load_tiny, loss_positions, make_prompt,
                                  plain_logits, take_grad)

TEMPERATURE = 0.7
COEF = 0.3


def test_class_coefficients():
    got = class_coefficients(torch.tensor([0, 1, 2, -1, 0]), {"tool": 0.5, "text": 0.1})
    assert got.tolist() == pytest.approx([0.5, 0.0, 0.1, 0.0, 0.5])
    with pytest.raises(ValueError, match="token classes"):
        class_coefficients(None, {"tool": 0.5})
    with pytest.raises(ValueError, match="token class"):
        AlgoConfig(entropy_bonus={"crop": 0.1}).validate()


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


def test_gradient_equals_hand_objective(vlm):
    prompts = [make_prompt(vlm, (90, 60), "What colour?", 0), make_prompt(vlm, (112, 84), "How many dots?", 1)]
    trajs = rollout(vlm, prompts, RolloutConfig(group_size=2, temperature=1.0, max_new_tokens=8), protocol=None,
                    generator=torch.Generator().manual_seed(0))
    cycle_token_classes(trajs)  # sampled tokens cycle tool, answer, text
    adv_B = torch.randn(len(trajs), generator=torch.Generator().manual_seed(3))
    N = sum(t.num_sampled for t in trajs)
    model = vlm.model
    model.zero_grad(set_to_none=True)
    for s, t in enumerate(trajs):
        where = loss_positions(t)
        logp_V = torch.log_softmax(plain_logits(vlm, t.ids, t.pixel_values, t.grid_thw)[where - 1] / TEMPERATURE, -1)
        logp = logp_V.gather(-1, torch.tensor(t.ids)[where][:, None])[:, 0]
        entropy = -(logp_V.exp() * logp_V).sum(-1)
        coef = torch.tensor([COEF if t.token_class[k] == 0 else 0.0 for k in where.tolist()])
        ((-adv_B[s] * logp - coef * entropy).sum() / N).backward()
    ref = take_grad(model)

    def engine_grad(cfg):
        model.zero_grad(set_to_none=True)
        batch = StepBatch(adv_B=adv_B, num_tokens=N, num_seqs=len(trajs))
        for i, row in enumerate(pack(trajs, 100)):
            policy_loss(model, row, i, batch, cfg, temperature=TEMPERATURE)[0].backward()
        return take_grad(model)

    got = engine_grad(AlgoConfig(entropy_bonus={"tool": COEF}))
    assert float((got - ref).norm() / ref.norm()) < 1e-4
    plain = engine_grad(AlgoConfig())
    assert float((plain - ref).norm() / ref.norm()) > 1e-2
