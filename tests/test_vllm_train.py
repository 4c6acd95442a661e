"""train.py's RL loop with `--rollout.sampler vllm` on the tiny Qwen2.5-VL: vLLM samples, the trainer scores, and the
weights pushed after every optimizer step keep the two in agreement. The negative control (pushes disabled) shows
the logged mismatch is what detects a stale sampler. Under train.mixed_precision = bf16 the engine samples in bf16.

Needs vLLM: runs under .venv-vllm (bash scripts/install_vllm.sh; make test-vllm); skipped elsewhere, saying why.
Run: OMP_NUM_THREADS=1 .venv-vllm/bin/python -m pytest -q -rs tests/test_vllm_train.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.synth import write_dataset
from tests.vllm_lane import needs_vllm
from engine.config.settings import Config
from engine.config.parsing import build_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = needs_vllm

STEPS = 4


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    out = tmp_path_factory.mktemp("colors")
    write_dataset("colors", 32, str(out), seed=5)
    return out / "data.jsonl"


def _run(data, out_dir):
    from engine import trainer

    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=[
        "--data.train", str(data), "--data.eval", "", "--train.out_dir", str(out_dir), "--train.threads", "1",
        "--train.tensorboard", "false", "--train.stage", "sft,rl", "--rl.steps", str(STEPS),
        # a short SFT warm-start: the format half-learnt, so rewards vary within groups (at temperature 0.7; at 1.0
        # the per-prompt seeds of these 4 steps drew groups of equal rewards, i.e. no update at all)
        "--sft.steps", "60", "--sft.batch_size", "8", "--sft.lr", "2e-3",
        "--train.sample_every", "0", "--rollout.sampler", "vllm", "--rollout.prompts_per_step", "2",
        "--rollout.group_size", "4", "--rollout.max_new_tokens", "24", "--rollout.temperature", "0.7",
        # a large lr: every update moves the policy far enough that a stale sampler shows
        "--rl.lr", "3e-3", "--algo.tis_cap", "2.0"])
    trainer.run(cfg)
    rows = [r for r in map(json.loads, open(out_dir / "metrics.jsonl")) if "reward/total" in r]
    assert len(rows) == STEPS
    assert any(r["train/grad_norm"] > 0 for r in rows[:-1])  # real updates happened between the pushes
    return rows


def test_vllm_sampler_trains_and_stays_in_sync(colors, tmp_path):
    rows = _run(colors, tmp_path / "synced")
    for i, r in enumerate(rows):
        # every step samples the policy the trainer holds: fp32 on both sides, so the log-probs agree closely
        assert r["train/tis/mismatch_abs"] < 1e-2, (i, r["train/tis/mismatch_abs"])
        assert abs(r["train/tis/ratio_mean"] - 1.0) < 1e-2 and r["train/tis/capped_frac"] == 0.0
        assert r["time/weight_sync"] > 0.0  # pushed after each update
    summary = json.loads((tmp_path / "synced" / "summary.json").read_text())
    assert summary["done_stages"] == ["sft", "rl"] and Path(summary["final_checkpoint"]).is_dir()


def test_without_pushes_the_mismatch_shows(colors, tmp_path, monkeypatch):
    from engine.rollout.vllm_sampler import VLLMSampler

    real_push, pushes = VLLMSampler.push_weights, {"n": 0}

    def first_push_only(self, named_tensors):
        pushes["n"] += 1
        if pushes["n"] == 1:  # the trainer's initial push (the starting weights); later updates are dropped
            return real_push(self, named_tensors)
        return None

    monkeypatch.setattr(VLLMSampler, "push_weights", first_push_only)
    rows = _run(colors, tmp_path / "stale")
    assert pushes["n"] == STEPS + 1  # one at start, one after every step
    assert rows[0]["train/tis/mismatch_abs"] < 1e-2  # step 1 still samples the starting weights the trainer holds
    assert max(r["train/tis/mismatch_abs"] for r in rows[1:]) > 5e-2  # after that, a stale sampler is visible


def test_mixed_precision_samples_in_bf16(colors, tmp_path, monkeypatch):
    """train.mixed_precision = bf16 (fp32 master weights, bf16 compute; a process group of one): the engine samples in
    bf16 from the pushed fp32 weights, and the mismatch stays at bf16's level."""
    from engine import trainer
    from engine.rollout.vllm_sampler import VLLMSampler

    real_init, dtypes = VLLMSampler.__init__, []

    def recording_init(self, *args, **kwargs):
        dtypes.append(kwargs["dtype"])
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(VLLMSampler, "__init__", recording_init)
    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=[
        "--data.train", str(colors), "--data.eval", "", "--train.out_dir", str(tmp_path), "--train.threads", "1",
        "--train.tensorboard", "false", "--train.stage", "rl", "--rl.steps", "2", "--train.mixed_precision", "bf16",
        "--train.sample_every", "0", "--rollout.sampler", "vllm", "--rollout.prompts_per_step", "2",
        "--rollout.group_size", "4", "--rollout.max_new_tokens", "12", "--rollout.temperature", "1.0"])
    trainer.run(cfg)
    rows = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "reward/total" in r]
    assert dtypes == ["bfloat16"] and len(rows) == 2
    for r in rows:
        print(f"bf16: mismatch {r['train/tis/mismatch_abs']:.2e}")
        assert 0 < r["train/tis/mismatch_abs"] < 2e-2 and r["time/weight_sync"] > 0
