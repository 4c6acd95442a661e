"""Memory planner: the peak GPU memory of an RL run, split by what holds it, and the settings that fit.

    python -m engine.setup.memory --config configs/demo.toml --model.path /models/Qwen2.5-VL-3B-Instruct \
        --gpu-gib 80 --gpus 1
    python -m engine.setup.memory --config configs/demo.toml --shape 3b --model.dtype bfloat16   # a released shape
    python -m engine.setup.memory --config configs/seed001.toml --shape 7b --gpu-gib 32 --examples 40000   # + command

Any config key can be set as in train.py (`--optim.micro_batch_tokens 8192`, `--lora.r 16`). The model's
dimensions come from its config.json (model.path, the released shape `--shape` of model.tiny_arch as
models/shapes.py sizes it, or the tiny model); parameters are counted exactly on the meta
device (no weights are read). Per GPU, the estimate is

    peak = weights + optimizer state + reference
           + max(gradients + activations(micro_batch_tokens), rollout KV cache + gathered parameters)

because gradients are freed (set to None) between steps, while the rollout runs. Parameters, gradients, AdamW state
and the reference are in model.dtype (the fp32 master copy under mixed precision); activations, the log-prob head and
the KV cache in the compute dtype (bf16 under mixed precision); a sharded model is gathered whole in the compute
dtype for the rollout (`estimate`). With `--rollout.sampler vllm` the engine's share of the GPU
(rollout.vllm_gpu_memory_utilization: its weights copy, over rollout.vllm_tp GPUs, and its KV cache) takes the
rollout's place, and sits beside the update too unless it sleeps then (`vllm_engine`, `vllm_peak`). Under N
processes FSDP2 shards
weights, gradients, optimizer state and reference N ways; activations are per process; each process samples
prompts_per_step / N prompts. Activation bytes per token are counted tensor by tensor for one decoder layer (and
one vision block per patch), bf16, as the backward pass keeps them (`layer_bytes`): with gradient checkpointing only
each layer's input stays, plus one layer being recomputed. The log-prob head holds, per response token, the
bf16 logits, their fp32 copy and the entropy's softmax and product (LOGIT_BYTES per vocabulary row), for at most
model.logprob_chunk_tokens tokens at a time (0: every response token of the micro-batch at once).

A config that train.py would refuse on these GPUs (its settings, a batch that does not split over --gpus, vLLM's
tensor parallelism or memory settings) prints `refused: <train.py's own message>` and exits 2, from the same
checks (engine/setup/run_setup.py check_launch). --model.path may name a run or checkpoint folder, as in train.py.

Then the settings that fit with 10 % headroom and, with --examples N or --data PATH, the train.py / torchrun command
for the first of them with the steps per epoch (engine/setup/memory_plan.py).

Checked against measured peaks (tests/test_memory.py; H200, Qwen2.5-VL-3B dims with the offline tokenizer's
1,010-row vocabulary, i.e. 3.45B parameters; bf16 weights and AdamW state, KL reference, 8 x 8 samples of 256 new
tokens on 448 px images, 35 text tokens per prompt): 41 GiB measured with checkpointing at micro_batch_tokens
16384 (estimated 41.0), 101 GiB without at 8192 (estimated 106).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGIT_BYTES = 2 + 4 + 4 + 4  # per kept token and vocabulary row: bf16 logits, fp32 copy, softmax, p * logits
MICRO_BATCH_CHOICES = (2048, 4096, 8192, 16384, 32768, 65536)


@dataclass
class Dims:
    """What memory depends on, read from a model folder's config.json (transformers 4.x and 5.x layouts)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    vision_hidden: int
    vision_depth: int
    vision_intermediate: int
    patch: int  # pixels per patch side
    merge: int  # patches per visual token side
    params: int  # all parameters (tied embeddings once)
    vision_params: int
    lora_params_per_rank: dict  # lora.target -> parameters per unit of rank


def read_dims(model_dir: str | Path) -> Dims:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{path} not found: point --model.path at a Hugging Face VLM folder")
    raw = json.loads(path.read_text())
    text, vision = raw.get("text_config") or raw, raw.get("vision_config") or {}
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    params, vision_params, lora = count_params(model_dir)
    return Dims(hidden=hidden, layers=text["num_hidden_layers"], heads=heads,
                kv_heads=text.get("num_key_value_heads", heads), head_dim=text.get("head_dim") or hidden // heads,
                intermediate=text["intermediate_size"], vocab=text["vocab_size"],
                vision_hidden=vision.get("hidden_size", vision.get("embed_dim", 0)),
                vision_depth=vision.get("depth", 0),
                vision_intermediate=vision.get("intermediate_size", 4 * vision.get("embed_dim", 0)),
                patch=vision.get("patch_size", 14), merge=vision.get("spatial_merge_size", 2),
                params=params, vision_params=vision_params, lora_params_per_rank=lora)


def shape_dims(arch: str, shape: str) -> Dims:
    """The dimensions of a released checkpoint's shape (models/shapes.py), from a weightless folder in a temp dir."""
    import tempfile

    from models.tiny import build

    with tempfile.TemporaryDirectory() as tmp:
        return read_dims(build(arch, Path(tmp) / "model", shape=shape, weights=False))


def count_params(model_dir: str | Path) -> tuple[int, int, dict]:
    """(all parameters, vision parameters, LoRA parameters per rank for each lora.target), counted on the meta
    device: the model is built from its config without allocating a single weight."""
    import re

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from engine.runtime.lora import TARGETS, target_regex

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # shared (tied) tensors are yielded once
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    lora = {}
    for target in TARGETS:
        pattern = re.compile(target_regex(target))
        lora[target] = sum(m.in_features + m.out_features for n, m in model.named_modules()
                           if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n))
    return params, vision, lora


@dataclass
class Workload:
    """The run's shape: per trajectory, image patches, prompt and response tokens; sequences sampled per process."""

    image_px: int = 448  # side of a square image (after the processor's resize)
    prompt_text_tokens: int = 64  # system + question text
    new_tokens: int = 256  # rollout.max_new_tokens: responses counted at full length (the worst case)
    tool_images: int = 0  # images a tool injects per trajectory (rollout.max_tool_calls with a tool protocol)
    sequences: int = 32  # prompts_per_step x group_size, over all processes


@dataclass
class VllmEngine:
    """rollout.sampler = vllm: the vLLM engine beside the trainer on each GPU (engine/rollout/vllm_sampler.py)."""

    memory_fraction: float  # rollout.vllm_gpu_memory_utilization: the share of the GPU vLLM takes
    gpu_bytes: float
    tp: int = 1  # rollout.vllm_tp: GPUs one engine is sharded over
    dtype: str = "bfloat16"  # what it samples in (bf16 under train.mixed_precision)
    sleeps: bool = True  # rollout.vllm_sleep: its memory is free during the reference forward and the update
    master_fp32: bool = False  # train.mixed_precision: the trainer's weights (and so the pushed groups) are fp32


@dataclass
class Setting:
    micro_batch_tokens: int
    checkpointing: bool
    lora_rank: int = 0
    lora_target: str = "language"
    dtype: str = "bfloat16"
    mixed_precision: bool = False  # fp32 master weights, gradients and AdamW state, bf16 compute
    kl_reference: bool = True
    gpus: int = 1
    logprob_chunk_tokens: int = 0  # model.logprob_chunk_tokens (0: no chunking)
    vllm: VllmEngine | None = None  # rollout.sampler = vllm (None: the native sampler)


def layer_bytes(d: Dims) -> tuple[float, float]:
    """Bytes one decoder layer keeps per token for its backward pass, and one vision block per patch (bf16).
    Per layer: two RMSNorms (input, fp32 copy, fp32 normalised, output: 2+4+4+2 per element), q and its rotary
    copy, k and v and their rotary copies, the attention output; the MLP's gate, up, silu(gate) and product."""
    norms = 2 * 12 * d.hidden
    attn = 2 * (2 * d.hidden + 2 * 2 * d.kv_heads * d.head_dim + d.hidden)
    mlp = 2 * 4 * d.intermediate
    v_norms, v_attn, v_mlp = 2 * 12 * d.vision_hidden, 2 * 6 * d.vision_hidden, 2 * 4 * d.vision_intermediate
    return norms + attn + mlp, v_norms + v_attn + v_mlp


def estimate(d: Dims, w: Workload, s: Setting) -> dict[str, float]:
    """Peak memory per GPU in bytes, by part. `activations_per_token` is the micro-batch's bytes per token.

    Dtypes: parameters, their gradients and AdamW state are stored in model.dtype (`s.dtype`; fp32 under mixed
    precision, where they are the master copy), and so is the KL reference (loaded like the policy, sharded with
    it). Activations, the log-prob head and the rollout's KV cache are in the compute dtype: bf16 under mixed
    precision, else model.dtype. A sharded model (mixed precision, or more than one GPU) is gathered whole in the
    compute dtype for the rollout (engine.runtime.distributed.unsharded): one more copy of the parameters then."""
    storage = DTYPE_BYTES[s.dtype]
    compute = DTYPE_BYTES["bfloat16"] if s.mixed_precision else storage
    trainable = s.lora_rank * d.lora_params_per_rank[s.lora_target] if s.lora_rank else d.params
    shard = 1 / s.gpus
    out = {
        # LoRA: the frozen base and the adapters, both in model.dtype
        "weights": (d.params + (trainable if s.lora_rank else 0)) * storage * shard,
        "gradients": trainable * storage * shard,
        "optimizer": trainable * 2 * storage * shard,  # AdamW: exp_avg and exp_avg_sq in the parameters' dtype
        "reference": d.params * storage * shard if s.kl_reference and not s.lora_rank else 0.0,
    }
    side = w.image_px // d.patch
    patches, image_tokens = side * side, side * side // (d.merge * d.merge)
    seq = (1 + w.tool_images) * image_tokens + w.prompt_text_tokens + w.new_tokens
    patches_per_token, kept_per_token = (1 + w.tool_images) * patches / seq, w.new_tokens / seq
    text_b, vision_b = layer_bytes(d)
    scale = compute / 2  # layer_bytes counts bf16 tensors
    if s.checkpointing:  # each layer's input kept, one layer recomputed at a time
        per_token = scale * (d.layers * 2 * d.hidden + text_b
                             + patches_per_token * (d.vision_depth * 2 * d.vision_hidden + vision_b))
    else:
        per_token = scale * (d.layers * text_b + patches_per_token * d.vision_depth * vision_b)
    kept = kept_per_token * s.micro_batch_tokens  # response tokens in one micro-batch
    out["logits"] = min(kept, s.logprob_chunk_tokens or kept) * d.vocab * LOGIT_BYTES
    out["activations_per_token"] = per_token
    out["activations"] = per_token * s.micro_batch_tokens + out["logits"]
    sequences = math.ceil(w.sequences / s.gpus)
    out["rollout_kv_cache"] = sequences * seq * 2 * d.layers * d.kv_heads * d.head_dim * compute
    out["rollout_gathered"] = d.params * compute if s.mixed_precision or s.gpus > 1 else 0.0
    out["peak"] = (out["weights"] + out["optimizer"] + out["reference"]
                   + max(out["gradients"] + out["activations"], out["rollout_kv_cache"] + out["rollout_gathered"]))
    out["trajectory_tokens"] = seq
    if s.vllm is not None:  # the vLLM engine samples instead of our sampler: its memory replaces that KV cache
        out.update(vllm_engine(d, seq, s.vllm))
        out["peak"] = vllm_peak(out, s.vllm)
    return out


def vllm_engine(d: Dims, trajectory_tokens: int, e: VllmEngine) -> dict[str, float]:
    """One GPU's vLLM engine: the share of the GPU it takes (vllm_engine = gpu_memory_utilization x GPU), split into
    its copy of the weights (sharded over vllm_tp GPUs) and its KV cache (the rest; vLLM's own activation
    workspace comes out of it too and is not counted), and how many whole trajectories that KV cache holds at once
    (vllm_sequences: more are queued, not refused; 0 when the weights alone exceed the share)."""
    dtype = DTYPE_BYTES[e.dtype]
    total = e.memory_fraction * e.gpu_bytes
    weights = d.params * dtype / e.tp
    kv_per_token = 2 * d.layers * max(d.kv_heads // e.tp, 1) * d.head_dim * dtype  # K and V; heads split over TP
    kv = max(total - weights, 0.0)
    # The weight push gathers one parameter group at a time (engine/rollout/weight_sync.py): the largest is a decoder
    # layer or the embeddings with the LM head (counted untied: an upper bound), in the master dtype (fp32 under
    # mixed precision, which the engine's dtype then is not).
    embeddings = 2 * d.vocab * d.hidden
    layer = (d.params - d.vision_params - embeddings) / d.layers
    master = 4 if e.master_fp32 else dtype
    return {"vllm_engine": total, "vllm_weights": weights, "vllm_kv_cache": kv,
            "vllm_sequences": kv // (kv_per_token * trajectory_tokens),
            "vllm_sync_group": max(embeddings, layer) * master}


def vllm_peak(out: dict[str, float], e: VllmEngine) -> float:
    """The peak with the engine: the training state, plus the largest of the update (gradients, activations, and
    the engine too when it does not sleep), the weight push (the engine's weights awake, its KV cache too without
    sleep, beside one gathered group) and the rollout (the engine awake; gradients are freed after each step)."""
    during_update = out["gradients"] + out["activations"] + (0.0 if e.sleeps else out["vllm_engine"])
    during_push = (out["vllm_weights"] if e.sleeps else out["vllm_engine"]) + out["vllm_sync_group"]
    return (out["weights"] + out["optimizer"] + out["reference"]
            + max(during_update, during_push, out["vllm_engine"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Any config key can be set as --section.key VALUE (train.py --help-config).")
    parser.add_argument("--config", help="TOML preset (configs/*.toml)")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU in GiB (default 80)")
    parser.add_argument("--gpus", type=int, default=1, help="number of GPUs (FSDP2 processes)")
    parser.add_argument("--image-px", type=int, default=448, help="image side after resizing (default 448)")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="text tokens per prompt (system + question)")
    parser.add_argument("--shape", default="", help="a released checkpoint's dimensions for model.tiny_arch "
                        "(models/shapes.py, e.g. 3b for qwen2_5_vl) instead of a model folder")
    parser.add_argument("--examples", type=int, default=0, help="training examples: prints the steps per epoch and "
                        "the whole train.py / torchrun command for the first setting that fits")
    parser.add_argument("--data", default="", help="training data to count the examples of (instead of --examples; "
                        "its data.eval_fraction held-out part is left out), named in the command")
    args, overrides = parser.parse_known_args(argv)
    from engine.setup.layers import layered_config
    from engine.setup.memory_plan import report
    from engine.setup.run_setup import check_launch, with_start_model
    from models.tiny import tiny_model_dir

    if args.gpus < 1 or args.gpu_gib <= 0 or args.examples < 0:
        print("error: --gpus must be >= 1, --gpu-gib > 0 and --examples >= 0", file=sys.stderr)
        return 2
    try:  # what train.py would refuse, refused with its message: parsing's checks, then the launch's
        cfg = layered_config(args.config, overrides)
        if cfg.model.path and Path(cfg.model.path).is_dir():  # one planned from elsewhere may be absent here
            cfg = with_start_model(cfg, verbose=False)  # a run or checkpoint folder: the model train.py starts from
        check_launch(cfg, args.gpus, cuda=True, here=False)
    except ValueError as exc:
        print(f"refused: {exc}")
        return 2
    try:
        d = shape_dims(cfg.model.tiny_arch, args.shape) if args.shape else \
            read_dims(cfg.model.path or tiny_model_dir(cfg.model.tiny_arch, seed=cfg.train.seed))
        examples = count_examples(args.data, cfg) if args.data else args.examples
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    r = cfg.rollout
    w = Workload(image_px=args.image_px, prompt_text_tokens=args.prompt_tokens, new_tokens=r.max_new_tokens,
                 tool_images=r.max_tool_calls if r.protocol is not None else 0,
                 sequences=r.prompts_per_step * r.group_size)
    s = Setting(micro_batch_tokens=cfg.optim.micro_batch_tokens, checkpointing=cfg.model.gradient_checkpointing,
                lora_rank=cfg.lora.r, lora_target=cfg.lora.target, dtype=cfg.model.dtype,
                mixed_precision=cfg.train.mixed_precision == "bf16", kl_reference=cfg.algo.kl_beta > 0, gpus=args.gpus,
                logprob_chunk_tokens=cfg.model.logprob_chunk_tokens,
                vllm=VllmEngine(memory_fraction=r.vllm_gpu_memory_utilization, gpu_bytes=args.gpu_gib * GiB,
                                tp=r.vllm_tp, sleeps=r.vllm_sleep is not False,
                                master_fp32=cfg.train.mixed_precision == "bf16",
                                dtype="bfloat16" if cfg.train.mixed_precision == "bf16" else cfg.model.dtype)
                if r.sampler == "vllm" else None)
    print(report(d, w, s, args.gpu_gib, r.group_size, config=args.config, model_path=cfg.model.path, data=args.data,
                 examples=examples, sft_batch=cfg.sft.batch_size, prompts=r.prompts_per_step))
    return 0


def count_examples(path: str, cfg) -> int:
    """The training examples of `path` as train.py would read them (its train split, less data.eval_fraction's
    held-out part); images are not decoded."""
    from data import load_examples
    from data.holdout import split_by_content

    result = load_examples(path, image_root=cfg.data.image_root or None, split=cfg.data.train_split or None,
                           skip_bad=True)
    return len(split_by_content(result.examples, cfg.data.eval_fraction)[0])


if __name__ == "__main__":
    sys.exit(main())
