"""The memory planner's plan: which precision, LoRA rank, checkpointing and micro-batch fit a GPU with headroom, and
the command that trains with the first of them. `python -m engine.setup.memory` prints it (engine/setup/memory.py
holds the estimate).

    fits = fitting_settings(dims, work, base, gpu_bytes)         # [(Setting, estimate)], fastest first
    print(train_command(fits[0][0], ...))                          # python train.py / torchrun ... with the flags

Candidates: each precision (bf16 mixed precision: fp32 master weights and AdamW state, bf16 compute; pure bf16: half
the memory, but updates smaller than half a bf16 step are lost; fp32: only when the config asks for it, slow on a
GPU), full fine-tuning and LoRA ranks 16 and 64 (and the config's own), gradient checkpointing off and on. For each,
the largest micro_batch_tokens (from MICRO_BATCH_CHOICES, at least one whole trajectory) whose estimated peak
stays under (1 - HEADROOM) of the GPU: allocator fragmentation, the CUDA context and kernels' workspaces are not
in the estimate. Order, fastest first: bf16 compute before fp32, no checkpointing before checkpointing (it
recomputes a forward), larger micro-batches, full fine-tuning before LoRA and smaller ranks first (for one speed,
the most capacity), mixed precision before pure bf16 (the same speed, no lost updates).
With --examples N (or --data PATH, whose training examples are counted) it prints the steps per epoch of each stage
and a full `train.py` (or `torchrun`) command for the first setting.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import replace

from engine.setup.memory import GiB, MICRO_BATCH_CHOICES, Dims, Setting, Workload, estimate

HEADROOM = 0.10  # of the GPU's memory, left free by every suggestion
LORA_RANKS = (16, 64)
PRECISIONS = {"bf16 mixed precision": ("float32", True), "pure bf16": ("bfloat16", False),
              "fp32": ("float32", False)}  # name -> (model.dtype, train.mixed_precision)


def precision_name(s: Setting) -> str:
    return next(n for n, (dtype, mixed) in PRECISIONS.items() if (s.dtype, s.mixed_precision) == (dtype, mixed)) \
        if (s.dtype, s.mixed_precision) in PRECISIONS.values() else s.dtype


def candidates(base: Setting) -> list[Setting]:
    """Every precision x LoRA rank x checkpointing to try (micro_batch_tokens is chosen per candidate)."""
    precisions = [p for n, p in PRECISIONS.items() if n != "fp32" or (base.dtype, base.mixed_precision) == p]
    if (base.dtype, base.mixed_precision) not in precisions:  # a float16 config: try it as it is too
        precisions.append((base.dtype, base.mixed_precision))
    ranks = sorted({0, *LORA_RANKS, base.lora_rank})

    def engine(dtype: str, mixed: bool):  # a vLLM engine samples in the compute dtype; pushed groups are the master's
        return base.vllm and replace(base.vllm, dtype="bfloat16" if mixed else dtype, master_fp32=mixed)

    return [replace(base, dtype=dtype, mixed_precision=mixed, lora_rank=r, checkpointing=ckpt, vllm=engine(dtype, mixed))
            for dtype, mixed in precisions for r in ranks for ckpt in (False, True)]


def _speed_key(s: Setting) -> tuple:
    """Fastest first (module docstring)."""
    return (s.dtype == "float32" and not s.mixed_precision, s.checkpointing, -s.micro_batch_tokens, s.lora_rank,
            not s.mixed_precision)


def fitting_settings(d: Dims, w: Workload, base: Setting, gpu_bytes: float,
                     headroom: float = HEADROOM) -> list[tuple[Setting, dict]]:
    """Each candidate with the largest micro_batch_tokens that holds a whole trajectory and keeps its estimated
    peak under (1 - headroom) of `gpu_bytes`; candidates where nothing fits are left out. Fastest first."""
    budget, found = (1.0 - headroom) * gpu_bytes, []
    for c in candidates(base):
        best = None
        for mbt in MICRO_BATCH_CHOICES:
            s = replace(c, micro_batch_tokens=mbt)
            est = estimate(d, w, s)
            if mbt >= est["trajectory_tokens"] and est["peak"] <= budget:
                best = (s, est)
        if best:
            found.append(best)
    return sorted(found, key=lambda f: _speed_key(f[0]))


def max_prompts(d: Dims, w: Workload, s: Setting, group_size: int, gpu_bytes: float,
                headroom: float = HEADROOM) -> int:
    """The most prompts per step (a multiple of the number of GPUs) whose rollout KV cache fits beside the rest,
    under the same headroom."""
    n, budget = s.gpus, (1.0 - headroom) * gpu_bytes
    while n < 4096:  # more is never the memory's limit in practice
        est = estimate(d, replace(w, sequences=(n + s.gpus) * group_size), s)
        if est["peak"] > budget:
            break
        n += s.gpus
    return n


def setting_flags(s: Setting) -> list[str]:
    """The train.py flags that select a setting."""
    flags = ["--model.dtype", s.dtype] + (["--train.mixed_precision", "bf16"] if s.mixed_precision else [])
    flags += ["--lora.r", str(s.lora_rank)] + (["--lora.alpha", str(2 * s.lora_rank)] if s.lora_rank else [])
    return flags + ["--model.gradient_checkpointing", str(s.checkpointing).lower(),
                    "--optim.micro_batch_tokens", str(s.micro_batch_tokens)]


def train_command(s: Setting, *, config: str | None, model_path: str, data: str, prompts: int) -> str:
    """`python train.py ...` (one GPU) or `torchrun --nproc_per_node N train.py ...` with the setting's flags."""
    head = ["python", "train.py"] if s.gpus == 1 else ["torchrun", "--nproc_per_node", str(s.gpus), "train.py"]
    args = (["--config", config] if config else []) + ["--model.path", model_path or "MODEL_FOLDER"]
    args += (["--data.train", data] if data else []) + setting_flags(s)
    args += ["--rollout.prompts_per_step", str(prompts)]
    return " ".join(shlex.quote(a) for a in head + args)


def epoch_lines(examples: int, sft_batch: int, prompts: int, gpus: int) -> list[str]:
    """Steps per epoch of each stage for `examples` training examples."""
    return [f"steps per epoch for {examples} training examples: SFT {math.ceil(examples / sft_batch)} (sft.batch_size "
            f"{sft_batch}), RL {math.ceil(examples / prompts)} (rollout.prompts_per_step {prompts} over {gpus} "
            "GPU(s)); set --sft.epochs / --rl.epochs E to train E passes"]


def report(d: Dims, w: Workload, s: Setting, gpu_gib: float, group_size: int, *, config: str | None = None,
           model_path: str = "", data: str = "", examples: int = 0, sft_batch: int = 8, prompts: int = 0) -> str:
    """The estimate of the config as it is, the settings that fit (fastest first) and, with `examples`, the
    command for the first of them."""
    est = estimate(d, w, s)
    gib = lambda x: f"{x / GiB:7.2f} GiB"  # noqa: E731
    mode = f"LoRA r={s.lora_rank}" if s.lora_rank else "full fine-tune"
    budget = (1 - HEADROOM) * gpu_gib
    verdict = "fits" if est["peak"] <= budget * GiB else ("fits, with less than 10 % headroom"
                                                           if est["peak"] <= gpu_gib * GiB else "DOES NOT FIT")
    lines = [f"model: {d.params / 1e9:.3f}B parameters ({d.vision_params / 1e9:.3f}B vision), {d.layers} layers, "
             f"hidden {d.hidden}, vocab {d.vocab}; {s.gpus} GPU(s) of {gpu_gib:g} GiB",
             f"this config: {mode}, {precision_name(s)}, gradient checkpointing {'on' if s.checkpointing else 'off'}, "
             f"micro_batch_tokens {s.micro_batch_tokens}, {w.sequences} sequences of ~{est['trajectory_tokens']} "
             f"tokens ({w.image_px} px images)",
             f"  weights            {gib(est['weights'])}",
             f"  gradients          {gib(est['gradients'])}",
             f"  optimizer state    {gib(est['optimizer'])}",
             f"  reference          {gib(est['reference'])}",
             f"  activations        {gib(est['activations'])}  ({est['activations_per_token'] / 2**20:.3f} MiB "
             f"per micro-batch token, plus {est['logits'] / GiB:.2f} GiB for the log-prob head)",
             *(vllm_lines(est, s.vllm) if s.vllm else [
                 f"  rollout KV cache   {gib(est['rollout_kv_cache'])}"
                 + (f"  (+ {est['rollout_gathered'] / GiB:.2f} GiB: the sharded model gathered for sampling)"
                    if est["rollout_gathered"] else "")]),
             f"  estimated peak     {gib(est['peak'])}  {verdict}",
             f"settings that fit with {HEADROOM:.0%} headroom (under {budget:.1f} GiB), fastest first:"]
    fits = fitting_settings(d, w, s, gpu_gib * GiB)
    for f, e in fits:
        lines.append(f"  {precision_name(f):21} {'LoRA r=' + str(f.lora_rank) if f.lora_rank else 'full':9} "
                     f"checkpointing {'on ' if f.checkpointing else 'off'}  micro_batch_tokens "
                     f"{f.micro_batch_tokens:5}  peak {e['peak'] / GiB:5.1f} GiB, "
                     + (f"vLLM holds {e['vllm_sequences']:.0f} trajectories at once" if f.vllm else
                        f"rollout.prompts_per_step up to {max_prompts(d, w, f, group_size, gpu_gib * GiB)}"))
    if not fits:
        lines.append("  none: use more GPUs (--gpus), smaller images or shorter responses")
        return "\n".join(lines)
    first = fits[0][0]
    if first.dtype == "bfloat16" and not first.mixed_precision:
        lines.append("  (pure bf16 loses updates smaller than half a bf16 step: prefer mixed precision where it fits)")
    fitting = max_prompts(d, w, first, group_size, gpu_gib * GiB)
    asked = prompts or fitting
    chosen = min(asked, fitting) // first.gpus * first.gpus or first.gpus
    if examples:
        lines += epoch_lines(examples, sft_batch, chosen, first.gpus)
        lines += ["command for the first setting:",
                  "  " + train_command(first, config=config, model_path=model_path, data=data, prompts=chosen)]
    else:
        lines.append("flags for the first setting: " + " ".join(setting_flags(first)) + " (--examples N or --data PATH "
                     "prints the whole command with steps per epoch)")
    return "\n".join(lines)


def vllm_lines(est: dict, e) -> list[str]:
    """The vLLM engine's part of the report (rollout.sampler = vllm): its share, its weights, its KV cache, the push."""
    gib = lambda x: f"{x / GiB:7.2f} GiB"  # noqa: E731
    phase = "asleep during the update (vllm_sleep)" if e.sleeps else "resident throughout (vllm_sleep false)"
    lines = [f"  vLLM engine        {gib(est['vllm_engine'])}  (rollout.vllm_gpu_memory_utilization "
             f"{e.memory_fraction:g}; {phase})",
             f"    its weights      {gib(est['vllm_weights'])}  ({e.dtype}, over vllm_tp {e.tp} GPU(s))",
             f"    its KV cache     {gib(est['vllm_kv_cache'])}  (~{est['vllm_sequences']:.0f} trajectories of "
             f"{est['trajectory_tokens']} tokens at once; more wait their turn)",
             f"  weight push        {gib(est['vllm_sync_group'])}  (the largest parameter group, gathered beside "
             "the engine's weights)"]
    if est["vllm_sequences"] < 1:
        lines.append("    the engine's share cannot hold one trajectory: raise rollout.vllm_gpu_memory_utilization "
                     "or rollout.vllm_tp")
    return lines
