"""What a run builds before its first step, shared by train.py's trainer, eval.py and scripts/bench.py: the model a
run starts from (model.path may name a run or a checkpoint folder), the policy model from the config, gradient
checkpointing on it, an optimizer with its schedule, and the checks of the launch (check_launch: the batch sizes
split over the processes, vLLM's settings), which the memory planner runs too. Re-exported by engine/trainer.py
(older imports name it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from engine.config.settings import Config
from engine.runtime.optim import build_optimizer, build_scheduler
from models.load import VLM, Processing, load_processing, load_vlm
from models.tiny import tiny_model_dir


def enable_gradient_checkpointing(model) -> None:
    """transformers' own per-layer checkpointing (every decoder layer and vision block), non-reentrant: it works
    with frozen inputs (LoRA), FSDP2 and packed rows, and only acts in training mode (rollouts run in eval)."""
    if not getattr(model, "supports_gradient_checkpointing", True):
        raise ValueError(f"model.gradient_checkpointing: {type(model).__name__} does not support it in transformers")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def with_start_model(cfg: Config, verbose: bool = True) -> Config:
    """`cfg` with model.path resolved to the model folder it names (engine/setup/model_source.py start_from: a run
    folder -> its merged/ export or latest checkpoint's model/, a checkpoint folder -> its model/), printing what
    was picked. The run's config.toml then records that folder, so a resume, the KL reference and eval.py reload
    the same weights even after the source run trains on."""
    if not cfg.model.path:
        return cfg
    from engine.setup.model_source import start_from

    folder, line = start_from(cfg.model.path, cfg.train.out_dir, cfg.train.resume)
    if line and verbose:
        print(line)
    return replace(cfg, model=replace(cfg.model, path=str(folder)))


def model_dir(cfg: Config) -> Path:
    """The policy's folder: model.path, or the tiny model (built and cached on first use)."""
    return Path(cfg.model.path or tiny_model_dir(cfg.model.tiny_arch, seed=cfg.train.seed))


def load_model_processing(cfg: Config) -> Processing:
    """The policy's tokenizer, image processor and family, without its weights: what the data is checked against
    before the model loads (engine/setup/data_setup.py)."""
    return load_processing(model_dir(cfg), box_frame=cfg.model.box_frame, min_pixels=cfg.data.min_pixels,
                           max_pixels=cfg.data.max_pixels)


def load_policy(cfg: Config, device: str | None = None, path: str | Path | None = None,
                processing: Processing | None = None) -> VLM:
    """The model of `path` (default: model.path, or the tiny model) on `device` (default: cuda if available).
    `processing`: the folder's, loaded already by load_model_processing."""
    return load_vlm(path or model_dir(cfg), dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                    device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
                    box_frame=cfg.model.box_frame, min_pixels=cfg.data.min_pixels,
                    max_pixels=cfg.data.max_pixels, processing=processing)


def _optimizer(model, cfg: Config, lr: float, total: int):
    o = cfg.optim
    opt = build_optimizer(model.parameters(), lr=lr, weight_decay=o.weight_decay, betas=(o.beta1, o.beta2))
    sched = build_scheduler(opt, warmup_steps=o.warmup_steps, total_steps=total, schedule=o.schedule,
                            min_ratio=o.min_lr_ratio)
    return opt, sched


def check_launch(cfg: Config, world: int, cuda: bool, *, here: bool = True) -> None:
    """Every refusal train.py makes from the settings and the launch alone (`world` processes, on GPUs when `cuda`),
    beyond those parsing makes (Config.validate): the batch sizes split over the processes; the vLLM sampler's
    tensor parallelism and memory settings (and, `here`, vLLM importable in this process). The trainer calls it
    before reading data; the memory planner (python -m engine.setup.memory) calls it for the GPUs it plans
    (here=False), so the planner refuses what train.py refuses, with the same message."""
    _check_world(cfg, world)
    if cfg.rollout.sampler == "vllm":
        check_vllm_settings(cfg.rollout, world, cuda, here=here)


def check_vllm_settings(r, world: int, cuda: bool, *, here: bool = True) -> None:
    """rollout.sampler = vllm (engine/rollout/vllm_sampler.py): what can be checked before any model loads (`r` the
    rollout config section): vLLM importable here (`here` False: the memory planner, planning for another machine),
    vllm_tp dividing the `world` processes, each memory setting meaningful on this device (`cuda`)."""
    import importlib.util

    if here and importlib.util.find_spec("vllm") is None:
        raise ValueError("rollout.sampler = vllm needs vLLM in this environment: build .venv-vllm with `bash "
                         "scripts/install_vllm.sh` and run with .venv-vllm/bin/python (on a GPU: pip install vllm)")
    if world % r.vllm_tp:
        raise ValueError(f"rollout.vllm_tp = {r.vllm_tp} does not divide the {world} processes: each vLLM "
                         "engine is sharded over that many consecutive ranks")
    defaults = type(r).__dataclass_fields__
    if not cuda and r.vllm_gpu_memory_utilization != defaults["vllm_gpu_memory_utilization"].default:
        raise ValueError("rollout.vllm_gpu_memory_utilization sizes a GPU engine; on a CPU the vLLM KV cache is "
                         "rollout.vllm_kv_cache_gib")
    if cuda and r.vllm_kv_cache_gib != defaults["vllm_kv_cache_gib"].default:
        raise ValueError("rollout.vllm_kv_cache_gib sizes a CPU engine; on a GPU the engine's share of memory is "
                         "rollout.vllm_gpu_memory_utilization")
    if not cuda and r.vllm_sleep:
        raise ValueError("rollout.vllm_sleep = true: vLLM has no sleep mode on a CPU; leave it at none (on where "
                         "vLLM has it) or false")


def _check_world(cfg: Config, world: int) -> None:
    stages = cfg.train.stage.split(",")
    for stage, key, n in (("sft", "sft.batch_size", cfg.sft.batch_size),
                          ("rl", "rollout.prompts_per_step", cfg.rollout.prompts_per_step)):
        if stage in stages and n % world:
            raise ValueError(f"{key} = {n} is not a multiple of the {world} processes, which split it evenly: "
                             f"set --{key} to a multiple of {world} or change --nproc_per_node")
