"""The peer, side by side: TRL's GRPOTrainer on `make bench`'s workload, then both reports and their ratio.

    make bench && make bench-peer          # .venv-peer/bin/python scripts/bench_peer.py --ours runs/bench.json

Identical work per optimizer step: the same tiny Qwen2.5-VL folder (models.tiny), the same `colors` data
(scripts/bench.py builds it), 2 prompts × 8 completions × exactly 32 new tokens (min_new_tokens = 32, as ours
runs with no eos), temperature 1, β = 0.04 (a frozen reference model), fp32, CPU, one torch thread, no gradient
checkpointing, `loss_type="grpo"`, no vLLM. Times each optimizer step (wall and process CPU seconds) with a
TrainerCallback and TRL's generation by wrapping `_generate_single_turn`. Runs under .venv-peer only
(scripts/install_peer.sh): the engine never imports trl. No peer figure is stored anywhere: it is measured here,
minutes after ours, and the ratio printed is of the two runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, PrinterCallback, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from models.tiny import tiny_model_dir  # noqa: E402
from scripts.bench import PROMPTS, GROUP, NEW_TOKENS, KL_BETA, make_data  # noqa: E402


def image_only_processor(path: Path):
    """Qwen2_5_VLProcessor without its video half: every video processor needs torchvision, which has no CPU
    build to sit beside CPU torch (docs/PLATFORM.md). Image handling and chat template are the stock class's."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    tok = AutoTokenizer.from_pretrained(path)
    return ImageOnlyProcessor(AutoImageProcessor.from_pretrained(path), tok, chat_template=tok.chat_template)


def dataset(data_file: Path) -> Dataset:
    rows = [json.loads(line) for line in data_file.read_text().splitlines() if line.strip()]
    return Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}],
                               "image": Image.open(data_file.parent / r["image"]).convert("RGB"),
                               "answer": r["answer"]} for r in rows])


def _text(c) -> str:
    return "".join(m["content"] for m in c if isinstance(m.get("content"), str)) if isinstance(c, list) else c


def accuracy(completions, answer, **_):
    return [float(bool(re.search(rf"\b{re.escape(a)}\b", _text(c), re.I))) for c, a in zip(completions, answer)]


def answer_format(completions, **_):
    return [0.2 * bool(re.fullmatch(r"\s*<answer>.*</answer>\s*", _text(c), re.S)) for c in completions]


class StepTimer(TrainerCallback):
    def __init__(self):
        self.wall, self.cpu = [], []

    def on_step_begin(self, args, state, control, **kw):
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kw):
        self.wall.append(time.perf_counter() - self.t0)
        self.cpu.append(time.process_time() - self.c0)
        print(f"peer step {state.global_step}: {self.wall[-1]:.3f} s", flush=True)


class TimedGRPOTrainer(GRPOTrainer):
    """Records the wall time and sampled tokens of every generation call."""

    generations: list[tuple[float, int]] = []

    def _generate_single_turn(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = super()._generate_single_turn(*args, **kwargs)
        self.generations.append((time.perf_counter() - t0, sum(len(c) for c in out[0])))
        return out


def run_peer(steps: int, warmup: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    path = tiny_model_dir("qwen2_5_vl")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    cfg = GRPOConfig(
        output_dir=str(ROOT / "runs" / "bench-peer"), use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False,  # TRL's default is True; ours runs without
        per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1, num_generations=GROUP,
        max_completion_length=NEW_TOKENS, generation_kwargs={"min_new_tokens": NEW_TOKENS},  # as ours: no eos
        temperature=1.0, beta=KL_BETA, learning_rate=1e-5, loss_type="grpo", use_vllm=False,
        max_steps=warmup + steps, logging_steps=1, save_strategy="no", report_to="none", seed=0,
        dataloader_num_workers=0, disable_tqdm=True, log_completions=False)
    timer = StepTimer()
    trainer = TimedGRPOTrainer(model=model, reward_funcs=[accuracy, answer_format], args=cfg,
                               train_dataset=dataset(make_data()), processing_class=image_only_processor(path),
                               callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # its per-step log dicts would bury the report
    trainer.train()
    gens = TimedGRPOTrainer.generations[warmup:]
    return {"s_per_step_median": statistics.median(timer.wall[warmup:]), "s_per_step_min": min(timer.wall[warmup:]),
            "cpu_s_per_step_median": statistics.median(timer.cpu[warmup:]),
            "generate_s_median": statistics.median(g[0] for g in gens),
            "sampled_tokens_per_step": statistics.median(g[1] for g in gens),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "steps": steps,
            "per_step_s": [round(w, 4) for w in timer.wall], "versions": {
                "trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}}


def compare(ours: dict, peer: dict) -> None:
    rows = [("s/step (median)", "s_per_step_median"), ("s/step (min)", "s_per_step_min"),
            ("CPU s/step (median)", "cpu_s_per_step_median"), ("peak RSS MB", "peak_rss_mb")]
    print(f"\n{'':22s}{'ours':>10s}{'TRL ' + peer['versions']['trl']:>12s}{'ours/TRL':>10s}")
    for label, key in rows:
        print(f"{label:22s}{ours[key]:10.3f}{peer[key]:12.3f}{ours[key] / peer[key]:10.2f}")
    print(f"{'rollout / generate s':22s}{ours['phase_s_median']['rollout']:10.3f}{peer['generate_s_median']:12.3f}"
          f"{ours['phase_s_median']['rollout'] / peer['generate_s_median']:10.2f}")
    print(f"sampled tokens/step: ours {ours['sampled_tokens_per_step']}, TRL {peer['sampled_tokens_per_step']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", default=str(ROOT / "runs" / "bench.json"), help="`make bench`'s JSON (its --out)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-peer.json"), help="write the peer's results here")
    args = parser.parse_args(argv)
    ours_path = Path(args.ours)
    if not ours_path.exists():
        parser.error(f"{ours_path} does not exist: run `make bench` first (it writes it)")
    peer = run_peer(args.steps, args.warmup, args.threads)
    Path(args.out).write_text(json.dumps(peer, indent=2))
    ours = json.loads(ours_path.read_text())
    age = time.time() - ours_path.stat().st_mtime
    print(f"\npeer: TRL {trl.__version__} GRPOTrainer, {args.steps} timed steps; ours: {ours_path} "
          f"(written {age / 60:.0f} min before the peer finished)")
    compare(ours, peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
