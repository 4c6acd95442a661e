"""engine.algo.objective.policy_loss on the real tiny model, and engine.algo.sft.sft_trajectory.

- Gradient accumulation is exact: summing policy_loss(...).backward() over rows packed with a small budget gives
  the same parameter gradients (1e-5 relative) as one row holding everything, for token_mean,
  seq_mean_token_mean and seq_mean_token_sum_norm; the losses sum to the full loss, whose on-policy value is worked
  out by hand (ratio 1, so the per-token PPO loss is -A). The check has teeth: normalising each row by its OWN
  counts (the classic accumulation bug) moves the gradients by far more.
- The gradient itself equals an independent one: d/dθ of -Σ_s A_s/N Σ_t log p(t) from plain per-trajectory
  forwards (the model computing its own positions).
- SFT: a target with `<tool_call>[x1, y1, x2, y2]</tool_call>` in ORIGINAL pixels gets the box rewritten in the
  family frame (Qwen2.5-VL: resized pixels), the crop injected with mask 0, and mask 1 exactly on the target text
  tokens + the closing <|im_end|>.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_engine_objective.py
"""

from __future__ import annotations

import pytest
import torch

from engine.config.settings import AlgoConfig, RolloutConfig
from engine.algo.objective import StepBatch, policy_loss
from engine.forward.packing import pack
from engine.rollout.rollout import rollout
from engine.algo.sft import sft_trajectory
from tests.engine_helpers import encode, load_tiny, make_prompt, plain_logps, take_grad

NORM_LEN = 8
SMALL_BUDGET = 100  # trajectories are 40-50 tokens: two per row, three rows


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


@pytest.fixture(scope="module")
def prompts(vlm):
    return [make_prompt(vlm, (90, 60), "What colour?", 0), make_prompt(vlm, (112, 84), "How many dots?", 1)]


@pytest.fixture(scope="module")
def trajs(vlm, prompts):
    """6 trajectories from the engine's rollout at T=1 (seeded): 2 prompts x 2 samples of up to 8 tokens, plus
    2 prompts x 1 sample of up to 3 tokens, so the sequences' loss-token counts differ (seq-mean != token-mean)."""
    g = torch.Generator().manual_seed(0)
    long = rollout(vlm, prompts, RolloutConfig(group_size=2, temperature=1.0, max_new_tokens=NORM_LEN), protocol=None,
                   generator=g)
    short = rollout(vlm, prompts, RolloutConfig(group_size=1, temperature=1.0, max_new_tokens=3), protocol=None,
                    generator=g)
    out = long + short
    assert len({t.num_sampled for t in out}) > 1
    return out


@pytest.fixture(scope="module")
def adv_B(trajs):
    return torch.randn(len(trajs), generator=torch.Generator().manual_seed(1))


def _cfg(aggregation: str) -> AlgoConfig:
    return AlgoConfig(loss="ppo_clip", aggregation=aggregation)


def _grads(model, rows, batch_for_row, cfg) -> tuple[torch.Tensor, float]:
    """Sum of loss.backward() over rows; returns (flat gradient of every parameter, summed loss value)."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for i, row in enumerate(rows):
        loss, _, n = policy_loss(model, row, i, batch_for_row(row), cfg)
        assert n == int(row.target_K.numel())
        loss.backward()
        total += float(loss.detach())
    return take_grad(model), total


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _hand_loss(trajs, adv_B, aggregation: str) -> float:
    """On-policy (old = logp) PPO: ratio 1, per-token loss -A_s. So token_mean = -Σ_s A_s n_s / N;
    seq_mean_token_mean = -Σ_s A_s / S; seq_mean_token_sum_norm = -Σ_s A_s n_s / (S · NORM_LEN)."""
    n = [t.num_sampled for t in trajs]
    S, N = len(trajs), sum(n)
    if aggregation == "token_mean":
        return -sum(a * k for a, k in zip(adv_B.tolist(), n)) / N
    if aggregation == "seq_mean_token_mean":
        return -sum(adv_B.tolist()) / S
    return -sum(a * k for a, k in zip(adv_B.tolist(), n)) / (S * NORM_LEN)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batched_gradients_equal_full_batch(vlm, trajs, adv_B, aggregation):
    model, cfg = vlm.model, _cfg(aggregation)
    # every sampled token after position 0 is predicted; position 0 is always a prompt token here
    num_tokens = sum(t.num_sampled for t in trajs)
    batch = StepBatch(adv_B=adv_B, num_tokens=num_tokens, num_seqs=len(trajs), norm_len=NORM_LEN)
    small, big = pack(trajs, SMALL_BUDGET), pack(trajs, 10**6)
    assert len(small) >= 3 and len(big) == 1
    assert sum(int(r.target_K.numel()) for r in small) == num_tokens

    g_small, loss_small = _grads(model, small, lambda row: batch, cfg)
    g_big, loss_big = _grads(model, big, lambda row: batch, cfg)
    assert g_big.norm() > 0
    assert _rel(g_small, g_big) < 1e-5
    assert loss_small == pytest.approx(loss_big, abs=1e-6)
    assert loss_big == pytest.approx(_hand_loss(trajs, adv_B, aggregation), abs=1e-6)

    # teeth: each row normalised by its own token / sequence count is NOT gradient accumulation. (A row-local
    # num_seqs cannot even run under seq_mean_token_mean: seq_idx is global, so the engine would raise.)
    if aggregation != "seq_mean_token_mean":
        def local(row):
            return StepBatch(adv_B=adv_B, num_tokens=sum(trajs[i].num_sampled for i in row.members),
                             num_seqs=len(row.members), norm_len=NORM_LEN)
        g_local, _ = _grads(model, small, local, cfg)
        assert _rel(g_local, g_big) > 1e-2


def test_gradient_equals_independent_objective(vlm, trajs, adv_B):
    """token_mean on-policy: ∇ loss = -Σ_s (A_s / N) Σ_t ∇ log p(token_t | prefix), each trajectory forwarded
    alone through a plain model call (its own mrope positions, no packing)."""
    model = vlm.model
    N = sum(t.num_sampled for t in trajs)
    model.zero_grad(set_to_none=True)
    for s, traj in enumerate(trajs):
        (-(adv_B[s] / N) * plain_logps(vlm, traj).sum()).backward()
    ref = take_grad(model)
    batch = StepBatch(adv_B=adv_B, num_tokens=N, num_seqs=len(trajs))
    got, _ = _grads(model, pack(trajs, SMALL_BUDGET), lambda row: batch, _cfg("token_mean"))
    assert _rel(got, ref) < 1e-5


# ------------------------------------------------------------------------------------------------------- SFT

# 100x80 original -> 112x84 resized (grid 1x6x8). Original-pixel box [25, 20, 75, 60] in the resized frame:
# x * 112/100, y * 84/80 -> [28, 21, 84, 63].
SFT_BEFORE, SFT_AFTER = "I look closer. ", " The answer is red."
SFT_TARGET = SFT_BEFORE + "<tool_call>[25, 20, 75, 60]</tool_call>" + SFT_AFTER


@pytest.fixture(scope="module")
def sft_prompt(vlm):
    p = make_prompt(vlm, (100, 80), "What colour is the box?", 0)
    assert p.grid_thw.tolist() == [[1, 6, 8]]
    return p


def test_sft_trajectory_rewrites_box_and_injects_crop(vlm, sft_prompt):
    traj = sft_trajectory(sft_prompt, SFT_TARGET, vlm)
    tok, L = vlm.tokenizer, len(sft_prompt.ids)
    assert traj.ids[:L] == sft_prompt.ids and traj.mask[:L] == [0] * L

    # the crop ran on the ORIGINAL pixels of the box, and its block is the only mask-0 part of the response
    assert len(traj.images) == 2
    assert traj.images[1].tobytes() == sft_prompt.images[0].crop((25, 20, 75, 60)).tobytes()
    assert traj.grid_thw.shape == (2, 3)
    n_crop = int(traj.grid_thw[1].prod()) // 4
    block = [vlm.family.vision_start_id] + [vlm.family.image_token_id] * n_crop + [vlm.family.vision_end_id]
    response, mask = traj.ids[L:], traj.mask[L:]
    assert [t for t, m in zip(response, mask) if not m] == block

    # mask 1 exactly on the target text (box now in resized pixels) and the closing <|im_end|>
    written = SFT_BEFORE + "<tool_call>[28, 21, 84, 63]</tool_call>"
    assert tok.decode([t for t, m in zip(response, mask) if m]) == written + SFT_AFTER + "<|im_end|>"
    assert response == encode(vlm, written) + block + encode(vlm, SFT_AFTER + "<|im_end|>")
    assert tok.decode(response) == written + tok.decode(block) + SFT_AFTER + "<|im_end|>"
    assert traj.text == written + SFT_AFTER  # finish(): the policy's words, special tokens dropped
    assert traj.stop == "eos" and traj.sampler_logp == [0.0] * len(traj.ids)
    assert traj.positions.shape == (3, len(traj.ids))


def test_sft_without_call_and_bad_box(vlm, sft_prompt):
    traj = sft_trajectory(sft_prompt, "Just red.", vlm)
    L = len(sft_prompt.ids)
    assert traj.ids[L:] == encode(vlm, "Just red.<|im_end|>") and traj.mask[L:] == [1] * (len(traj.ids) - L)
    assert len(traj.images) == 1
    with pytest.raises(ValueError, match="malformed box"):
        sft_trajectory(sft_prompt, "<tool_call>[1, 2, x, 4]</tool_call>", vlm)
    with pytest.raises(ValueError, match="crop failed"):
        sft_trajectory(sft_prompt, "<tool_call>[0, 0, 500, 40]</tool_call>", vlm)  # outside the 100x80 image
