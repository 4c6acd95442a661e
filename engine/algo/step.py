"""One RL step, read top to bottom as the algorithm:

    rollout → rewards → advantages [→ imitation weights] → [old log-probs] → [reference log-probs] → [step passes:
    the loss's, the token selection's] → micro-batch loss + backward → clip → AdamW step → [weight sync to the vLLM
    sampler] → metrics

Each phase is one call, timed. Nothing here branches on a loss or estimator name: those are looked up in their
registries (engine/config/registries.py), and what a loss declares (the inputs it needs, a step pass) decides which
forwards run. The update (loss + backward per row, clip, AdamW) is engine/algo/update.py's,
which SFT shares; the metric reduction is engine/algo/diagnostics.py's.

Under torchrun each rank runs this on its own prompts (whole groups) with the policy FSDP-sharded
(engine/runtime/distributed.py): rollout and rewards run inside `unsharded` (ranks stop at different tokens and make
different numbers of forwards there; not needed when vLLM samples and no reward asks the policy); the advantage
estimator sees every rank's rewards (gathered, in rank order, which is the one-process order), so whole-batch
statistics do not depend on the process count; a loss's step pass sees every rank's tokens the same way; the loss
normalisers are summed over ranks before the loss; every rank runs as many micro-batch rows as the busiest one
(zero-weight padding rows); with `rollout.sampler = vllm` each rank's engine receives the updated weights one
parameter group at a time (engine/rollout/weight_sync.py) and sleeps outside the rollout where vLLM can; the
metrics are gathered once and reduced as one process would reduce them. One process: every collective is the
identity.
Shapes: B trajectories.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from engine.runtime import distributed as D
from engine.algo.losses import StepTokens
from engine.config.registries import ADVANTAGES, LOSSES, TOKEN_SELECTIONS
from engine.runtime.lora import adapters_disabled
from engine.algo.diagnostics import rank_record, step_metrics
from engine.runtime.log import PhaseTimer
from engine.algo.call_credit import split_advantages
from engine.algo.imitation import imitation_coefficients, imitation_span
from engine.algo.objective import (StepBatch, padded_rows, policy_loss, rows_logps, rows_logps_entropy, sampler_logps,
                                   token_advantages)
from engine.forward.packing import pack
from engine.algo.reference_answer import reference_answer_probs
from engine.rollout.rollout import ToolProtocol, rollout
from engine.rollout.trajectory import Prompt, Trajectory
from engine.rollout.weight_sync import policy_weights
from engine.algo.update import optimizer_update
from models.generation import StopRequested
from models.load import VLM
from models.vision import resized_size
from rewards.combine import RewardBatch, score_batch
from rewards.registry import RewardContext


@dataclass
class RLState:
    cfg: object  # engine.config.settings.Config
    policy: VLM
    reference: torch.nn.Module | None  # frozen copy; None when kl_beta = 0 or when it is the policy's adapters off
    optimizer: torch.optim.Optimizer
    scheduler: object
    generator: torch.Generator  # sampling randomness (checkpointed)
    protocol: ToolProtocol | None
    scorer: object | None = None  # rewards.scorer.ModelScorer for model-based rewards (ctx.scorer), or None
    sampler: object | None = None  # engine.rollout.vllm_sampler.VLLMSampler (rollout.sampler = vllm); None: native
    should_stop: object | None = None  # () -> bool: a signal arrived; the step is dropped before any weight changes


def model_device(model) -> torch.device:
    """Where the model computes (FSDP2's DTensor parameters report their local device)."""
    return next(model.parameters()).device


def reward_context(traj: Trajectory, vlm: VLM, scorer=None, answer_prob: float | None = None) -> RewardContext:
    p = traj.prompt
    return RewardContext(images=traj.images, tool_calls=traj.tool_calls, box_frame=vlm.family.box_frame,
                         image_sizes=[im.size for im in p.images],
                         resized_sizes=[resized_size(g, vlm.family) for g in p.grid_thw], prompt_prefill=p.prefill,
                         scorer=scorer, answer_prob=answer_prob)


def asks_policy(cfg) -> bool:
    """Whether scoring runs the policy itself: the `answer_prob` reward (weighted, or a metric at weight 0)."""
    return "answer_prob" in cfg.reward.weights


def score(trajs: list[Trajectory], vlm: VLM, cfg, scorer=None) -> RewardBatch:
    probs = [None] * len(trajs)
    if asks_policy(cfg):  # one batched forward of the policy (engine/algo/reference_answer.py)
        probs = reference_answer_probs(vlm, trajs, temperature=cfg.rollout.temperature,
                                       token_budget=cfg.optim.micro_batch_tokens,
                                       chunk_tokens=cfg.model.logprob_chunk_tokens)
    return score_batch([t.text for t in trajs], [t.prompt.example for t in trajs],
                       [reward_context(t, vlm, scorer, p) for t, p in zip(trajs, probs)], cfg.reward.weights,
                       settings=cfg.reward.components, debug_path=cfg.reward.debug_path or None)


def keep_informative_groups(trajs: list[Trajectory], rewards_B: torch.Tensor) -> list[int]:
    """algo.drop_uniform_groups: indices of trajectories whose group's rewards are not all equal (DAPO's filter,
    without its refill)."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(trajs):
        groups.setdefault(t.group, []).append(i)
    return [i for idx in groups.values() if rewards_B[idx].max() > rewards_B[idx].min() for i in idx]


def credited_advantages(trajs, rewards_B: torch.Tensor, group_B: torch.Tensor, algo):
    """(adv_B, adv_after_B, split_B): one advantage per trajectory (the last two None), or with algo.call_credit
    split at the first tool call: the call's part, the part after it and where that starts
    (engine/algo/call_credit.py)."""
    if algo.call_credit == "trajectory":
        return step_advantages(rewards_B, group_B, algo), None, None
    return split_advantages(trajs, rewards_B, group_B, algo)


def step_advantages(rewards_B: torch.Tensor, group_B: torch.Tensor, algo) -> torch.Tensor:
    """The estimator on every rank's rewards (gathered in rank order; groups renumbered so ranks never share an id),
    then this rank's share: the same advantages as one process computing the whole batch."""
    mine = D.all_gather_objects((rewards_B.tolist(), group_B.tolist()))
    all_rewards = torch.tensor([r for rs, _ in mine for r in rs], dtype=rewards_B.dtype)
    width = max((g for _, gs in mine for g in gs), default=0) + 1  # rank r's group g -> r·width + g
    all_groups = torch.tensor([rank * width + g for rank, (_, gs) in enumerate(mine) for g in gs], dtype=torch.long)
    adv_all = ADVANTAGES[algo.advantage](rewards_B=all_rewards, group_B=all_groups,
                                         settings=algo.settings(algo.advantage))
    start = sum(len(rs) for rs, _ in mine[:D.rank()])
    return adv_all[start:start + len(rewards_B)]


def step_tokens(rows, batch) -> StepTokens:
    """Every loss token of the step over all ranks, flat and detached, in rank → row → position order: what a
    loss's step pass sees (one gather of plain host tensors, once per step)."""
    flat = lambda parts: torch.cat(parts) if parts else torch.zeros(0)  # noqa: E731  (a rank may keep nothing)
    local = {"old_logp": flat([batch.old_logp[i].float().cpu() for i in range(len(rows))]),
             "adv": flat([token_advantages(batch, r.seq_K, r.offset_K).float().cpu() for r in rows])}
    if batch.ref_logp is not None:
        local["ref_logp"] = flat([batch.ref_logp[i].float().cpu() for i in range(len(rows))])
    if batch.old_entropy is not None:
        local["entropy"] = flat([batch.old_entropy[i].float().cpu() for i in range(len(rows))])
    gathered = D.all_gather_objects(local)
    device = batch.adv_B.device
    return StepTokens(**{k: torch.cat([g[k] for g in gathered]).to(device) for k in local})


def reference_logps(state: RLState, rows, *, temperature: float) -> dict[int, torch.Tensor]:
    """The KL anchor: the frozen copy (full fine-tune) or, with LoRA, the policy with its adapters off."""
    chunk = state.cfg.model.logprob_chunk_tokens
    if state.reference is not None:
        return rows_logps(state.reference, rows, temperature=temperature, chunk_tokens=chunk)
    with adapters_disabled(state.policy.model):  # ValueError for a plain model: it needs a reference copy
        return rows_logps(state.policy.model, rows, temperature=temperature, chunk_tokens=chunk)


def _policy_forwards(state: RLState):
    """Around the rollout and rewards: the policy gathered once (FSDP: forwards without collectives, so ranks may
    make different numbers of them) where they run it - our sampler, or a scorer that asks the policy. The vLLM
    sampler with no such scorer (and no answer_prob reward) needs no copy of the policy's weights there."""
    needed = state.sampler is None or state.scorer is not None or asks_policy(state.cfg)
    return D.unsharded(state.policy.model) if needed else contextlib.nullcontext()


def rl_step(state: RLState, prompts: list[Prompt], seeds: list[int] | None = None
            ) -> tuple[dict, list[Trajectory], RewardBatch, torch.Tensor]:
    """One step on this rank's prompts (`seeds`: one per prompt for the vLLM sampler, engine/rollout/rollout.py).
    Returns the step's metrics (over all ranks) and this rank's trajectories, rewards and advantages."""
    cfg, vlm, timer = state.cfg, state.policy, PhaseTimer()
    awake = state.sampler.awake() if state.sampler is not None else contextlib.nullcontext()
    with _policy_forwards(state):
        with timer.phase("rollout"), awake:  # a vLLM engine sleeps again after (its memory: the update's)
            vlm.model.eval()
            trajs = rollout(vlm, prompts, cfg.rollout, protocol=state.protocol, generator=state.generator,
                            sampler=state.sampler, seeds=seeds, should_stop=state.should_stop)
            vlm.model.train()
        with timer.phase("rewards"):
            rewards = score(trajs, vlm, cfg, state.scorer)
    if state.should_stop is not None and state.should_stop():  # the last moment a step can be dropped whole
        raise StopRequested("after the rewards")
    with timer.phase("advantages"):
        rewards_B = torch.tensor(rewards.total, dtype=torch.float32)
        group_B = torch.tensor([t.group for t in trajs])
        adv_B, adv_after_B, split_B = credited_advantages(trajs, rewards_B, group_B, cfg.algo)
        kept = keep_informative_groups(trajs, rewards_B) if cfg.algo.drop_uniform_groups else list(range(len(trajs)))
    train_trajs = [trajs[i] for i in kept]
    # The step's normalisers over ALL ranks, counted before any loss (sync point: .tolist()).
    local = [sum(t.num_sampled for t in train_trajs), len(train_trajs)]
    num_tokens, num_seqs = D.all_reduce_sum(torch.tensor(local)).tolist()
    update = None
    if num_tokens > 0:  # the same decision on every rank
        budget, temperature = cfg.optim.micro_batch_tokens, cfg.rollout.temperature
        any_traj = next((t for t in trajs if t.num_sampled), trajs[0])  # to pad with when this rank kept nothing
        rows, num_real = padded_rows(pack(train_trajs, budget), fallback=lambda: pack([any_traj], budget)[0])
        device = model_device(vlm.model)  # rewards and advantages are computed on the host; the loss is not
        batch = StepBatch(adv_B=adv_B[kept].to(device), num_tokens=num_tokens, num_seqs=num_seqs,
                          norm_len=cfg.rollout.max_new_tokens,
                          seq_len_B=torch.tensor([t.num_sampled for t in train_trajs], device=device),
                          group_B=group_B[kept].to(device))
        if cfg.algo.imitation > 0:  # best-of-group imitation beside the policy gradient (engine/algo/imitation.py)
            end_B, span_B = imitation_span(train_trajs, cfg.algo.imitation_span)
            batch.imitate_B = imitation_coefficients(rewards_B[kept], group_B[kept], cfg.algo.imitation,
                                                     span_B).to(device)
            batch.imitate_end_B = end_B.to(device)
        if adv_after_B is not None:  # a split at the first tool call: the part after it and where it starts
            batch.adv_after_B, batch.split_B = adv_after_B[kept].to(device), split_B[kept].to(device)
        loss = LOSSES.entry(cfg.algo.loss)
        selection = TOKEN_SELECTIONS.entry(cfg.algo.token_selection)
        with timer.phase("old_logp"):  # before any update: the behaviour policy (a step pass reads it too)
            chunk = cfg.model.logprob_chunk_tokens
            if selection.traits["step_pass"] is not None:  # its entropies from the same forward
                batch.old_logp, batch.old_entropy = rows_logps_entropy(vlm.model, rows, temperature=temperature,
                                                                       chunk_tokens=chunk)
            elif cfg.algo.num_updates > 1 or loss.traits["step_pass"] is not None:
                batch.old_logp = rows_logps(vlm.model, rows, temperature=temperature, chunk_tokens=chunk)
        with timer.phase("ref_logp"):
            if cfg.algo.kl_beta > 0 or "ref_logp" in loss.traits["needs"]:
                batch.ref_logp = reference_logps(state, rows, temperature=temperature)
        if (cfg.algo.tis_cap is not None or state.sampler is not None  # vLLM: the mismatch is always logged
                or "sampler_logp" in loss.traits["needs"]):
            batch.sampler_logp = sampler_logps(rows[:num_real], train_trajs, device)
        if loss.traits["step_pass"] is not None or selection.traits["step_pass"] is not None:
            with timer.phase("step_pass"):
                tokens = step_tokens(rows[:num_real], batch)
                if loss.traits["step_pass"] is not None:
                    batch.step_stats = loss.traits["step_pass"](tokens, cfg.algo.settings(cfg.algo.loss))
                if selection.traits["step_pass"] is not None:
                    batch.selection_stats = selection.traits["step_pass"](
                        tokens, cfg.algo.settings(cfg.algo.token_selection))
        scoring = {"temperature": temperature, "chunk_tokens": cfg.model.logprob_chunk_tokens}
        row_loss = lambda i, row: policy_loss(vlm.model, row, i, batch, cfg.algo, **scoring)  # noqa: E731
        skipped = False
        for _ in range(cfg.algo.num_updates):
            with timer.phase("update"):
                update = optimizer_update(vlm.model, state.optimizer, state.scheduler, rows, num_real, row_loss,
                                          max_grad_norm=cfg.optim.max_grad_norm, scoring=scoring)
                skipped = skipped or update["skipped"]
        update["skipped"] = skipped  # any of the step's updates
    with timer.phase("weight_sync"):
        if state.sampler is not None and update is not None:  # the next rollout samples the updated policy
            state.sampler.push_weights(policy_weights(vlm.model))
    mine = rank_record(trajs, rewards, adv_B, kept, update, timer.pop())
    metrics = step_metrics(D.all_gather_objects(mine))  # one collective: every rank's plain numbers
    return metrics, trajs, rewards, adv_B
