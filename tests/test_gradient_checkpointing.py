"""--model.gradient_checkpointing: the same gradients as without it (full model and LoRA), on a packed row with an
injected crop, while the forward stores less for the backward pass."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from engine.config.settings import Config
from engine.config.parsing import build_config
from engine.runtime.lora import apply_lora
from engine.forward.packing import pack_row, row_logps
from engine.rollout.rollout import finish
from engine.trainer import enable_gradient_checkpointing
from engine.rollout.trajectory import Trajectory
from models.load import load_vlm
from models.tiny import tiny_model_dir
from tests.engine_helpers import make_prompt, noise_image


def _fresh():
    torch.set_num_threads(1)
    vlm = load_vlm(tiny_model_dir("qwen2_5_vl"))
    vlm.model.train()  # checkpointing acts in training mode only; the tiny configs have no dropout
    return vlm


def _row(vlm):
    g = torch.Generator().manual_seed(0)
    trajs = []
    for i, size in enumerate([(112, 84), (56, 112)]):
        traj = Trajectory.start(make_prompt(vlm, size, "What is it?", seed=i), i)
        traj.append_sampled(torch.randint(8, 1000, (7,), generator=g).tolist(), [0.0] * 7)
        traj.append_image(noise_image((40, 50), 100 + i), vlm)  # an injected crop, mask 0
        traj.append_sampled(torch.randint(8, 1000, (5,), generator=g).tolist(), [0.0] * 5)
        traj.stop = "length"
        finish(traj, vlm)
        trajs.append(traj)
    return pack_row(trajs, [0, 1])


def _grads_and_saved_bytes(model, row) -> tuple[dict[str, torch.Tensor], int]:
    model.zero_grad(set_to_none=True)
    saved = 0

    def pack_hook(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        logp, _ = row_logps(model, row)
    (-logp.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return grads, saved


def _checkpointed_layers(model) -> list[bool]:
    return [m.gradient_checkpointing for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_same_gradients_less_saved(lora):
    vlm = _fresh()
    model = apply_lora(vlm.model, r=4, alpha=8, dropout=0.0, target="language") if lora else vlm.model
    row = _row(vlm)
    plain, plain_saved = _grads_and_saved_bytes(model, row)
    assert not any(_checkpointed_layers(model))

    enable_gradient_checkpointing(model)
    flags = _checkpointed_layers(model)
    assert len(flags) == 4 + 2 and all(flags)  # the tiny model's 4 decoder layers and 2 vision blocks
    ckpt, ckpt_saved = _grads_and_saved_bytes(model, row)

    assert set(ckpt) == set(plain) and plain, "checkpointing changed which parameters get gradients"
    if lora:
        assert all("lora_" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    # the layers' intermediate activations are recomputed, not stored: the forward keeps far less
    assert ckpt_saved < 0.5 * plain_saved, (ckpt_saved, plain_saved)


def test_config_flag():
    base = ["--data.train", "x.jsonl"]
    cfg = build_config(Config, toml_path=None, overrides=base + ["--model.gradient_checkpointing", "true"])
    assert cfg.model.gradient_checkpointing is True
    assert build_config(Config, toml_path=None, overrides=base).model.gradient_checkpointing is False
