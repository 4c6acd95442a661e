"""The peer on the GPU, side by side: TRL's GRPOTrainer on `make bench-gpu`'s workload, then both and their ratio.

    make bench-peer-gpu       # make bench-gpu, then this on the same card (its env: scripts/install_peer_gpu.sh)
    PEER_GPU_PY=.venv-peer-gpu/bin/python; $PEER_GPU_PY scripts/bench_peer_gpu.py --ours runs/bench_gpu.json
    .venv-peer/bin/python scripts/bench_peer_gpu.py --ours OURS.json --device cpu      # the CPU check (tiny shape)

The workload is read from ours (bench_gpu.py's JSON, its "settings"), never restated: the same model shape built the
same way (models.tiny --no-weights, random weights, saved once so that TRL's reference model loads the same ones),
the same noise images and question (bench_gpu.make_images_data), prompts x samples per optimizer step, exactly
`new_tokens` new tokens per sample (min_new_tokens, as ours runs with no eos), temperature 1, the same KL beta (a
frozen reference model), the same dtype (bf16 weights and AdamW state on a GPU), each gradient-checkpointing mode
ours ran. What TRL does its own way, on purpose: transformers' `generate` on the whole batch (no vLLM: ours used our
own sampler), sdpa attention, padded batches of `--peer-batch` sequences per forward (default: the most that fit
ours' micro_batch_tokens, so activations stay comparable) with gradient accumulation up to the whole batch.

Timed per optimizer step (CUDA synchronised at each boundary): the step (a TrainerCallback), TRL's generation
(`_generate_single_turn`), its reference and old-policy log-prob forwards (`_get_per_token_logps_and_entropies` on
the reference model / the policy while completions are scored), the scoring as a whole
(`_generate_and_score_completions`: generation, rewards, log-probs), and the update = step - scoring (forward,
backward and optimizer step of every micro-batch). Printed per mode: ours and TRL's median seconds per phase, their
ratio, sampled tokens/s and peak GPU memory. The card must be the one ours ran on: a ratio across cards is refused.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: engine/, models/ are not installed packages
for var, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                   ("WANDB_DISABLED", "true")):
    os.environ.setdefault(var, value)

import torch  # noqa: E402

SETTINGS = ("arch", "shape", "prompts", "group", "new_tokens", "side", "kl_beta")  # the workload, read from ours
PHASES = (("step", "wall_s", "step_s"), ("rollout / generate", "rollout", "generate_s"),
          ("ref_logp / ref forward", "ref_logp", "ref_s"), ("update", "update", "update_s"))


def read_ours(path: Path, device: str) -> dict:
    """bench_gpu.py's result, checked to hold what the peer needs and to come from this card."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist: run `make bench-gpu` (scripts/bench_gpu.py --out {path}) first")
    ours = json.loads(path.read_text())
    missing = [k for k in SETTINGS if k not in ours.get("settings", {})]
    if missing:
        raise ValueError(f"{path} has no settings {missing}: written by an older bench_gpu.py, run it again")
    here = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    if ours["device"] != here:
        raise ValueError(f"{path} was measured on {ours['device']!r}, this run is on {here!r}: a ratio across cards "
                         "means nothing; run `make bench-gpu` here first")
    return ours


def peer_batch(ours_mode: dict, trajectory_tokens: int, sequences: int, requested: int = 0) -> int:
    """Sequences per TRL forward: `requested`, or the most that fit ours' micro-batch token budget, as a divisor
    of the step's sequences (TRL splits the batch into equal micro-batches)."""
    if requested:
        if sequences % requested:
            raise ValueError(f"--peer-batch {requested} does not divide the {sequences} sequences of a step")
        return requested
    fit = max(1, ours_mode["micro_batch_tokens"] // max(trajectory_tokens, 1))
    return max(b for b in range(1, sequences + 1) if sequences % b == 0 and b <= fit)


class PhaseClock:
    """Seconds spent in wrapped methods, per optimizer step; CUDA synchronised around each call."""

    def __init__(self, cuda: bool):
        self.cuda, self.now, self.steps = cuda, {}, []

    def sync(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()  # host sync: the phase's kernels end inside its span
        return time.perf_counter()

    def wrap(self, fn, key_of):
        def timed(*args, **kwargs):
            t0 = self.sync()
            out = fn(*args, **kwargs)
            key = key_of(args)
            self.now[key] = self.now.get(key, 0.0) + self.sync() - t0
            return out
        return timed


def zero_reward(completions, **_) -> list[float]:
    """The reward costs nothing on either side (ours scores a colour answer in microseconds): a constant."""
    return [0.0] * len(completions)


def trl_trainer(model, processor, dataset, *, settings: dict, batch: int, checkpointing: bool, steps: int,
                cuda: bool, clock: PhaseClock, out_dir: Path):
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    sequences = settings["prompts"] * settings["group"]
    config = GRPOConfig(
        output_dir=str(out_dir), use_cpu=not cuda, bf16=cuda, fp16=False, gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, per_device_train_batch_size=batch,
        gradient_accumulation_steps=sequences // batch, num_generations=settings["group"],
        max_completion_length=settings["new_tokens"], generation_kwargs={"min_new_tokens": settings["new_tokens"]},
        temperature=1.0, beta=settings["kl_beta"], learning_rate=1e-6, loss_type="grpo", use_vllm=False,
        max_steps=steps, logging_steps=1, save_strategy="no", report_to="none", seed=0, dataloader_num_workers=0,
        disable_tqdm=True, log_completions=False)

    class Timed(GRPOTrainer):
        pass

    def counted(self, *args, **kwargs):
        out = GRPOTrainer._generate_single_turn(self, *args, **kwargs)
        clock.now["sampled"] = clock.now.get("sampled", 0) + sum(len(c) for c in out[0])  # completion ids
        return out

    Timed._generate_single_turn = clock.wrap(counted, lambda a: "generate_s")
    Timed._generate_and_score_completions = clock.wrap(GRPOTrainer._generate_and_score_completions,
                                                       lambda a: "score_s")
    Timed._get_per_token_logps_and_entropies = clock.wrap(
        GRPOTrainer._get_per_token_logps_and_entropies,
        lambda a: "ref_s" if a[1] is a[0].ref_model else ("old_s" if not torch.is_grad_enabled() else "train_fwd_s"))

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            clock.now = {"t0": clock.sync()}

        def on_step_end(self, *_, **__):
            rec = {k: v for k, v in clock.now.items() if k != "t0"}
            rec["step_s"] = clock.sync() - clock.now["t0"]
            rec["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            clock.steps.append(rec)

    trainer = Timed(model=model, reward_funcs=[zero_reward], args=config,
                    train_dataset=dataset, processing_class=processor, callbacks=[StepClock()])
    trainer.remove_callback(PrinterCallback)
    return trainer


def peer_mode(model, processor, dataset, settings: dict, ours_mode: dict, args, trajectory_tokens: int,
              work: Path) -> dict:
    cuda = args.device == "cuda"
    sequences = settings["prompts"] * settings["group"]
    batch = peer_batch(ours_mode, trajectory_tokens, sequences, args.peer_batch)
    clock = PhaseClock(cuda)
    if not ours_mode["gradient_checkpointing"]:
        model.gradient_checkpointing_disable()  # a previous mode's trainer turned it on; TRL never turns it off
    trainer = trl_trainer(model, processor, dataset, settings=settings, batch=batch,
                          checkpointing=ours_mode["gradient_checkpointing"], steps=args.warmup + args.steps,
                          cuda=cuda, clock=clock, out_dir=work / "trl")
    trainer.train()
    del trainer
    timed = clock.steps[args.warmup:]
    for rec in timed:
        rec["update_s"] = rec["step_s"] - rec.get("score_s", 0.0)
    med = {k: statistics.median(r.get(k, 0.0) for r in timed)
           for k in ("step_s", "generate_s", "ref_s", "old_s", "score_s", "update_s")}
    med["peak_gib"] = max(r["peak_gib"] for r in timed) if cuda else None
    med["sampled_tokens"] = statistics.median(r["sampled"] for r in timed)
    med["generate_tok_per_s"] = sequences * settings["new_tokens"] / med["generate_s"]
    return {"gradient_checkpointing": ours_mode["gradient_checkpointing"], "batch": batch,
            "accumulation": sequences // batch, "median": med, "per_step": timed}


def compare(ours: dict, peer: dict) -> None:
    print(f"\nours: {ours['workload']}\npeer: TRL {peer['versions']['trl']} GRPOTrainer, the same workload, "
          f"{peer['attention']} attention, batches of {peer['modes'][0]['batch']} sequences; {peer['device']}")
    for mine, theirs in zip(ours["modes"], peer["modes"]):
        if mine["median"] is None:
            print(f"checkpointing {'on' if mine['gradient_checkpointing'] else 'off'}: ours ran out of memory")
            continue
        m, t = mine["median"], theirs["median"]
        print(f"\ngradient checkpointing {'on' if mine['gradient_checkpointing'] else 'off'}"
              f"{'':8s}{'ours s':>9s}{'TRL s':>9s}{'ours/TRL':>10s}")
        for label, ours_key, peer_key in PHASES:
            print(f"  {label:28s}{m[ours_key]:9.2f}{t[peer_key]:9.2f}{m[ours_key] / t[peer_key]:10.2f}")
        print(f"  {'sampled tok/s':28s}{m['rollout_tok_per_s']:9.0f}{t['generate_tok_per_s']:9.0f}"
              f"{m['rollout_tok_per_s'] / t['generate_tok_per_s']:10.2f}")
        if m["sampled_tokens"] != t["sampled_tokens"]:
            print(f"  NOT THE SAME WORK: ours sampled {m['sampled_tokens']} tokens a step, TRL {t['sampled_tokens']}")
        if m["peak_gib"] is not None:
            print(f"  {'peak GiB':28s}{m['peak_gib']:9.1f}{t['peak_gib']:9.1f}{m['peak_gib'] / t['peak_gib']:10.2f}")


def build_peer_model(settings: dict, device: str, work: Path):
    """The bench's model shape with random weights, saved once (TRL loads its reference model from the folder),
    its processor, and the bench's images as a TRL dataset."""
    from datasets import Dataset
    from PIL import Image

    from transformers import AutoConfig, AutoModelForImageTextToText

    from models.tiny import build
    from scripts.bench_gpu import make_images_data

    folder = build(settings["arch"], work / "model", shape=settings["shape"], weights=False)
    torch.manual_seed(0)
    with torch.device(device):  # built where it runs (a 3B model in seconds on a GPU); stock sdpa attention
        model = AutoModelForImageTextToText.from_config(
            AutoConfig.from_pretrained(folder), dtype=torch.bfloat16 if device == "cuda" else torch.float32,
            attn_implementation="sdpa")
    model.save_pretrained(folder, safe_serialization=True)
    model.config._name_or_path = str(folder)  # where TRL builds its reference model from
    data = make_images_data(work / "data", settings["side"])
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}],
                                  "image": Image.open(data.parent / r["image"]).convert("RGB")} for r in rows])
    processor = processor_for(folder)
    return model, processor, dataset, prompt_tokens(processor, dataset[0]) + settings["new_tokens"]


def prompt_tokens(processor, row: dict) -> int:
    """Tokens of one prompt as TRL builds it: the chat template around the question, the image expanded."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["prompt"][0]["content"]}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(processor(text=[text], images=[row["image"]], return_tensors="pt")["input_ids"][0])


def processor_for(folder: Path):
    """The stock processor where torchvision imports (a GPU machine); elsewhere bench_peer's image-only one."""
    try:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(folder)
    except Exception:  # no torchvision beside CPU torch: every video processor needs it (docs/PLATFORM.md)
        from scripts.bench_peer import image_only_processor

        return image_only_processor(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", default=str(ROOT / "runs" / "bench_gpu.json"), help="bench_gpu.py's --out")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first, per mode")
    parser.add_argument("--peer-batch", type=int, default=0,
                        help="sequences per TRL forward (0: the most that fit ours' micro_batch_tokens)")
    parser.add_argument("--work", default="", help="folder for the model and images (default: a temp dir)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_peer_gpu.json"))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    try:
        ours = read_ours(Path(args.ours), args.device)
    except ValueError as exc:
        parser.error(str(exc))
    import transformers
    import trl

    settings = ours["settings"]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_peer_gpu-"))
    model, processor, dataset, trajectory_tokens = build_peer_model(settings, args.device, work)
    peer = {"device": ours["device"], "attention": model.config._attn_implementation,
            "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
            "modes": []}
    for ours_mode in ours["modes"]:
        print(f"TRL, gradient checkpointing {'on' if ours_mode['gradient_checkpointing'] else 'off'}:", flush=True)
        peer["modes"].append(peer_mode(model, processor, dataset, settings, ours_mode, args, trajectory_tokens, work))
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(peer, indent=2))
    compare(ours, peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
