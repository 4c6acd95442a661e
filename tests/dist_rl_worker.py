"""engine.algo.step.rl_step under torchrun (2 CPU processes, FSDP2) on the SAME trajectories as one process:
tests/test_train_distributed.py launches this file and imports `run` as the one-process reference.

    torchrun --nproc_per_node 2 --master_port 29512 tests/dist_rl_worker.py OUT_DIR [PLUGIN_FILE]

Sampling is the one thing that legitimately differs by rank (each rank has its own generator), so the rollout is
replaced by fixed answers: prompt i (of 4, 2 per rank) gets G = 2 answers, "<answer>{right}</answer>" and a wrong
one whose length grows with i, so ranks pack different rows and rewards (accuracy) differ inside each group.
The policy is sharded, the KL reference is a fresh sharded copy loaded from the policy's full state, as the trainer
builds it. Two runs of two steps each (step 1: reference = policy, KL 0; step 2: the policy has moved, KL > 0):
- "plain": the row budget (110 tokens; trajectories of 45-86) packs rank 0's four into 2 rows and rank 1's
  (longer wrong answers) into 3: rank 0 runs one zero-weight padding row;
- "dynamic": dynamic sampling, and both answers of prompts 2-3 are right: rank 1 keeps NOTHING and still runs
  the busiest rank's number of rows, padded from a trajectory it did not keep.
Rank r writes OUT/rank{r}.json: per run, per step, the step's metrics (floats).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __name__ == "__main__":  # torchrun runs this file as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import engine.algo.step
from engine.runtime import distributed as D
from engine.config.settings import Config
from engine.config.parsing import build_config
from engine.algo.sft import sft_trajectory
from engine.algo.step import RLState, rl_step
from engine.trainer import _optimizer
from engine.rollout.trajectory import build_prompt
from tests.dist_worker import examples
from tests.engine_helpers import SYSTEM, load_tiny

WRONG = ["<answer>no</answer>", "<answer>it is not any colour I know of</answer>",
         "<answer>something else entirely, a long and wrong answer</answer>",
         "<answer>a very long wrong answer that goes on and on and on about nothing at all</answer>"]


def config(dynamic: bool, *extra: str) -> Config:
    return build_config(Config, overrides=[*extra,
        "--data.train", "unused.jsonl", "--rollout.group_size", "2", "--rollout.prompts_per_step", "4",
        "--rollout.temperature", "1.0", "--algo.kl_beta", "0.04", "--rl.lr", "1e-3",
        "--optim.micro_batch_tokens", "110", "--reward.weights", '{"accuracy": 1.0}',
        "--algo.drop_uniform_groups", str(dynamic).lower()])


def fixed_rollout(dynamic: bool):
    def rollout(vlm, prompts, settings, **_):
        trajs, group_size = [], settings.group_size
        for g, p in enumerate(prompts):
            i = int(p.example.origin.split(":")[1])  # the prompt's index in the whole batch
            right = f"<answer>{p.example.answer}</answer>"
            for text in (right, right if dynamic and i >= 2 else WRONG[i])[:group_size]:
                t = sft_trajectory(p, text, vlm)
                t.group = g
                trajs.append(t)
        return trajs
    return rollout


# With a plugin file (tests/test_plugins.py: docs/PLUGINS.md's fork), a third run: its KL-Cov loss (a step pass over
# every rank's tokens, two updates per rollout) and its REINFORCE++-baseline estimator (a whole-batch std).
PLUGIN_RUN = ["--algo.loss", "kl_cov", "--algo.num_updates", "2", "--algo.kl_cov.ratio", "0.2",
              "--algo.advantage", "reinforce_pp_baseline"]


def run(d: D.Dist, plugin: str | None = None) -> dict:
    out = {}
    runs = [("plain", False, []), ("dynamic", True, [])]
    if plugin:
        from engine.config import plugins

        plugins.load_all([plugin])
        runs = [("plugin", False, PLUGIN_RUN)]
    for name, dynamic, extra in runs:
        cfg = config(dynamic, *extra)
        torch.manual_seed(0)
        vlm = load_tiny()
        prompts = [build_prompt(e, vlm, system_prompt=SYSTEM, question_template="{question}") for e in examples()]
        mine = [prompts[i] for i in D.shard_indices(len(prompts), d.rank, d.world)]
        D.shard_model(vlm.model)
        reference = D.shard_model(load_tiny().model).requires_grad_(False)
        D.load_full_state_dict(reference, D.full_state_dict(vlm.model))
        optimizer, scheduler = _optimizer(vlm.model, cfg, cfg.rl.lr, 2 * cfg.algo.num_updates)
        state = RLState(cfg=cfg, policy=vlm, reference=reference, optimizer=optimizer, scheduler=scheduler,
                        generator=torch.Generator().manual_seed(0), protocol=None)
        real, engine.algo.step.rollout = engine.algo.step.rollout, fixed_rollout(dynamic)
        try:
            steps = []
            for _ in range(2):
                metrics, trajs, _, _ = rl_step(state, mine)
                steps.append({k: float(v) for k, v in metrics.items()})
                steps[-1]["local_trajectories"] = len(trajs)
        finally:
            engine.algo.step.rollout = real
        out[name] = steps
    return out


def main(out: str, plugin: str | None = None) -> None:
    d = D.init()
    result = run(d, plugin)
    (Path(out) / f"rank{d.rank}.json").write_text(json.dumps(result))
    D.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
