"""Call credit (`algo.call_credit`): the advantage of a tool-using trajectory split at its first tool call, so that
"called well" is credited apart from "answered well" using only the trajectory rewards.

    adv_B, adv_after_B, split_B = split_advantages(trajs, rewards_B, group_B, algo)   # engine/algo/step.py

"trajectory" (the default): one advantage per trajectory, every token the same (the estimator's own). "first_call":
the tree form of group-relative advantages. The samples of one prompt that made the same first tool call (same
name and arguments) share everything the call decides - the tool's result - so they form a node. A node's value is
the mean reward of its samples, Q(call). Then
- the tokens up to the end of the first call get the estimator applied over the group to Q(call) instead of each
  sample's own reward: a call is credited by how its samples did on average, not by whether one answer after it was
  lucky (a wrong crop answered right by guessing no longer scores like a right crop);
- the tokens after the tool's result get the sample's reward minus Q(call), on the group's scale (grpo: divided by
  the group's reward std): the answer is credited against the other answers given the same call's result, and the
  two parts of a trajectory's advantage sum to the estimator's own. (Not normalised within the node: a node of 2-3
  samples would turn its guesses into advantages of ±0.7-1.2.)
A node of one sample gets advantage 0 after its call, and its call the estimator's value on its own reward (as
"trajectory"); a trajectory without a tool call is a node of
its own (all its tokens are "before"). With every node a single sample this is "trajectory" exactly. Tree-search RL
for LLMs compares siblings at the node where they split in the same way (e.g. TreeRL, Hou et al. 2025); here the
tree is read off ordinary group samples, no extra sampling.

"first_call_centred": first_call, then each call's advantage minus the mean call advantage of the step's samples that
made the same call for other prompts too (a call made in at least two groups of the step; others are left as they
are). The aim: move the choice of call only where it depends on the prompt, so that a batch in which, by the luck
of the draw, more prompts wanted one crop no longer pushes that crop for every prompt. Its bias, on purpose: a call
that is better for every prompt alike is not learned from its call credit (the tokens after it still are). Measured
on zoom2 (docs/BENCHMARKS.md, 2026-12-07) it did not teach the image-dependent choice; a call made in one group only
keeps its uncentred credit, which favours rare calls (a half-image box took over there).

Under torchrun the estimator sees every rank's rewards, as engine/algo/step.py's step_advantages does. Shapes: B
trajectories of this rank.
"""

from __future__ import annotations

import json

import torch

from engine.config.registries import ADVANTAGES
from engine.runtime import distributed as D


def call_key(traj) -> str | None:
    """The node a trajectory's first tool call puts it in (name and arguments), or None without a call."""
    if not traj.tool_calls:
        return None
    call = traj.tool_calls[0]
    return json.dumps([call.name, call.args], sort_keys=True, default=str)


def split_offset(traj) -> int:
    """Position in the trajectory where the part after the first tool call starts: the first injected token (mask 0)
    after the prompt, i.e. the tool's result; len(ids) when nothing was injected (every token is "before")."""
    return next((k for k in range(traj.prompt_len, len(traj.ids)) if not traj.mask[k]), len(traj.ids))


def node_ids(groups: list[int], keys: list[str | None]) -> list[int]:
    """A node id per trajectory: the same for trajectories of one group with the same key, unique for key None."""
    ids: dict[tuple, int] = {}
    out = []
    for i, (g, k) in enumerate(zip(groups, keys)):
        node = (g, k) if k is not None else (g, None, i)
        out.append(ids.setdefault(node, len(ids)))
    return out


def node_advantages(rewards_B: torch.Tensor, group_B: torch.Tensor, node_B: torch.Tensor, algo
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(before, after): the estimator over each group on the node values Q (mean reward of the node), and each
    sample's reward minus its node's Q times the group's scale (the estimator's own: 1/(std + eps) for grpo, 1 for
    drgrpo, n/(n-1) for rloo; read off the estimator on the rewards by least squares, exact for every built-in)."""
    estimator, settings = ADVANTAGES[algo.advantage], algo.settings(algo.advantage)
    r = rewards_B.to(torch.float64)
    _, nid = torch.unique(node_B, return_inverse=True)
    _, gid = torch.unique(group_B, return_inverse=True)
    count = r.new_zeros(int(nid.max()) + 1 if len(nid) else 0).index_add(0, nid, torch.ones_like(r))
    q_B = (r.new_zeros(count.numel()).index_add(0, nid, r) / count)[nid]
    before = estimator(rewards_B=q_B.to(rewards_B.dtype), group_B=group_B, settings=settings)
    adv = estimator(rewards_B=rewards_B, group_B=group_B, settings=settings).to(torch.float64)
    g_count = r.new_zeros(int(gid.max()) + 1 if len(gid) else 0).index_add(0, gid, torch.ones_like(r))
    dev = r - (r.new_zeros(g_count.numel()).index_add(0, gid, r) / g_count)[gid]
    num = r.new_zeros(g_count.numel()).index_add(0, gid, adv * dev)
    den = r.new_zeros(g_count.numel()).index_add(0, gid, dev * dev)
    scale_B = torch.where(den > 0, num / den.clamp(min=1e-300), 0.0)[gid]
    return before, (scale_B * (r - q_B)).to(rewards_B.dtype)


def centre_by_call(before_B: torch.Tensor, groups: list[int], keys: list[str | None]) -> torch.Tensor:
    """Each call advantage minus the mean over the samples with the same call key, for keys made in >= 2 groups."""
    members: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        if k is not None:
            members.setdefault(k, []).append(i)
    out = before_B.clone()
    for idx in members.values():
        if len({groups[i] for i in idx}) >= 2:
            out[idx] = before_B[idx] - before_B[idx].mean()
    return out


def split_advantages(trajs, rewards_B: torch.Tensor, group_B: torch.Tensor, algo
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's (advantage up to the first call's end, advantage after it, split offset) per trajectory, from
    every rank's rewards, groups and call keys (gathered in rank order; ids renumbered so ranks never share one)."""
    local = (rewards_B.tolist(), group_B.tolist(), [call_key(t) for t in trajs])
    mine = D.all_gather_objects(local)
    width = max((g for _, gs, _ in mine for g in gs), default=0) + 1
    groups = [rank * width + g for rank, (_, gs, _) in enumerate(mine) for g in gs]
    keys = [k for _, _, ks in mine for k in ks]
    all_rewards = torch.tensor([r for rs, _, _ in mine for r in rs], dtype=rewards_B.dtype)
    before, after = node_advantages(all_rewards, torch.tensor(groups), torch.tensor(node_ids(groups, keys)), algo)
    if algo.call_credit == "first_call_centred":
        before = centre_by_call(before, groups, keys)
    start = sum(len(rs) for rs, _, _ in mine[:D.rank()])
    end = start + len(rewards_B)
    return before[start:end], after[start:end], torch.tensor([split_offset(t) for t in trajs])
