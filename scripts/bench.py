"""GRPO step benchmark on the tiny Qwen2.5-VL: the peer's workload (docs/PLATFORM.md, "The peer on identical work").

    OMP_NUM_THREADS=1 python scripts/bench.py [--steps 10] [--threads 1] [--out runs/bench.json]   # `make bench`
    make bench && make bench-peer        # then TRL's GRPOTrainer on the same work, and the ratio (bench_peer.py)

Per optimizer step: 2 prompts × 8 samples × 32 new tokens, β = 0.04 (so a frozen-reference forward is part of
the step), fp32, CPU. The pieces are built as engine/trainer.py's Run.rl builds them and the step is
engine.algo.step.rl_step itself. Every sample is forced to its full 32 tokens: the rollout always stops on the
family's eos ids (it passes them to generate as stop ids), so the benchmark hands the rollout a copy of
the family with no eos ids; nothing in the engine changes. Prints seconds per step (median, min) split by phase,
token throughput, CPU seconds per step, peak RSS and the load average before and after (other processes on a
2-core machine distort every timing). No peer figure lives here: `make bench-peer` measures it right after.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: engine/, models/ are not installed packages

import torch  # noqa: E402

from engine.config.settings import Config  # noqa: E402
from engine.config import plugins  # noqa: E402
from engine.config.parsing import build_config  # noqa: E402
from engine.setup.data_stream import DataStream  # noqa: E402
from engine.report.evaluate import prompts_for  # noqa: E402
from engine.algo.step import RLState, rl_step  # noqa: E402
from engine.rollout.tool_calls import make_protocol  # noqa: E402
from engine.setup.data_setup import load_data  # noqa: E402
from engine.trainer import _optimizer, load_policy  # noqa: E402

DATA = ROOT / "runs" / "bench-data"
PHASES = ("rollout", "rewards", "advantages", "old_logp", "ref_logp", "update")
PROMPTS, GROUP, NEW_TOKENS, KL_BETA = 2, 8, 32, 0.04  # the workload, shared with scripts/bench_peer.py


def make_data() -> Path:
    if not (DATA / "data.jsonl").exists():
        subprocess.run([sys.executable, "-m", "data.synth", "colors", "--n", "64", "--out", str(DATA), "--seed", "0"],
                       check=True, cwd=ROOT)
    return DATA / "data.jsonl"


def setup(threads: int, total_steps: int, overrides: list[str] = ()):
    cfg = build_config(Config, overrides=[
        "--model.tiny_arch", "qwen2_5_vl", "--model.dtype", "float32", "--data.train", str(make_data()),
        "--rollout.group_size", str(GROUP), "--rollout.prompts_per_step", str(PROMPTS),
        "--rollout.max_new_tokens", str(NEW_TOKENS), "--rollout.temperature", "1.0", "--algo.kl_beta", str(KL_BETA),
        "--train.threads", str(threads), *overrides])
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    vlm = load_policy(cfg)
    train_set, _ = load_data(cfg)
    # Force exactly max_new_tokens per sample: with no eos ids the rollout's only stop is the length limit.
    vlm.family = replace(vlm.family, eos_ids=())
    model = vlm.model
    optimizer, scheduler = _optimizer(model, cfg, cfg.rl.lr, total_steps)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    state = RLState(cfg=cfg, policy=vlm, reference=reference, optimizer=optimizer, scheduler=scheduler,
                    generator=torch.Generator(device=model.device).manual_seed(cfg.train.seed),
                    protocol=make_protocol(cfg.rollout.protocol, vlm, tools=cfg.rollout.tools))
    return cfg, vlm, state, train_set, DataStream(len(train_set), cfg.train.seed + 2)


def one_step(cfg, vlm, state, train_set, stream) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    examples = [train_set[i] for i in stream.take(cfg.rollout.prompts_per_step)]
    metrics, trajs, _, _ = rl_step(state, prompts_for(examples, vlm, cfg))
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
            **{p: metrics.get(f"time/{p}", 0.0) for p in PHASES},
            "sampled": sum(t.num_sampled for t in trajs), "seq_tokens": sum(len(t.ids) for t in trajs),
            "response_mean": metrics["length/response_mean"], "eos_rate": metrics["stop/eos_rate"],
            "loss": float(metrics.get("train/loss", float("nan")))}


def summarise(steps: list[dict], threads: int, load_before, load_after) -> dict:
    med = {k: statistics.median(s[k] for s in steps) for k in ("wall", "cpu", *PHASES)}
    sampled, seq_tokens = steps[0]["sampled"], steps[0]["seq_tokens"]
    return {
        "workload": "tiny Qwen2.5-VL, 2 prompts x 8 samples x 32 new tokens, kl_beta 0.04, fp32, CPU",
        "steps": len(steps), "torch_threads": torch.get_num_threads(), "threads_flag": threads,
        "s_per_step_median": med["wall"], "s_per_step_min": min(s["wall"] for s in steps),
        "cpu_s_per_step_median": med["cpu"], "phase_s_median": {p: med[p] for p in PHASES},
        "other_s_median": med["wall"] - sum(med[p] for p in PHASES),  # prompts (image processing), metrics
        "sampled_tokens_per_step": sampled, "sequence_tokens_per_step": seq_tokens,
        "response_len_mean": statistics.mean(s["response_mean"] for s in steps),
        "eos_rate_mean": statistics.mean(s["eos_rate"] for s in steps),
        "rollout_sampled_tok_per_s": sampled / med["rollout"], "update_trained_tok_per_s": sampled / med["update"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "loadavg_before": load_before, "loadavg_after": load_after,
        "per_step": steps,
    }


def report(r: dict) -> None:
    ph = r["phase_s_median"]
    print(f"\n{r['workload']}; {r['steps']} timed steps, torch threads {r['torch_threads']}")
    print(f"load average (1/5/15 min) before {r['loadavg_before']}, after {r['loadavg_after']}")
    print(f"s/step        median {r['s_per_step_median']:.3f}  min {r['s_per_step_min']:.3f}")
    print(f"CPU s/step    median {r['cpu_s_per_step_median']:.3f}")
    print("phases (median s): " + ", ".join(f"{p} {ph[p]:.3f}" for p in PHASES) + f", other {r['other_s_median']:.3f}")
    print(f"tokens/step   sampled {r['sampled_tokens_per_step']}, in sequences {r['sequence_tokens_per_step']}; "
          f"response length mean {r['response_len_mean']:.1f}, eos rate {r['eos_rate_mean']:.2f}")
    print(f"throughput    rollout {r['rollout_sampled_tok_per_s']:.0f} sampled tok/s, "
          f"update {r['update_trained_tok_per_s']:.0f} trained tok/s")
    print(f"peak RSS      {r['peak_rss_mb']:.0f} MB")


def write_result(out: str, result: dict) -> None:
    """The results as JSON at `out` (empty: nowhere); shared with scripts/bench_gpu.py."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench.json"),
                        help="write the results as JSON here (`make bench-peer` reads it); empty: don't")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py|module",
                        help="import a plugin first (docs/PLUGINS.md), e.g. to time its loss with --algo.loss NAME")
    args, overrides = parser.parse_known_args(argv)  # the rest are config flags over the workload's own
    try:
        plugins.load_all(args.plugin)
        build_config(Config, overrides=overrides)  # a bad flag: one line, before any work
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.steps < 1 or args.threads < 1:
        parser.error("--steps and --threads must be >= 1")
    load_before = [round(x, 2) for x in os.getloadavg()]
    cfg, vlm, state, train_set, stream = setup(args.threads, args.warmup + args.steps, overrides)
    for _ in range(args.warmup):
        one_step(cfg, vlm, state, train_set, stream)
    steps = []
    for i in range(args.steps):
        steps.append(one_step(cfg, vlm, state, train_set, stream))
        print(f"step {i + 1}/{args.steps}: {steps[-1]['wall']:.3f} s", flush=True)
    result = summarise(steps, args.threads, load_before, [round(x, 2) for x in os.getloadavg()])
    report(result)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
