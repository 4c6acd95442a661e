"""Group-relative advantage estimators: one reward per sequence in, one advantage per sequence out.

`ADVANTAGES[name](*, rewards_B, group_B, settings) -> adv_B`, registered with `@ADVANTAGES.register(name,
settings=...)` (engine/config/registries.py); `settings` is the estimator's own `[algo.<name>]` section, or None.
`group_B[b]` is the id of the prompt group that sequence b was sampled for; ids are arbitrary integers, groups may
differ in size and need not be contiguous. The step calls it once per optimizer step on the rewards of EVERY rank
(gathered: a whole-batch statistic such as REINFORCE++'s batch std does not depend on the number of processes)
and broadcasts `adv_B` over each sequence's tokens before the loss.

Shape legend: B sequences (all groups of the step together), G groups (unique ids), T tokens.

Estimators and where they depart from their papers or peers:
- "grpo" (DeepSeekMath, arXiv 2402.03300): (r − mean_g) / (std_g + eps), std Bessel-corrected (n − 1) as in
  verl and TRL. `[algo.grpo] eps` defaults to verl's 1e-6; TRL uses 1e-4.
- "drgrpo" (Dr.GRPO, arXiv 2503.20783): r − mean_g, no division by the std (the paper's fix for the
  question-level difficulty bias).
- "rloo" (RLOO, arXiv 2402.14740): r_i − mean of the OTHER samples of the group = n/(n−1) · (r_i − mean_g).
  "drgrpo" and "rloo" have no settings.

Two rules shared by all three, chosen on purpose:
- A group of ONE sample gets advantage 0. This is TRL's behaviour; verl's GRPO instead passes the raw score
  through (mean 0, std 1). A lone sample has no baseline, so its raw reward is not an advantage: it would
  push on how easy the prompt is rather than on how good the answer was.
- A group whose rewards are all equal (constant group, which includes the group of one) gets EXACTLY 0,
  never NaN and never ±1e-11: in floating point `r − sum/n` is not always 0 for a constant group (0.1 × 3),
  and dividing that residue by `0 + eps` would blow it up, so constant groups are detected with
  per-group max == min and zeroed explicitly.

All statistics are computed in float64 (B is small) and returned in the rewards' dtype. Vectorised with
`index_add`/`scatter_reduce`; `torch.unique` maps arbitrary ids to 0..G−1 (a host sync on GPU: once per
step). Run the tests with `python -m pytest -q tests/test_advantages.py`.
"""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from engine.config.parsing import doc
from engine.config.registries import ADVANTAGES

AdvantageFn = Callable[..., Tensor]


@dataclass
class GRPOSettings:
    eps: float = doc(1e-6, "ε added to the group std (verl: 1e-6; TRL: 1e-4).", gt=0.0)


@dataclass(frozen=True)
class _Groups:
    """Per-sequence view of each sequence's group (all float64 except the ids)."""

    gid_B: Tensor  # group index in 0..G-1
    num_groups: int  # G
    r_B: Tensor  # the reward
    n_B: Tensor  # the size of its group
    mean_B: Tensor  # its group's mean reward
    constant_B: Tensor  # bool: every reward of its group is equal (always true for a group of one)


def _group_sum(x_B: Tensor, g: _Groups) -> Tensor:
    """Sum of x over each sequence's group, returned per sequence."""
    return x_B.new_zeros(g.num_groups).index_add(0, g.gid_B, x_B)[g.gid_B]


def _groups(rewards_B: Tensor, group_B: Tensor) -> _Groups:
    if rewards_B.dim() != 1 or group_B.shape != rewards_B.shape:
        raise ValueError(
            f"rewards_B and group_B must be 1-D tensors of the same length, got {tuple(rewards_B.shape)} "
            f"and {tuple(group_B.shape)}; pass one reward and one group id per sequence"
        )
    if group_B.dtype.is_floating_point or group_B.dtype == torch.bool:
        raise ValueError(f"group_B must hold integer group ids, got dtype {group_B.dtype}")
    ids_G, gid_B = torch.unique(group_B, return_inverse=True)  # arbitrary ids -> 0..G-1 (a sync on GPU)
    r_B = rewards_B.to(torch.float64)
    zeros_G = r_B.new_zeros(ids_G.numel())
    n_G = zeros_G.index_add(0, gid_B, torch.ones_like(r_B))
    sum_G = zeros_G.index_add(0, gid_B, r_B)
    max_G = zeros_G.scatter_reduce(0, gid_B, r_B, reduce="amax", include_self=False)
    min_G = zeros_G.scatter_reduce(0, gid_B, r_B, reduce="amin", include_self=False)
    return _Groups(
        gid_B=gid_B,
        num_groups=ids_G.numel(),
        r_B=r_B,
        n_B=n_G[gid_B],
        mean_B=(sum_G / n_G)[gid_B],  # every present group has n >= 1
        constant_B=(max_G == min_G)[gid_B],
    )


@ADVANTAGES.register("grpo", settings=GRPOSettings)
def grpo(*, rewards_B: Tensor, group_B: Tensor, settings: GRPOSettings | None = None) -> Tensor:
    """(r − mean_g) / (std_g + eps) with the Bessel-corrected std; 0 for constant groups and groups of one."""
    eps = (settings or GRPOSettings()).eps
    g = _groups(rewards_B, group_B)
    dev_B = g.r_B - g.mean_B
    std_B = torch.sqrt(_group_sum(dev_B * dev_B, g) / (g.n_B - 1).clamp(min=1))  # n − 1, as torch.std in verl/TRL
    return torch.where(g.constant_B, 0.0, dev_B / (std_B + eps)).to(rewards_B.dtype)


@ADVANTAGES.register("drgrpo")
def drgrpo(*, rewards_B: Tensor, group_B: Tensor, settings: None = None) -> Tensor:
    """r − mean_g (Dr.GRPO drops the std division); 0 for constant groups and groups of one."""
    g = _groups(rewards_B, group_B)
    return torch.where(g.constant_B, 0.0, g.r_B - g.mean_B).to(rewards_B.dtype)


@ADVANTAGES.register("rloo")
def rloo(*, rewards_B: Tensor, group_B: Tensor, settings: None = None) -> Tensor:
    """r_i − mean of the other n − 1 rewards of its group; 0 for constant groups and groups of one."""
    g = _groups(rewards_B, group_B)
    # r_i − (n·mean − r_i)/(n − 1) = n/(n − 1) · (r_i − mean); n = 1 is a constant group, zeroed below.
    adv_B = g.n_B / (g.n_B - 1).clamp(min=1) * (g.r_B - g.mean_B)
    return torch.where(g.constant_B, 0.0, adv_B).to(rewards_B.dtype)

