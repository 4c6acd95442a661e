"""train.mixed_precision = bf16 in ONE process: bf16 compute, fp32 master weights and fp32 AdamW state (FSDP2 on a
process group of one), so a small update lands where pure bf16 weights would drop it.

One SFT step at lr 1e-5 from the same tiny model, three ways: fp32 (the reference update), bf16 mixed precision,
and pure bf16 weights (model.dtype = bfloat16). AdamW's first step moves each weight by about ±lr (m / sqrt(v) is
the gradient's sign), while a bf16 weight of size ~0.02 has a spacing of 2^-13 ≈ 1.2e-4: an update of 1e-5 is below
half a step and rounds away. So the mixed-precision run must move the weights by the fp32 update (up to the
gradient's bf16 rounding), and the pure-bf16 run must leave most of them where they were.
The mixed-precision run then takes an RL step with a KL reference (the reference is sharded the same way).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_mixed_precision.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data.synth import write_dataset
from engine.runtime import distributed as D
from engine import trainer
from engine.config.settings import Config
from engine.config.parsing import build_config
from models.tiny import tiny_model_dir

LR = 1e-5


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    out = tmp_path_factory.mktemp("colors")
    write_dataset("colors", 16, str(out), seed=5)
    return out / "data.jsonl"


def _run(data, out_dir, *extra) -> dict[str, torch.Tensor]:
    """One SFT step (and whatever `extra` adds); returns the weights written after SFT (hub layout)."""
    cfg = build_config(Config, overrides=[
        "--data.train", str(data), "--train.out_dir", str(out_dir), "--train.threads", "1",
        "--train.tensorboard", "false", "--train.stage", "sft", "--sft.steps", "1", "--sft.batch_size", "4",
        "--sft.lr", str(LR), "--optim.schedule", "constant", "--optim.max_grad_norm", "0",
        "--train.sample_every", "0", *extra])
    try:
        trainer.run(cfg)
    finally:
        D.close()  # a failed run must not leave its group of one to the next test
    return load_file(Path(out_dir) / "checkpoints" / "step_000001" / "model" / "model.safetensors")


def _deltas(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every weight's change, flattened, in fp32 (the matrices and embeddings: norms sit at 1.0, where even fp32
    master weights keep bf16's coarse grid out of the picture, so they are left out of the fraction)."""
    keys = sorted(k for k in before if before[k].ndim == 2)
    return torch.cat([(after[k].float() - before[k].float()).flatten() for k in keys])


@pytest.mark.slow
def test_bf16_mixed_precision_keeps_the_small_update_that_pure_bf16_loses(colors, tmp_path):
    init = load_file(tiny_model_dir("qwen2_5_vl") / "model.safetensors")
    fp32 = _deltas(_run(colors, tmp_path / "fp32"), init)
    mixed_weights = _run(colors, tmp_path / "mixed", "--train.mixed_precision", "bf16", "--train.stage", "sft,rl",
                         "--rl.steps", "1", "--algo.kl_beta", "0.04", "--rollout.prompts_per_step", "2",
                         "--rollout.group_size", "2", "--rollout.max_new_tokens", "16")  # the SFT targets fit whole
    assert {v.dtype for v in mixed_weights.values()} == {torch.float32}  # the master copy is fp32
    mixed = _deltas(mixed_weights, init)
    pure = _deltas(_run(colors, tmp_path / "bf16", "--model.dtype", "bfloat16"),
                   {k: v.to(torch.bfloat16) for k, v in init.items()})

    moved_M = fp32.abs() > LR / 4  # AdamW's first step moves every weight with a gradient by about lr
    assert moved_M.float().mean() > 0.8  # (rows of tokens absent from the batch have none)
    also_moved = lambda d: (d[moved_M].abs() > LR / 4).float().mean().item()  # noqa: E731
    assert also_moved(mixed) > 0.99 and also_moved(pure) < 0.2  # bf16 weights round most of it away
    cosine = torch.nn.functional.cosine_similarity(mixed, fp32, dim=0).item()
    assert 0.95 < cosine < 0.9999, cosine  # the same update, up to the gradient's bf16 rounding (which did happen)
    assert (mixed.norm() / fp32.norm()).item() == pytest.approx(1.0, abs=0.05)
    assert torch.nn.functional.cosine_similarity(pure, fp32, dim=0).item() < 0.5
    # the RL step after SFT ran under the same policy and wrote a final checkpoint
    assert (tmp_path / "mixed" / "checkpoints" / "step_000002" / "COMPLETE").is_file()
    assert not D.active()  # the run left its group of one


def test_mixed_precision_needs_fp32_master_weights():
    base = ["--data.train", "x.jsonl", "--train.mixed_precision", "bf16"]
    with pytest.raises(ValueError, match="model.dtype = float32"):
        build_config(Config, overrides=base + ["--model.dtype", "bfloat16"])
    # the vLLM sampler joins the run's process group and samples in bf16 (tests/test_vllm_train.py runs it)
    assert build_config(Config, overrides=base + ["--rollout.sampler", "vllm"]).rollout.sampler == "vllm"
