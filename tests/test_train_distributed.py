"""The trainer under torchrun (FSDP2 over 2 CPU processes, gloo) and with LoRA, on the tiny offline VLM.

- `train.py` on 2 processes vs the same run in 1: each step's global batch is split over the ranks, so the SFT
  losses (fixed data, nothing sampled) agree up to float summation order (< 1e-5) and so do the greedy held-out
  answers. RL samples differ by design (rank r samples with its own generator, seed + 1000·r: one process's
  batched stream cannot be split into per-rank halves), so for RL the run must finish with the same metric
  names, finite values, and KL exactly 0 at its first step (the reference is the policy as RL starts).
- The RL step itself on FIXED trajectories (tests/dist_rl_worker.py replaces the rollout): every metric of two
  steps equals one process's, with padding rows on the rank with fewer rows and on a rank that kept nothing.
- Resume on a different number of processes: the 2-process run's mid-SFT checkpoint, resumed in 1 process,
  continues with the uninterrupted 1-process run's SFT losses (< 1e-5) and finishes.
- LoRA (`--lora.r 8`, 1 process, kl_beta 0.04): checkpoints hold an adapter, the reference is the adapters off
  (KL > 0 from the first RL step, since SFT moved the adapters), and the merged export loads with
  models.load.load_vlm and gives the adapted model's logits (< 1e-5).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.synth import write_dataset
from engine.runtime import distributed as D
from engine import trainer
from engine.runtime.checkpoint import load_checkpoint
from engine.config.settings import Config
from engine.config.parsing import build_config
from engine.runtime.lora import apply_lora
from engine.algo.sft import sft_trajectory
from models.load import load_vlm
from tests.engine_helpers import make_prompt, plain_logits

ROOT = Path(__file__).resolve().parent.parent
# SFT at the demo's lr (a larger one lets Adam amplify float-order noise past 1e-5 within 4 steps). Checkpoints
# after SFT steps 2 and 4 and RL steps 2 and 3 (global steps 2, 4, 6, 7), all kept.
ARGS = ["--train.tensorboard", "false", "--train.threads", "1", "--train.stage", "sft,rl", "--sft.steps", "4",
        "--sft.batch_size", "4", "--sft.lr", "3e-4", "--rl.steps", "3", "--rollout.prompts_per_step", "2",
        "--rollout.group_size", "4", "--rollout.max_new_tokens", "8", "--data.overlong", "truncate",
        "--rollout.temperature", "1.0",
        "--algo.kl_beta", "0.04", "--data.num_eval_examples", "4", "--train.save_every", "2",
        "--train.keep_checkpoints", "10", "--train.sample_every", "0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # a hang: ranks making different collectives wait for each other forever
        proc.terminate()  # on SIGTERM torchrun stops its workers (each runs in a session of its own)
        out, err = proc.communicate(timeout=60)
        pytest.fail("torchrun hung for 300 s (mismatched collectives?):\n" + out[-3000:] + err[-5000:])
    assert proc.returncode == 0, out[-3000:] + err[-5000:]


def _metrics(out_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, open(out_dir / "metrics.jsonl")) if "eval/accuracy" not in r}


def _cli(data: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "configs/demo.toml"), "--data.train", str(data), "--data.eval", str(data),
            "--train.out_dir", str(out_dir), *ARGS, *extra]


def _run_here(data: Path, out_dir: Path, *extra: str) -> dict:
    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=_cli(data, out_dir, *extra)[2:])
    return trainer.run(cfg)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("colors")
    write_dataset("colors", 16, str(out), seed=3)
    return out / "data.jsonl"


@pytest.fixture(scope="module")
def one(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    _run_here(data, out)
    return out


@pytest.fixture(scope="module")
def two(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    _torchrun("train.py", *_cli(data, out))
    return out


def test_world_size_must_divide_the_batch(data, tmp_path, monkeypatch):
    monkeypatch.setattr(D, "init", lambda **_: D.Dist(rank=0, world=3))  # a 3-process launch, seen from rank 0
    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=_cli(data, tmp_path)[2:])
    with pytest.raises(ValueError, match="sft.batch_size = 4 is not a multiple of the 3 processes"):
        trainer.Run(cfg)


@pytest.mark.slow
def test_two_processes_train_like_one(one, two):
    a, b = _metrics(one), _metrics(two)
    assert sorted(a) == sorted(b) == list(range(1, 8))  # 4 SFT + 3 RL steps, logged once (rank 0)
    for step in range(1, 5):
        assert b[step]["sft/tokens"] == a[step]["sft/tokens"]  # the global token count, all-reduced
        assert b[step]["sft/loss"] == pytest.approx(a[step]["sft/loss"], abs=1e-5), step
        assert b[step]["sft/grad_norm"] == pytest.approx(a[step]["sft/grad_norm"], rel=1e-4), step
    assert a[2]["sft/loss"] != a[1]["sft/loss"]  # the steps really trained
    for step in range(5, 8):
        # The samples differ, so a token class (engine/algo/diagnostics.py) may occur in one run's step and not the
        # other's: its share is logged either way, its means only where it occurred.
        sampled_only = lambda m: {k for k in m if k.startswith("train/tokens/") and not k.endswith("/share")}  # noqa: E731
        assert b[step].keys() - sampled_only(b[step]) == a[step].keys() - sampled_only(a[step]), step
        for m in (a[step], b[step]):
            present = {k.split("/")[2] for k in m if k.startswith("train/tokens/") and k.endswith("/share")
                       and m[k] > 0}
            assert {k.split("/")[2] for k in sampled_only(m)} == present, step
        assert all(math.isfinite(v) for v in b[step].values()), step
    assert a[5]["train/kl"] == b[5]["train/kl"] == 0.0  # the reference is the policy as RL starts
    # Greedy held-out answers after SFT: each rank answered 2 of the 4, gathered in example order.
    assert (two / "eval_after_sft.jsonl").read_text() == (one / "eval_after_sft.jsonl").read_text()
    summary = json.loads((two / "summary.json").read_text())
    assert summary["done_stages"] == ["sft", "rl"] and summary["num_eval_examples"] == 4
    ckpt = Path(summary["final_checkpoint"])
    assert ckpt.name == "step_000007" and (ckpt / "model" / "model.safetensors").is_file()
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # every rank's RNG
    assert (two / "reference" / "model.safetensors").is_file()  # the RL-start weights, for a mid-RL resume


@pytest.mark.slow
def test_gradient_checkpointing_under_fsdp_trains_like_one_process_without_it(data, one, tmp_path):
    """--model.gradient_checkpointing with FSDP2 on 2 processes: the same SFT losses and gradient norms as the
    1-process run without checkpointing (recomputation inside sharded layers changes nothing numerically)."""
    out = tmp_path / "run"
    _torchrun("train.py", *_cli(data, out, "--train.stage", "sft", "--model.gradient_checkpointing", "true"))
    a, b = _metrics(one), _metrics(out)
    assert sorted(b) == [1, 2, 3, 4]
    for step in range(1, 5):
        assert b[step]["sft/loss"] == pytest.approx(a[step]["sft/loss"], abs=1e-5), step
        assert b[step]["sft/grad_norm"] == pytest.approx(a[step]["sft/grad_norm"], rel=1e-4), step


@pytest.mark.slow
def test_rl_step_on_two_processes_equals_one(tmp_path):
    from tests.dist_rl_worker import run

    _torchrun("tests/dist_rl_worker.py", str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    ref = run(D.Dist())
    for name in ("plain", "dynamic"):
        for step in range(2):
            want, got, other = ref[name][step], r0[name][step], r1[name][step]
            assert got.keys() == want.keys() == other.keys()
            assert got["local_trajectories"] == other["local_trajectories"] == 4 and want["local_trajectories"] == 8
            for k in want:
                if k.startswith(("time/", "throughput/")) or k == "local_trajectories":
                    continue  # wall times, and the trajectories each process holds
                assert other[k] == got[k], (name, step, k)  # every rank reports the same (merged) step
                tol = dict(rel=1e-5) if k == "train/grad_norm" else dict(abs=1e-5)
                assert got[k] == pytest.approx(want[k], **tol), (name, step, k)
    assert ref["plain"][1]["train/kl"] > 1e-3 and ref["plain"][0]["train/kl"] == 0.0  # the policy moved
    assert ref["dynamic"][0]["batch/kept_fraction"] == 0.5  # rank 1's groups were all dropped
    assert ref["dynamic"][0]["train/loss"] != ref["plain"][0]["train/loss"]


@pytest.mark.slow
def test_resume_two_process_checkpoint_in_one_process(data, one, two, tmp_path):
    # What a crash right after the step-2 save leaves: checkpoint step_000002 (named by `latest`) and metrics 1-2.
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").mkdir()
    shutil.copytree(two / "checkpoints" / "step_000002", run / "checkpoints" / "step_000002")
    (run / "checkpoints" / "latest").write_text("step_000002\n")
    lines = (two / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(x for x in lines if json.loads(x)["step"] <= 2))
    summary = _run_here(data, run, "--train.resume", "true")
    a, b = _metrics(one), _metrics(run)
    assert sorted(b) == list(range(1, 8))
    for step in (3, 4):
        assert b[step]["sft/loss"] == pytest.approx(a[step]["sft/loss"], abs=1e-5), step
    assert summary["done_stages"] == ["sft", "rl"] and Path(summary["final_checkpoint"]).name == "step_000007"
    assert all(math.isfinite(v) for s in (5, 6, 7) for v in b[s].values())


@pytest.mark.slow
def test_lora_run_saves_adapters_and_a_merged_export(data, tmp_path):
    out = tmp_path / "lora"
    summary = _run_here(data, out, "--lora.r", "8", "--sft.steps", "2", "--rl.steps", "2", "--sft.lr", "1e-2",
                        "--data.eval", "")
    m = _metrics(out)
    assert m[3]["train/kl"] > 1e-4  # reference = adapters off: the base model, which SFT's adapters moved from
    ckpt = Path(summary["final_checkpoint"])
    assert (ckpt / "model" / "adapter_config.json").is_file() and not (ckpt / "model" / "model.safetensors").exists()
    merged = Path(summary["merged_model"])
    assert merged == out / "merged"

    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=_cli(data, out)[2:])
    adapted = trainer.load_policy(cfg)
    base = trainer.load_policy(cfg)
    adapted.model = apply_lora(adapted.model, r=8, alpha=cfg.lora.alpha, dropout=0.0, target="language")
    load_checkpoint(ckpt, model=adapted.model)
    exported = load_vlm(merged)
    assert not hasattr(exported.model, "peft_config")
    t = sft_trajectory(make_prompt(adapted, (112, 112), "What colour is it?", seed=1), "<answer>red</answer>",
                       adapted)
    with torch.no_grad():
        want, got, before = (plain_logits(v, t.ids, t.pixel_values, t.grid_thw) for v in (adapted, exported, base))
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (want - before).abs().max() > 1e-3  # the adapters changed the model
