"""engine/algo/token_selection.py: which loss tokens carry the policy gradient (`algo.token_selection`).

- top_entropy's threshold and weights on hand-made entropies: exactly ceil(frac·N) tokens kept, ties at the
  threshold all kept, padding never kept.
- Through the engine (rows packed small, the step's entropy pass, policy_loss on the real tiny model): the gradient
  with top_entropy equals an independent one, -Σ_s Σ_t [H_t ≥ τ] A_s / N ∇ log p_t, where the entropies H_t come
  from plain per-trajectory forwards and τ is the k-th largest of them sorted by hand; N stays every loss token.
  "all" leaves the gradient exactly as without a selection, and top_entropy with frac 1 equals it too.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_token_selection.py
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.algo.losses import StepTokens
from engine.algo.objective import StepBatch, policy_loss, rows_logps_entropy
from engine.algo.step import step_tokens
from engine.algo.token_selection import TopEntropySettings, entropy_threshold, top_entropy
from engine.config.registries import TOKEN_SELECTIONS
from engine.config.settings import AlgoConfig, RolloutConfig
from engine.forward.packing import pack
from engine.rollout.rollout import rollout
from tests.engine_helpers import (cycle_token_classes, load_tiny, loss_positions, make_prompt,
                                  plain_logits, take_grad)

TEMPERATURE = 0.7
SMALL_BUDGET = 100  # trajectories are 40-50 tokens: two per row, several rows


def _tokens(entropy: list[float]) -> StepTokens:
    n = len(entropy)
    return StepTokens(old_logp=torch.zeros(n), adv=torch.zeros(n), entropy=torch.tensor(entropy))


def test_threshold_and_weights_by_hand():
    entropy = [0.1, 0.9, 0.5, 0.3, 0.7]
    # frac 0.4 of 5 tokens: k = 2, the two largest are 0.9 and 0.7
    stats = entropy_threshold(_tokens(entropy), TopEntropySettings(frac=0.4))
    assert float(stats["entropy_threshold"]) == pytest.approx(0.7)
    w = top_entropy(entropy=torch.tensor(entropy), mask=torch.ones(5), stats=stats, token_class=None, settings=None)
    assert w.tolist() == [0, 1, 0, 0, 1]
    # frac 0.5: k = ceil(2.5) = 3 -> 0.9, 0.7, 0.5; a padded position (mask 0) is never kept, whatever its entropy
    stats = entropy_threshold(_tokens(entropy), TopEntropySettings(frac=0.5))
    w = top_entropy(entropy=torch.tensor(entropy + [5.0]), mask=torch.tensor([1.0] * 5 + [0.0]), stats=stats,
                    token_class=None, settings=None)
    assert w.tolist() == [0, 1, 1, 0, 1, 0]
    # ties at the threshold are all kept; frac 1 keeps everything; a tiny frac still keeps one token
    tied = [0.2, 0.6, 0.6, 0.1]
    stats = entropy_threshold(_tokens(tied), TopEntropySettings(frac=0.25))
    assert top_entropy(entropy=torch.tensor(tied), mask=torch.ones(4), stats=stats, token_class=None, settings=None).tolist() == \
        [0, 1, 1, 0]
    stats = entropy_threshold(_tokens(entropy), TopEntropySettings(frac=1.0))
    assert top_entropy(entropy=torch.tensor(entropy), mask=torch.ones(5), stats=stats, token_class=None, settings=None).sum() == 5
    stats = entropy_threshold(_tokens(entropy), TopEntropySettings(frac=0.01))
    assert float(stats["entropy_threshold"]) == pytest.approx(0.9)
    assert TOKEN_SELECTIONS["all"](entropy=torch.ones(3), mask=torch.ones(3), stats=None, token_class=None, settings=None) is None


def test_top_entropy_needs_entropies():
    with pytest.raises(ValueError, match="entropies"):
        entropy_threshold(StepTokens(old_logp=torch.zeros(2), adv=torch.zeros(2)), TopEntropySettings())


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


@pytest.fixture(scope="module")
def trajs(vlm):
    prompts = [make_prompt(vlm, (90, 60), "What colour?", 0), make_prompt(vlm, (112, 84), "How many dots?", 1)]
    g = torch.Generator().manual_seed(0)
    return rollout(vlm, prompts, RolloutConfig(group_size=3, temperature=1.0, max_new_tokens=8), protocol=None,
                   generator=g)


def _plain_scores(vlm, traj):
    """(log p, entropy) at TEMPERATURE of every loss token of one trajectory, from one plain forward."""
    logits = plain_logits(vlm, traj.ids, traj.pixel_values, traj.grid_thw)
    where = loss_positions(traj)
    logp_V = torch.log_softmax(logits[where - 1] / TEMPERATURE, -1)
    tok = torch.tensor(traj.ids)[where]
    return logp_V.gather(-1, tok[:, None])[:, 0], -(logp_V.exp() * logp_V).sum(-1)



def _engine_grad(vlm, trajs, adv_B, cfg: AlgoConfig):
    """The step's path: rows, the behaviour policy's entropies, the selection's step pass, policy_loss per row."""
    model = vlm.model
    rows = pack(trajs, SMALL_BUDGET)
    assert len(rows) >= 3
    N = sum(t.num_sampled for t in trajs)
    batch = StepBatch(adv_B=adv_B, num_tokens=N, num_seqs=len(trajs))
    step_pass = TOKEN_SELECTIONS.entry(cfg.token_selection).traits["step_pass"]
    if step_pass is not None:
        batch.old_logp, batch.old_entropy = rows_logps_entropy(model, rows, temperature=TEMPERATURE)
        batch.selection_stats = step_pass(step_tokens(rows, batch), cfg.settings(cfg.token_selection))
    model.zero_grad(set_to_none=True)
    selected = 0.0
    for i, row in enumerate(rows):
        loss, metrics, n = policy_loss(model, row, i, batch, cfg, temperature=TEMPERATURE)
        loss.backward()
        selected += float(metrics.get("selected", 1.0)) * n
    return take_grad(model), selected / N


@pytest.mark.parametrize("frac", [0.2, 0.45])
def test_gradient_equals_hand_selected_policy_gradient(vlm, trajs, frac):
    model = vlm.model
    adv_B = torch.randn(len(trajs), generator=torch.Generator().manual_seed(1))
    scores = [_plain_scores(vlm, t) for t in trajs]
    with torch.no_grad():
        everything = sorted((float(h) for _, ent in scores for h in ent), reverse=True)
    N = len(everything)
    k = math.ceil(frac * N)
    tau = everything[k - 1]
    model.zero_grad(set_to_none=True)
    for s, traj in enumerate(trajs):  # fresh forwards: the scores above were used for the entropies only
        logp, entropy = _plain_scores(vlm, traj)
        keep = (entropy.detach() >= tau).float()
        (-(adv_B[s] / N) * (keep * logp).sum()).backward()
    ref = take_grad(model)
    cfg = AlgoConfig(loss="ppo_clip", aggregation="token_mean", token_selection="top_entropy",
                     components={"top_entropy": TopEntropySettings(frac=frac)})
    got, selected = _engine_grad(vlm, trajs, adv_B, cfg)
    assert ref.norm() > 0
    assert float((got - ref).norm() / ref.norm()) < 1e-4
    assert selected == pytest.approx(k / N, abs=1e-6)  # the logged share of selected tokens: exactly k of N

    # teeth: every token's gradient is far from the selected one's
    everything_grad, _ = _engine_grad(vlm, trajs, adv_B, AlgoConfig(loss="ppo_clip", aggregation="token_mean"))
    assert float((everything_grad - ref).norm() / ref.norm()) > 0.1


def test_all_and_frac_one_leave_the_gradient_unchanged(vlm, trajs):
    adv_B = torch.randn(len(trajs), generator=torch.Generator().manual_seed(2))
    base, share = _engine_grad(vlm, trajs, adv_B, AlgoConfig(loss="ppo_clip", aggregation="token_mean"))
    assert share == 1.0
    full = AlgoConfig(loss="ppo_clip", aggregation="token_mean", token_selection="top_entropy",
                      components={"top_entropy": TopEntropySettings(frac=1.0)})
    got, share = _engine_grad(vlm, trajs, adv_B, full)
    assert share == pytest.approx(1.0)
    assert float((got - base).norm() / base.norm()) < 1e-5


def test_classes_selection_by_hand():
    from engine.algo.token_selection import ClassesSettings, classes

    cls = torch.tensor([0, 1, 2, -1, 0, 2])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    got = classes(entropy=torch.zeros(6), mask=mask, token_class=cls, stats=None, settings=ClassesSettings(["tool"]))
    assert got.tolist() == [1, 0, 0, 0, 0, 0]  # the masked tool token and the unclassified one are not selected
    got = classes(entropy=torch.zeros(6), mask=mask, token_class=cls, stats=None,
                  settings=ClassesSettings(["answer", "text"]))
    assert got.tolist() == [0, 1, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="token classes"):
        AlgoConfig(token_selection="classes", components={"classes": ClassesSettings(["crop"])}).validate()


def test_classes_gradient_equals_hand_objective(vlm, trajs):
    """classes ["tool"]: ∇ = -Σ_s Σ_{t tool} A_s ∇ log p_t / N (N: every loss token), the classes set by hand."""
    from engine.algo.token_selection import ClassesSettings

    saved = [t.token_class for t in trajs]
    cycle_token_classes(trajs)  # sampled tokens cycle tool, answer, text
    adv_B = torch.randn(len(trajs), generator=torch.Generator().manual_seed(4))
    N = sum(t.num_sampled for t in trajs)
    model = vlm.model
    model.zero_grad(set_to_none=True)
    for s, t in enumerate(trajs):
        logp, _ = _plain_scores(vlm, t)
        keep = torch.tensor([float(t.token_class[k] == 0) for k in loss_positions(t).tolist()])
        (-(adv_B[s] / N) * (keep * logp).sum()).backward()
    ref = take_grad(model)
    cfg = AlgoConfig(token_selection="classes", components={"classes": ClassesSettings(["tool"])})
    got, selected = _engine_grad(vlm, trajs, adv_B, cfg)
    assert float((got - ref).norm() / ref.norm()) < 1e-4
    tool = sum(sum(1 for k, m in enumerate(t.mask) if m and t.token_class[k] == 0) for t in trajs)
    assert selected == pytest.approx(tool / N)
    for t, c in zip(trajs, saved):
        t.token_class = c  # as the rollout classed them, for any test after this one
