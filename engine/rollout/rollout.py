"""Rollout: G samples per prompt from the policy, with tool results re-injected mid-answer.

    trajs = rollout(vlm, prompts, cfg.rollout, protocol=protocol, generator=g)

`settings` is the `rollout` config section itself (engine/config/settings.py RolloutConfig): group size, sampling
(temperature, top-k, top-p) and limits (max_new_tokens, max_total_tokens, max_tool_calls, max_images).

Round 0 prefills each prompt once and samples G continuations from the shared cache. A sample that stops on
the protocol's stop token (e.g. `</tool_call>`) is handed to the protocol, which runs the tool and injects the
result (an image block and/or text, loss mask 0); the trajectories that continue are re-prefilled with their
whole sequence (all images) in the next round. Rounds end when no sample called a tool or limits are reached.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from engine.config.settings import RolloutConfig
from engine.rollout.token_classes import classify_tokens
from engine.rollout.trajectory import Prompt, Trajectory
from models.generation import GenRequest, StopRequested, generate
from models.load import VLM
from models.vision import rope_positions


class ToolProtocol(Protocol):
    stop_ids: frozenset[int]

    def on_stop(self, traj: Trajectory, vlm: VLM, limits: RolloutConfig) -> bool:
        """Handle a sample that stopped on one of `stop_ids`: run the tool, inject the result into `traj`.
        Returns True when the trajectory should continue sampling."""


def _request(traj: Trajectory, vlm: VLM, limits: RolloutConfig, seed: int | None = None) -> GenRequest:
    budget = min(limits.max_new_tokens - traj.num_sampled, limits.max_total_tokens - len(traj.ids))
    return GenRequest(ids=traj.ids, positions=rope_positions(vlm.model, traj.ids, traj.grid_thw, vlm.family),
                      pixel_values=traj.pixel_values, grid_thw=traj.grid_thw, max_new_tokens=max(budget, 1),
                      seed=seed)


def _round_needed(live: list, sampler) -> bool:
    """Whether a tool round runs: this process has trajectories to continue, or (a vLLM engine sharded over
    several processes) one of the processes sharing the engine has: they all make every call together."""
    return sampler.any_live(bool(live)) if sampler is not None else bool(live)


def prompt_seeds(run_seed: int, step: int, num_prompts: int) -> list[int]:
    """The vLLM sampling seed of each prompt of a step's batch (every process's prompts, in batch order): a hash of
    the run's seed, the step and the prompt's place in the batch, so a prompt's samples are the same whichever
    process samples it, in one process or N, and after a resume (the seeds are state-free)."""
    state = np.random.SeedSequence([run_seed, step]).generate_state(num_prompts, dtype=np.uint32)
    return [int(s) >> 2 for s in state]  # < 2**30: room for seed + G·round + k


def _absorb(traj: Trajectory, out, stop_ids_tool: frozenset[int], eos_ids: tuple[int, ...]) -> None:
    traj.append_sampled(out.tokens, out.logps)
    if out.stop == "stop" and out.tokens[-1] in stop_ids_tool:
        traj.stop = "tool"
    elif out.stop == "stop" and out.tokens[-1] in eos_ids:
        traj.stop = "eos"
    else:
        traj.stop = "length"


@torch.no_grad()
def rollout(vlm: VLM, prompts: list[Prompt], settings: RolloutConfig, *, protocol: ToolProtocol | None,
            generator: torch.Generator | None = None, sampler=None,
            seeds: list[int] | None = None, should_stop=None) -> list[Trajectory]:
    """`settings.group_size` samples per prompt. `sampler` None: our sampler on `vlm.model`; an
    engine.rollout.vllm_sampler.VLLMSampler holding the same weights: vLLM (same outputs; it reads each sequence's PIL
    images instead of its pixel_values). `seeds` (vLLM only): one per prompt; sample k of prompt p then draws with
    seeds[p] + k, and in tool round r with seeds[p] + G·r + k, so its tokens depend on its prompt's seed alone,
    whichever process or batch samples it (None: seeds drawn from `generator`). `should_stop`: asked at every
    decoding step of the native sampler and between tool rounds; True raises models.generation.StopRequested (the
    rollout is dropped)."""
    fam, limits, G = vlm.family, settings, settings.group_size
    if seeds is not None and (sampler is None or len(seeds) != len(prompts)):
        raise ValueError(f"rollout seeds: {len(seeds)} for {len(prompts)} prompts; per-prompt seeds are the vLLM "
                         "sampler's (the native sampler draws every row from one generator)")
    seed = (lambda i, r: seeds[i // G] + G * r + i % G) if seeds is not None else (lambda i, r: None)  # noqa: E731
    tool_stops = protocol.stop_ids if protocol else frozenset()
    call = dict(max_new_tokens=limits.max_new_tokens, stop_ids=frozenset(fam.eos_ids) | tool_stops,
                banned_ids=fam.vision_ids, num_token_ids=fam.num_token_ids, generator=generator)

    def sample(requests: list[GenRequest], images: list[list], expand: int = 1):
        if should_stop is not None and should_stop():
            raise StopRequested("between tool rounds")
        if sampler is None:
            return generate(vlm.model, requests, settings, pad_id=fam.pad_id, expand=expand,
                            decode="auto" if settings.cuda_graph else "dynamic", should_stop=should_stop, **call)
        return sampler.generate(requests, settings, expand=expand, images_per_request=images, **call)

    trajs = [Trajectory.start(p, g) for g, p in enumerate(prompts) for _ in range(G)]
    requests = [_request(Trajectory.start(p, 0), vlm, limits, seed(g * G, 0)) for g, p in enumerate(prompts)]
    outs = sample(requests, [p.images for p in prompts], expand=G)
    for traj, out in zip(trajs, outs):
        _absorb(traj, out, tool_stops, fam.eos_ids)
    for round_ in range(1, limits.max_tool_calls + 1):
        live = []  # (index in trajs, trajectory)
        for i, t in enumerate(trajs):
            if t.stop != "tool":
                continue
            # Out of budget: the call is not run (its result could never be read) and is never handled again.
            has_budget = t.num_sampled < limits.max_new_tokens and len(t.ids) < limits.max_total_tokens
            if has_budget and protocol.on_stop(t, vlm, limits):
                live.append((i, t))
            else:
                t.stop = "limit"
        if not _round_needed(live, sampler):
            break
        outs = sample([_request(t, vlm, limits, seed(i, round_)) for i, t in live], [t.images for _, t in live])
        for (_, traj), out in zip(live, outs):
            _absorb(traj, out, tool_stops, fam.eos_ids)
    for traj in trajs:
        finish(traj, vlm)
    return trajs


def finish(traj: Trajectory, vlm: VLM) -> None:
    """Compute the complete trajectory's positions, response text and token classes."""
    if traj.stop == "tool":
        traj.stop = "limit"  # stopped on a tool call after the last tool round
    traj.positions = rope_positions(vlm.model, traj.ids, traj.grid_thw, vlm.family)
    # Rewards read only what the policy wrote: injected tool results and role headers are not its words.
    sampled = [t for t, m in zip(traj.ids[traj.prompt_len:], traj.mask[traj.prompt_len:]) if m]
    traj.text = vlm.tokenizer.decode(sampled, skip_special_tokens=True)
    traj.token_class = classify_tokens(traj.ids, traj.mask, vlm.tokenizer.batch_decode)
