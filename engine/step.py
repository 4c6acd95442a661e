"""One RL step, read top to bottom as the algorithm:

    rollout → rewards → advantages → [old log-probs] → [reference log-probs] → micro-batch loss + backward
    → clip → AdamW step → metrics

Each phase is one call, timed. Nothing here branches on a loss or estimator name: those are looked up in
engine/losses.py and engine/advantages.py. Shapes: B trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.advantages import ADVANTAGES
from engine.losses import LossConfig
from engine.metrics import PhaseTimer
from engine.objective import StepBatch, policy_loss, rows_logps, sampler_logps
from engine.packing import pack
from engine.rollout import RolloutLimits, ToolProtocol, rollout
from engine.sampler import SamplingParams
from engine.trajectory import Prompt, Trajectory
from models.load import VLM
from models.vision import resized_size
from rewards.combine import RewardBatch, score_batch
from rewards.registry import RewardContext


@dataclass
class RLState:
    cfg: object  # engine.config.Config
    policy: VLM
    reference: torch.nn.Module | None  # frozen; None when kl_beta = 0
    optimizer: torch.optim.Optimizer
    scheduler: object
    generator: torch.Generator  # sampling randomness (checkpointed)
    protocol: ToolProtocol | None
    loss_cfg: LossConfig
    scorer: object | None = None  # rewards.scorer.ModelScorer for model-based rewards (ctx.scorer), or None


def sampling_params(cfg) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p)


def rollout_limits(cfg) -> RolloutLimits:
    r = cfg.rollout
    return RolloutLimits(max_new_tokens=r.max_new_tokens, max_total_tokens=r.max_total_tokens,
                         max_tool_calls=r.max_tool_calls if r.protocol != "none" else 0, max_images=r.max_images)


def reward_context(traj: Trajectory, vlm: VLM, scorer=None) -> RewardContext:
    p = traj.prompt
    return RewardContext(images=traj.images, tool_calls=traj.tool_calls, box_frame=vlm.family.box_frame,
                         image_sizes=[im.size for im in p.images],
                         resized_sizes=[resized_size(g, vlm.family) for g in p.grid_thw], prompt_prefill=p.prefill,
                         scorer=scorer)


def score(trajs: list[Trajectory], vlm: VLM, cfg, scorer=None) -> RewardBatch:
    return score_batch([t.text for t in trajs], [t.prompt.example for t in trajs],
                       [reward_context(t, vlm, scorer) for t in trajs], cfg.reward.weights,
                       debug_path=cfg.reward.debug_path or None)


def keep_informative_groups(trajs: list[Trajectory], rewards_B: torch.Tensor) -> list[int]:
    """Dynamic sampling (DAPO): indices of trajectories whose group's rewards are not all equal."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(trajs):
        groups.setdefault(t.group, []).append(i)
    return [i for idx in groups.values() if rewards_B[idx].max() > rewards_B[idx].min() for i in idx]


def optimizer_step(state: RLState, rows, batch: StepBatch) -> dict[str, torch.Tensor]:
    """Loss + backward over every micro-batch row, clip, AdamW step. Returns token-weighted metrics."""
    model, cfg = state.policy.model, state.cfg
    state.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, torch.Tensor] = {}
    total, loss_sum = 0, torch.zeros(())
    for i, row in enumerate(rows):
        loss, metrics, n = policy_loss(model, row, i, batch, state.loss_cfg, temperature=cfg.rollout.temperature)
        loss.backward()
        loss_sum += loss.detach()  # rows are normalised by the step's global counts: their sum is the loss
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0) + v.float() * n
        total += n
    out = {k: v / max(total, 1) for k, v in sums.items()}  # token-weighted means of per-row metrics
    out["loss"] = loss_sum
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
    out["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, max_norm)
    out["lr"] = torch.tensor(state.scheduler.get_last_lr()[0])
    state.optimizer.step()
    state.scheduler.step()
    return out


def rl_step(state: RLState, prompts: list[Prompt]) -> tuple[dict, list[Trajectory], RewardBatch, torch.Tensor]:
    cfg, vlm, timer = state.cfg, state.policy, PhaseTimer()
    with timer.phase("rollout"):
        vlm.model.eval()
        trajs = rollout(vlm, prompts, group_size=cfg.rollout.group_size, params=sampling_params(cfg),
                        protocol=state.protocol, limits=rollout_limits(cfg), generator=state.generator)
        vlm.model.train()
    with timer.phase("rewards"):
        rewards = score(trajs, vlm, cfg, state.scorer)
    with timer.phase("advantages"):
        rewards_B = torch.tensor(rewards.total, dtype=torch.float32)
        group_B = torch.tensor([t.group for t in trajs])
        adv_B = ADVANTAGES[cfg.algo.advantage](rewards_B=rewards_B, group_B=group_B, eps=cfg.algo.adv_eps)
        kept = keep_informative_groups(trajs, rewards_B) if cfg.algo.dynamic_sampling else list(range(len(trajs)))
    train_trajs = [trajs[i] for i in kept]
    update: dict[str, torch.Tensor] = {}
    num_tokens = sum(t.num_sampled for t in train_trajs)
    if train_trajs and num_tokens > 0:
        rows = pack(train_trajs, cfg.optim.micro_batch_tokens)
        batch = StepBatch(adv_B=adv_B[kept], num_tokens=num_tokens, num_seqs=len(train_trajs))
        temperature = cfg.rollout.temperature
        with timer.phase("old_logp"):
            if cfg.algo.num_updates > 1:
                batch.old_logp = rows_logps(vlm.model, rows, temperature=temperature)
        with timer.phase("ref_logp"):
            if state.reference is not None:
                batch.ref_logp = rows_logps(state.reference, rows, temperature=temperature)
        if state.loss_cfg.tis_cap:
            batch.sampler_logp = sampler_logps(rows, train_trajs)
        for _ in range(cfg.algo.num_updates):
            with timer.phase("update"):
                update = optimizer_step(state, rows, batch)
    metrics = step_metrics(trajs, rewards, adv_B, kept, update)
    metrics.update(timer.pop())
    sampled = sum(t.num_sampled for t in trajs)
    metrics["throughput/sampled_tokens_per_s"] = sampled / max(metrics.get("time/rollout", 0.0), 1e-9)
    return metrics, trajs, rewards, adv_B


def step_metrics(trajs, rewards: RewardBatch, adv_B, kept, update) -> dict:
    n = len(trajs)
    m = {f"train/{k}": v for k, v in update.items()}
    m["reward/total"] = sum(rewards.total) / n
    m["reward/std"] = float(torch.tensor(rewards.total).std()) if n > 1 else 0.0
    for name, values in rewards.parts.items():
        m[f"reward/{name}"] = sum(values) / n
    for name, count in rewards.errors.items():
        m[f"reward_errors/{name}"] = count
    m["adv/mean"], m["adv/std"] = float(adv_B.mean()), float(adv_B.std()) if n > 1 else 0.0
    m["adv/abs_max"] = float(adv_B.abs().max())
    m["batch/kept_fraction"] = len(kept) / n
    m["length/response_mean"] = sum(t.num_sampled for t in trajs) / n
    m["length/total_mean"] = sum(len(t.ids) for t in trajs) / n
    m["stop/eos_rate"] = sum(t.stop == "eos" for t in trajs) / n
    m["stop/truncated_rate"] = sum(t.stop == "length" for t in trajs) / n
    m["tools/call_rate"] = sum(bool(t.tool_calls) for t in trajs) / n
    m["tools/calls_per_traj"] = sum(len(t.tool_calls) for t in trajs) / n
    calls = [c for t in trajs for c in t.tool_calls]
    m["tools/success_rate"] = sum(c.ok for c in calls) / len(calls) if calls else 0.0
    for c in calls:
        m[f"tools/count_{c.name}"] = m.get(f"tools/count_{c.name}", 0) + 1
    return m
