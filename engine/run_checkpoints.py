"""What a run saves and restores (engine/trainer.py's Run calls these with itself): its checkpoints (saving one,
resuming into a stage, abandoning a step on a signal), the frozen KL reference, and the LoRA run's merged export.

Checkpoints hold full weights (or the LoRA adapter), the optimizer state in the full, name-keyed format, every
rank's RNG, the global data position and the data's fingerprint: a run resumes on any number of processes. Every
rank gathers (collectives); rank 0 writes; all wait for it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from engine.runtime import distributed as D
from engine.runtime.checkpoint import (capture_rng, generator_device, latest_checkpoint, load_checkpoint,
                                       read_optimizer_state, restore_rng, save_checkpoint)
from engine.config.parsing import to_toml
from engine.runtime.guard import RunStopped
from engine.runtime.lora import merged_export
from engine.setup.data_stream import DataStream
from engine.setup.resume import fall_back_hint
from engine.setup.run_setup import load_policy


def resume(run) -> None:
    """Load the newest complete checkpoint's weights (or adapter) into the model, before it is sharded."""
    ckpt = run.claim.plan.checkpoint  # the newest complete one, its state read and its headers checked
    try:
        state = load_checkpoint(ckpt, model=run.vlm.model)
    except ValueError as exc:
        raise ValueError(f"{exc}. {fall_back_hint(run.dir, ckpt)}") from None
    run.summary, run.global_step = state["summary"], state["global_step"]
    run.summary.setdefault("steps", {})
    run.summary["resumed_from"] = str(ckpt)
    run.resume_from = (ckpt, state)
    run.say(f"resuming from {ckpt} (stage {state['stage']}, step {state['stage_step']})")


def take_resume(run, stage: str, model, optimizer, scheduler, stream: DataStream) -> int:
    """If resuming inside this stage, restore its optimizer, schedule, data position and RNG: the steps
    that follow are the ones the uninterrupted run would have taken."""
    if run.resume_from is None or run.resume_from[1]["stage"] != stage:
        return 0
    ckpt, state = run.resume_from
    try:
        load_checkpoint(ckpt, model=None, scheduler=scheduler)  # the weights went in before sharding
        saved_optimizer = read_optimizer_state(ckpt)
    except ValueError as exc:
        raise ValueError(f"{exc}. {fall_back_hint(run.dir, ckpt)}") from None
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)  # this schedule's lr (a raised step count stretches it)
    D.load_optimizer_state_dict(model, optimizer, saved_optimizer)  # the full, name-keyed format
    stream.load_state_dict(state["data"])
    saved = state["rng"]  # one per rank that saved
    mine = saved[run.dist.rank] if run.dist.rank < len(saved) else None
    here = run.generator.device.type
    if mine is not None and generator_device(mine, "sampler") != here:  # a CPU state does not fit a CUDA one
        run.say(f"note: the checkpoint sampled on {generator_device(mine, 'sampler')}, this run samples on "
                f"{here}: a fresh sampling stream (the run continues correctly, not bitwise)")
        restore_rng({**mine, "generators": {}, "generator_devices": {}})  # python, numpy, torch continue
        mine = None
    if mine is not None:
        restore_rng(mine, {"sampler": run.generator})
    else:  # more processes than saved, or another device type: a fresh stream for this rank
        run.generator.manual_seed(run.cfg.train.seed + 1000 * run.dist.rank + 7919 * run.global_step)
    run.resume_from = None
    return state["stage_step"]


def save(run, stage: str, stage_step: int, optimizer, scheduler, stream: DataStream) -> Path:
    """Every rank gathers (collectives); rank 0 writes; all wait for it."""
    model = run.vlm.model
    model_state = D.full_state_dict(model)
    optimizer_state = D.full_optimizer_state_dict(model, optimizer)
    rngs = D.all_gather_objects(capture_rng({"sampler": run.generator}))
    path = run.dir / "checkpoints" / f"step_{run.global_step:06d}"
    if run.main_rank:
        extra = {"stage": stage, "stage_step": stage_step, "global_step": run.global_step,
                 "data": stream.state_dict(), "rng": rngs, "summary": run.summary,
                 "data_fingerprint": run.fingerprints}
        try:
            path = save_checkpoint(run.dir, run.global_step, model=model, tokenizer=run.vlm.tokenizer,
                                   image_processor=run.vlm.image_processor, extra_state=extra,
                                   scheduler=scheduler, config_toml=to_toml(run.cfg),
                                   keep_last=run.cfg.train.keep_checkpoints, model_state=model_state,
                                   optimizer_state=optimizer_state)
        except Exception as exc:  # a full disk or lost permission surfaces as OSError, RuntimeError, ...
            raise ValueError(f"cannot write the checkpoint {path.name} in {path.parent}: {exc}. The previous "
                             f"checkpoint ({latest_checkpoint(run.dir) or 'none yet'}) is intact: free disk "
                             f"space or fix the folder's permissions, then continue with --resume {run.dir}"
                             ) from exc
    D.barrier()
    run.last_saved = (run.global_step, path)
    return path


def mark(run, stream: DataStream):
    """Where a step starts (data position, RNG): what a checkpoint holds if the step is abandoned."""
    return (stream.state_dict(), capture_rng({"sampler": run.generator})) if run.should_stop else None


def abandon(run, stage: str, step: int, mark, save, stream: DataStream) -> RunStopped:
    """A signal mid-step (one process): the step is dropped, and the run is saved as it was before it (data
    position and RNG put back; weights and optimizer are untouched until the update), unless that is saved
    already. Resuming trains the step again, as the uninterrupted run would have."""
    stream.load_state_dict(mark[0])
    restore_rng(mark[1], {"sampler": run.generator})
    run.vlm.model.train()
    fresh = run.last_saved is not None and run.last_saved[0] == run.global_step
    path = run.last_saved[1] if fresh else save(step)
    return run.signals.stopped(f"during {stage} step {step + 1} of {run.stage_steps(stage)} (abandoned: it "
                                "runs again on resume)", path)


def reference(run) -> torch.nn.Module:
    """A frozen copy of the policy as RL starts (full fine-tune, kl_beta > 0), sharded like the policy."""
    saved = run.dir / "reference"
    resumed = run.resume_from is not None and run.resume_from[1]["stage"] == "rl"
    after_sft = "sft" in run.summary["done_stages"]
    # Resumed mid-RL, the policy holds the checkpoint's weights: the copy is the one written when RL started
    # (after SFT), or the initial model, which load_policy gives as is.
    path = saved if resumed and after_sft else None
    if path is not None and not (saved / "config.json").is_file():
        raise ValueError(f"{saved} is missing: it holds the KL reference (the policy as RL started, after SFT) "
                         "that a run resumed mid-RL anchors to; restore it, or start the RL stage afresh")
    reference = load_policy(run.cfg, device=str(run.dist.device), path=path).model
    D.shard_model(reference, mixed_precision=run.mixed_precision)
    if not resumed:
        state = D.full_state_dict(run.vlm.model)  # collective; rank 0 gets the tensors
        D.load_full_state_dict(reference, state)
        if after_sft and run.main_rank:
            shutil.rmtree(saved, ignore_errors=True)
            reference.save_pretrained(saved, state_dict=state, safe_serialization=True)
            run.vlm.tokenizer.save_pretrained(saved)
            run.vlm.image_processor.save_pretrained(saved)
        D.barrier()
    return reference.eval().requires_grad_(False)


def export_merged(run) -> Path:
    """LoRA: base + adapters as a plain Hugging Face folder (every rank gathers, rank 0 writes)."""
    state = D.full_state_dict(run.vlm.model)
    out = run.dir / "merged"
    if run.main_rank:
        shutil.rmtree(out, ignore_errors=True)
        merged_export(run.vlm.model, out, run.vlm.tokenizer, run.vlm.image_processor, state_dict=state)
    D.barrier()
    return out
