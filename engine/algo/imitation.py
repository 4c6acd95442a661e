"""Best-of-group imitation (`algo.imitation`, a weight λ ≥ 0; 0: off): beside the policy gradient, λ × the mean
negative log-likelihood of the sampled tokens of each group's best trajectories.

    coef_B = imitation_coefficients(rewards_B, group_B, lam, tokens_B)   # engine/algo/step.py
    loss = policy loss + Σ_tokens coef_B[traj] × (−log p(token))          # engine/algo/objective.py

In each group whose rewards are not all equal, the trajectories with the group's highest reward are imitated as SFT
targets (RAFT, Dong et al. 2023, arXiv 2304.06767; ReST, Gulcehre et al. 2023; self-imitation, Oh et al. 2018):
each imitated group weighs the same, each of its best trajectories 1/n of it, each of their tokens 1/T of that, over
the step's imitated groups (all ranks): L = λ / G · Σ_g 1/n_g · Σ_{b best in g} 1/T_b · Σ_t −log π(y_bt).
`algo.imitation_span = "first_call"` imitates only the tokens up to the end of the first tool call (T_b counts
those): the choice of call is taught, the answer after the tool's result is left to the policy gradient.

Why beside GRPO: the policy gradient of a choice the policy makes at near-uniform odds is a sum of sampled one-hots
times advantages, most of it noise; the best sample's choice imitated is a cross-entropy step towards it, as a
supervised label would give. What is imitated is only what the reward ranked first: with `answer_prob` weighted
(rewards/accuracy.py) the best sample of a group is the one whose tool call made the reference answer likeliest,
not one that guessed right. With plain 0/1 accuracy every right answer ties for best (RAFT's filter). Shapes: B
trajectories of this rank.
"""

from __future__ import annotations

import torch

from engine.algo.call_credit import split_offset
from engine.runtime import distributed as D


def imitation_span(trajs, span: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(end_B, tokens_B): per trajectory, the position before which its tokens are imitated and how many sampled
    tokens lie there. "trajectory": all of them; "first_call": up to the first tool call's result
    (engine/algo/call_credit.py split_offset; a trajectory without a call is imitated whole)."""
    ends = [len(t.ids) if span == "trajectory" else split_offset(t) for t in trajs]
    return torch.tensor(ends), torch.tensor([sum(t.mask[:e]) for t, e in zip(trajs, ends)])


def imitation_coefficients(rewards_B: torch.Tensor, group_B: torch.Tensor, lam: float,
                           tokens_B: torch.Tensor) -> torch.Tensor:
    """Per trajectory, the coefficient of each of its imitated tokens' −log p (0 outside each group's best; see
    above); `tokens_B`: how many tokens each imitates (imitation_span). `rewards_B`, `group_B`: this rank's (whole
    groups live on one rank); G is counted over all ranks."""
    coef_B = torch.zeros(len(rewards_B), dtype=torch.float64)
    best: list[list[int]] = []
    for g in torch.unique(group_B).tolist():
        idx = (group_B == g).nonzero().flatten()
        r = rewards_B[idx]
        if r.max() > r.min():
            best.append(idx[r == r.max()].tolist())
    num_groups = int(D.all_reduce_sum(torch.tensor([len(best)])).item())  # sync point
    for members in best:
        for b in members:
            coef_B[b] = lam / (num_groups * len(members) * max(int(tokens_B[b]), 1))
    return coef_B.to(torch.float32)
