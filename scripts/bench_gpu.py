"""GPU benchmark of the RL step on a released checkpoint's shape with random weights (no download): `make bench-gpu`.

    python scripts/bench_gpu.py [--arch qwen2_5_vl --shape 3b] [--steps 3 --warmup 1] [--out runs/bench_gpu.json]
    python scripts/bench_gpu.py --shape tiny --device cpu --prompts 1 --group 2 --new-tokens 4 --side 112   # smoke

The workload: 8 prompts × 8 samples × 256 new tokens per optimizer step, 448×448 noise images with a colour
question, KL β 0.04 (a frozen reference forward is part of the step), bf16 weights and AdamW state (model.dtype
bfloat16: the setting of the first GPU measurements, docs/PLATFORM.md "GPU"), the engine's default attention (auto:
varlen on a GPU, engine/forward/layouts.py's "prefix" layout where it applies) unless --attn says otherwise.
The model is `python -m models.tiny --arch ARCH --shape SHAPE --no-weights` built in memory on the GPU
(models.load.init_vlm): the real text and vision dimensions and padded vocabulary, the offline tokenizer. Every
sample runs to its full length (the rollout gets a family with no eos ids, as scripts/bench.py does). The step is
engine.algo.step.rl_step itself, timed by phase, once with gradient checkpointing and once without (--checkpointing).

Reported per mode (median over the timed steps): seconds per phase, sampled tokens per second in the rollout, the
update phase's model-FLOPs utilisation and peak GPU memory. MFU counts 6 × parameters × tokens for a forward and
backward: the decoder body (the LM's layers) over every sequence token, the LM head over the kept (sampled)
tokens only (the engine never computes the other logits), the vision tower over the patches it encodes; attention
scores are not counted. Where the update runs a row in the "prefix" layout (engine/forward/layouts.py: sdpa without
checkpointing), a group's shared prompt and its image run once, and in the other layouts each distinct image is
encoded once (engine/layouts.shares_images), so they are counted once: "upd MFU" is the work the GPU did ("upd
TFLOP/s" beside it is the same count). "wl MFU" (workload) counts every trajectory's tokens and patches whatever the
layout shares: the step's work as a per-trajectory forward would do it, the speed issue's definition. Both are set
against the GPU's dense bf16 peak from PEAK_BF16_TFLOPS (or --peak-tflops); recomputation under gradient
checkpointing is real work that MFU, by definition, does not count.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: engine/, models/ are not installed packages

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engine.config.settings import Config  # noqa: E402
from engine.config.parsing import build_config  # noqa: E402
from engine.setup.data_setup import load_data  # noqa: E402
from engine.setup.data_stream import DataStream  # noqa: E402
from engine.report.evaluate import prompts_for  # noqa: E402
from engine.forward.layouts import default_layout, distinct_images, shares_images  # noqa: E402
from engine.forward.packing import pack  # noqa: E402
from engine.algo.step import RLState, rl_step  # noqa: E402
from engine.trainer import _optimizer  # noqa: E402
from models.load import init_vlm  # noqa: E402
from models.tiny import build  # noqa: E402
from scripts.bench import PHASES, write_result  # noqa: E402  (phase names and JSON writer shared with the CPU one)

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, from the vendors' data sheets; matched against
# torch.cuda.get_device_name() (longest name first, so "H100" does not claim a "GH200").
PEAK_BF16_TFLOPS = {"GH200": 989, "H200": 989, "H100": 989, "H800": 989, "B200": 2250, "B100": 1750, "A100": 312,
                    "A800": 312, "L40S": 362, "L40": 181, "L4": 121, "A10G": 70, "A10": 125, "RTX 4090": 165}


def peak_flops(device_name: str) -> float | None:
    for name in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if name.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[name] * 1e12
    return None


def make_images_data(out: Path, side: int, n: int = 64) -> Path:
    """`n` seeded noise images of side × side pixels with a colour question, as generic JSONL."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(out / "data.jsonl", "w") as f:
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "question": "Which colour dominates the image?",
                                "answer": "red"}) + "\n")
    return out / "data.jsonl"


def set_checkpointing(model, on: bool) -> None:
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def build_state(arch: str, shape: str, data: Path, *, prompts: int, group: int, new_tokens: int,
                micro_batch_tokens: int, checkpointing: bool, work: Path, attn: str = "auto",
                device: str | None = None, kl_beta: float = 0.04, total_steps: int = 10, cuda_graph: bool = True):
    """(cfg, vlm, state, examples): the pieces engine/trainer.py's Run.rl builds, around an in-memory model."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device == "cuda" else "float32"  # bf16 on a CPU without bf16 units is 3x slower
    build(arch, work, shape=shape, weights=False)
    cfg = build_config(Config, overrides=[
        "--model.path", str(work), "--model.dtype", dtype, "--model.attn_implementation", attn,
        "--data.train", str(data), "--rollout.group_size", str(group), "--rollout.prompts_per_step", str(prompts),
        "--rollout.max_new_tokens", str(new_tokens), "--rollout.max_total_tokens", "16384",
        "--rollout.temperature", "1.0", "--algo.kl_beta", str(kl_beta), "--optim.micro_batch_tokens",
        str(micro_batch_tokens), "--rl.lr", "1e-6", "--rollout.cuda_graph", str(cuda_graph).lower()])
    vlm = init_vlm(work, dtype=dtype, device=device, attn_implementation=cfg.model.attn_implementation)
    vlm.family = replace(vlm.family, eos_ids=())  # every sample runs to new_tokens (see scripts/bench.py)
    set_checkpointing(vlm.model, checkpointing)
    optimizer, scheduler = _optimizer(vlm.model, cfg, cfg.rl.lr, total_steps)
    reference = copy.deepcopy(vlm.model).eval().requires_grad_(False)
    state = RLState(cfg=cfg, policy=vlm, reference=reference, optimizer=optimizer, scheduler=scheduler,
                    generator=torch.Generator(device=device).manual_seed(cfg.train.seed),
                    protocol=None)
    examples, _ = load_data(cfg, verbose=False)
    return cfg, vlm, state, examples


def param_counts(model) -> dict[str, int]:
    """Matmul parameters by where they run: decoder body (every token), LM head (kept tokens), vision tower."""
    named = dict(model.named_parameters(remove_duplicate=False))
    vision = sum(p.numel() for n, p in named.items() if ".visual." in f".{n}")
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    every = sum(p.numel() for p in model.parameters())  # tied weights once
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    body = every - vision - embed - (0 if tied else head)
    return {"all": every, "body": body, "head": head, "vision": vision, "embedding": embed}


def computed_work(model, trajs, micro_batch_tokens: int) -> tuple[int, int]:
    """(sequence tokens, vision patches) the update's forward runs over: the rows the step packs, each in the layout
    the objective picks for it; a "prefix" row runs each distinct prompt (and its images) once, and the other
    layouts encode each distinct image once where engine/layouts.shares_images says so."""
    tokens = patches = 0
    for row in pack(trajs, micro_batch_tokens):
        members = [trajs[i] for i in row.members]
        if default_layout(model, row) != "prefix":
            tokens += sum(row.lengths)
            if shares_images(model, row):  # each distinct image encoded once
                patches += int(row.images(distinct_images(row)[0])[1].prod(-1).sum())
            else:
                patches += sum(int(t.grid_thw.prod(-1).sum()) for t in members)
            continue
        owners = set(row.prefix_of)
        tokens += sum(row.prefix_lens[o] for o in owners) + sum(n - p for n, p in zip(row.lengths, row.prefix_lens))
        for slot, t in enumerate(members):
            first = 0 if slot in owners else row.prompt_image_counts[slot]  # a shared prompt's images: once
            patches += int(t.grid_thw[first:].prod(-1).sum())
    return tokens, patches


def timed_step(cfg, vlm, state, examples, stream, counts: dict, peak: float | None) -> dict:
    cuda = next(vlm.model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    wall = time.perf_counter()
    batch = [examples[i] for i in stream.take(cfg.rollout.prompts_per_step)]
    metrics, trajs, _, _ = rl_step(state, prompts_for(batch, vlm, cfg))
    if cuda:
        torch.cuda.synchronize()  # host sync: the step's last kernels finish inside the timed span
    seq, patches = computed_work(vlm.model, trajs, cfg.optim.micro_batch_tokens)
    sampled = sum(t.num_sampled for t in trajs)
    update_s = metrics.get("time/update", float("nan"))
    flops = 6 * (counts["body"] * seq + counts["head"] * sampled + counts["vision"] * patches)
    workload = 6 * (counts["body"] * sum(len(t.ids) for t in trajs) + counts["head"] * sampled
                    + counts["vision"] * sum(int(t.grid_thw.prod(-1).sum()) for t in trajs))
    return {"wall_s": time.perf_counter() - wall, **{p: metrics.get(f"time/{p}", 0.0) for p in PHASES},
            "sequence_tokens": seq, "sampled_tokens": sampled, "patches": patches,
            "rollout_tok_per_s": sampled / max(metrics.get("time/rollout", 0.0), 1e-9),
            "update_tflops": flops / update_s / 1e12, "update_mfu": flops / update_s / peak if peak else None,
            "workload_mfu": workload / update_s / peak if peak else None,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "loss": float(metrics.get("train/loss", float("nan")))}


def micro_batch_tokens(args, checkpointing: bool) -> int:
    """--micro-batch-tokens, or 8192: measured on an H200 for the 3B shape (docs/BENCHMARKS.md), the same update time
    as 16384 with gradient checkpointing at 42.8 instead of 45.8 GiB peak, and without checkpointing 103 GiB (twice
    that would not fit in 141)."""
    return args.micro_batch_tokens or 8192


def run_mode(args, cfg, vlm, state, examples, counts, peak, checkpointing: bool) -> dict:
    set_checkpointing(vlm.model, checkpointing)
    cfg.optim.micro_batch_tokens = micro_batch_tokens(args, checkpointing)  # state.cfg is this object
    stream = DataStream(len(examples), cfg.train.seed + 2)
    steps = []
    for i in range(args.warmup + args.steps):
        try:
            rec = timed_step(cfg, vlm, state, examples, stream, counts, peak)
        except torch.OutOfMemoryError as exc:  # report it and go on to the other mode
            state.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            print(f"  out of memory at micro_batch_tokens {cfg.optim.micro_batch_tokens}: {exc}".splitlines()[0])
            return {"gradient_checkpointing": checkpointing, "micro_batch_tokens": cfg.optim.micro_batch_tokens,
                    "out_of_memory": True, "median": None, "per_step": []}
        label = "warm-up" if i < args.warmup else "step"
        print(f"  {label} {i + 1}: {rec['wall_s']:.2f} s, update {rec['update']:.2f} s, peak "
              f"{rec['peak_gib'] or 0:.1f} GiB", flush=True)
        if i >= args.warmup:
            steps.append(rec)
    med = {k: statistics.median(s[k] for s in steps) for k in steps[0] if isinstance(steps[0][k], (int, float))}
    med["peak_gib"] = max(s["peak_gib"] for s in steps) if steps[0]["peak_gib"] is not None else None
    for key in ("update_mfu", "workload_mfu"):
        med[key] = statistics.median(s[key] for s in steps) if peak else None
    return {"gradient_checkpointing": checkpointing, "micro_batch_tokens": cfg.optim.micro_batch_tokens,
            "out_of_memory": False, "median": med, "per_step": steps}


def report(result: dict) -> None:
    print(f"\n{result['workload']}")
    print(f"{result['device']}, torch {result['torch']}, transformers {result['transformers']}; params "
          f"{result['params']['all'] / 1e9:.3f}B (vision {result['params']['vision'] / 1e9:.3f}B); dense bf16 peak "
          + (f"{result['peak_tflops']:.0f} TFLOP/s" if result["peak_tflops"] else "unknown (pass --peak-tflops)"))
    print(f"{'checkpointing':>13} {'micro-batch':>11} {'step s':>7} " + " ".join(f"{p:>9}" for p in PHASES)
          + f" {'rollout tok/s':>13} {'upd TFLOP/s':>11} {'upd MFU':>7} {'wl MFU':>7} {'peak GiB':>8}")
    for mode in result["modes"]:
        m = mode["median"]
        head = f"{'on' if mode['gradient_checkpointing'] else 'off':>13} {mode['micro_batch_tokens']:11d}"
        if m is None:
            print(f"{head} out of memory")
            continue
        mfu, wl = (f"{m[k] * 100:.1f}%" if m[k] is not None else "n/a" for k in ("update_mfu", "workload_mfu"))
        print(f"{head} {m['wall_s']:7.2f} "
              + " ".join(f"{m[p]:9.2f}" for p in PHASES)
              + f" {m['rollout_tok_per_s']:13.0f} {m['update_tflops']:11.1f} {mfu:>7} {wl:>7} "
              + (f"{m['peak_gib']:8.1f}" if m["peak_gib"] is not None else f"{'n/a':>8}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="qwen2_5_vl")
    parser.add_argument("--shape", default="3b", help="models/shapes.py's shape of --arch, or tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--side", type=int, default=448, help="image side in pixels")
    parser.add_argument("--kl-beta", type=float, default=0.04)
    parser.add_argument("--micro-batch-tokens", type=int, default=0,
                        help="token budget of a packed row (0: 8192)")
    parser.add_argument("--attn", default="auto",
                        help="model.attn_implementation: auto (the engine's default: varlen on a GPU), sdpa, varlen, ...")
    parser.add_argument("--checkpointing", choices=("both", "on", "off"), default="both")
    parser.add_argument("--cuda-graph", choices=("on", "off"), default="on",
                        help="rollout.cuda_graph: replay the sampler's decoding step as a CUDA graph (off: eager)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first, per mode")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the GPU's dense bf16 peak, if not in the table")
    parser.add_argument("--work", default="", help="folder for the model config and images (default: a temp dir)")
    parser.add_argument("--out", default="", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (run on a GPU machine, or --device cpu --shape tiny)")
    if min(args.steps, args.prompts, args.group, args.new_tokens) < 1 or args.warmup < 0:
        parser.error("--steps, --prompts, --group, --new-tokens must be >= 1 and --warmup >= 0")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_gpu-"))
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.checkpointing]
    start = time.perf_counter()
    data = make_images_data(work / "data", args.side)
    cfg, vlm, state, examples = build_state(
        args.arch, args.shape, data, prompts=args.prompts, group=args.group, new_tokens=args.new_tokens,
        micro_batch_tokens=micro_batch_tokens(args, modes[0]), checkpointing=modes[0], work=work / "model",
        attn=args.attn, cuda_graph=args.cuda_graph == "on",
        device=args.device, kl_beta=args.kl_beta, total_steps=len(modes) * (args.warmup + args.steps))
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 or (peak_flops(name) if args.device == "cuda" else None)
    counts = param_counts(vlm.model)
    print(f"setup {time.perf_counter() - start:.1f} s: {args.arch} {args.shape}, {counts['all'] / 1e9:.3f}B "
          f"parameters on {name}", flush=True)
    import transformers

    result = {"workload": f"{args.arch} {args.shape} (random init), {args.prompts} prompts x {args.group} samples x "
                          f"{args.new_tokens} new tokens, {args.side}x{args.side} images, KL beta {args.kl_beta}, "
                          f"{cfg.model.dtype} weights and AdamW, attention {args.attn} "
                          f"({vlm.model.config._attn_implementation}), "
                          f"decoding {'CUDA graph' if args.cuda_graph == 'on' and args.device == 'cuda' else 'eager'}",
              "device": name, "torch": torch.__version__, "transformers": transformers.__version__,
              "params": counts, "peak_tflops": peak / 1e12 if peak else None, "modes": [],
              # the workload as scripts/bench_peer_gpu.py rebuilds it for TRL
              "settings": {"arch": args.arch, "shape": args.shape, "prompts": args.prompts, "group": args.group,
                           "new_tokens": args.new_tokens, "side": args.side, "kl_beta": args.kl_beta,
                           "dtype": cfg.model.dtype}}
    for checkpointing in modes:
        print(f"gradient checkpointing {'on' if checkpointing else 'off'}:", flush=True)
        result["modes"].append(run_mode(args, cfg, vlm, state, examples, counts, peak, checkpointing))
    report(result)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
