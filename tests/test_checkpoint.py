"""Tests for engine/runtime/checkpoint.py: exact resume (weights, AdamW state, scheduler, RNG), `latest`, pruning,
crash safety, and in-place loading of save_pretrained's hub layout (renamed/transposed keys, tied weights).

The model is a 1-layer GPT-2 (tied lm_head/wte, dropout off so two copies train identically).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import engine.runtime.checkpoint as ckpt
from engine.runtime.checkpoint import (capture_rng, generator_device, latest_checkpoint, load_checkpoint, restore_rng,
                               save_checkpoint)


def _model(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0,
                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def _opt_sched(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))


def _train(model, opt, sched, batches):
    for ids in batches:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def _batches(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (2, 8), generator=g) for _ in range(n)]


def _save(run_dir, step, model, **kw):
    kw.setdefault("extra_state", {"step": step})
    return save_checkpoint(run_dir, step, model=model, config_toml=f"step = {step}\n", **kw)


def test_resume_continues_exactly(tmp_path):
    a = _model(0)
    opt_a, sched_a = _opt_sched(a)
    _train(a, opt_a, sched_a, _batches(2, seed=1))
    path = _save(tmp_path, 2, a, optimizer=opt_a, scheduler=sched_a, extra_state={"step": 2, "pos": 17})

    b = _model(1)  # different initial weights: everything must come from the checkpoint
    opt_b, sched_b = _opt_sched(b)
    state = load_checkpoint(path, model=b, optimizer=opt_b, scheduler=sched_b)
    assert state == {"step": 2, "pos": 17}
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert b.lm_head.weight.data_ptr() == b.transformer.wte.weight.data_ptr()  # still tied after loading
    assert sched_b.last_epoch == 2 and opt_b.param_groups[0]["lr"] == pytest.approx(1e-2 / 3)
    assert opt_b.state_dict()["state"][0]["step"] == 2

    nxt = _batches(1, seed=2)
    _train(a, opt_a, sched_a, nxt)
    _train(b, opt_b, sched_b, nxt)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name  # bitwise: moments and step count were restored too
    assert (path / "config.toml").read_text() == "step = 2\n"


def test_saved_model_folder_loads_with_from_pretrained(tmp_path):
    a = _model(0)
    path = _save(tmp_path, 1, a)
    b = GPT2LMHeadModel.from_pretrained(path / "model")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_latest_and_keep_last(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    m = _model(0)
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, m, keep_last=5)
    assert sorted(p.name for p in root.glob("step_*")) == [f"step_00000{i}" for i in (1, 2, 3, 4)]
    _save(tmp_path, 5, m, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000004", "step_000005"]
    assert (root / "latest").read_text() == "step_000005\n"
    assert latest_checkpoint(tmp_path) == root / "step_000005"
    with pytest.raises(ValueError, match="keep at least 1"):
        _save(tmp_path, 6, m, keep_last=0)


def test_resaving_an_older_step_keeps_it_as_latest(tmp_path):
    m = _model(0)
    for step in (1, 2, 3):
        _save(tmp_path, step, m, keep_last=2)
    # Resumed from step 1 by hand and saved it again: it is the newest, so pruning must not delete it.
    _save(tmp_path, 1, m, keep_last=2, extra_state={"step": 1, "again": True})
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) == root / "step_000001"
    assert load_checkpoint(root / "step_000001", model=_model(1)) == {"step": 1, "again": True}
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000001", "step_000003"]


def test_failure_mid_save_keeps_previous_checkpoint(tmp_path):
    m = _model(0)
    _save(tmp_path, 1, m)
    with pytest.raises(Exception):  # a lambda cannot be pickled: the state write fails half way through
        _save(tmp_path, 2, m, extra_state={"step": 2, "bad": lambda: 0})
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) == root / "step_000001"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000001"]  # no half folder left
    assert load_checkpoint(root / "step_000001", model=_model(1)) == {"step": 1}


def test_crash_before_latest_is_replaced(tmp_path, monkeypatch):
    m = _model(0)
    _save(tmp_path, 1, m)
    real = ckpt._write_atomic

    def crash_on_latest(path, text):
        if path.name == "latest":
            raise KeyboardInterrupt  # killed after the rename, before `latest` moved on
        real(path, text)

    monkeypatch.setattr(ckpt, "_write_atomic", crash_on_latest)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, m, extra_state={"step": 2})
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000001"
    assert _save(tmp_path, 2, m, extra_state={"step": 2, "n": 2}).name == "step_000002"  # overwrites cleanly
    assert load_checkpoint(latest_checkpoint(tmp_path), model=_model(1)) == {"step": 2, "n": 2}


def test_stale_tmp_folder_is_ignored_then_cleaned(tmp_path):
    m = _model(0)
    _save(tmp_path, 1, m)
    stale = tmp_path / "checkpoints" / ".tmp-step_000002-x1y2"  # what a killed save leaves behind
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000001"
    _save(tmp_path, 2, m)
    assert not stale.exists()


def test_missing_pieces_are_value_errors(tmp_path):
    m = _model(0)
    path = _save(tmp_path, 1, m)
    opt, _ = _opt_sched(m)
    with pytest.raises(ValueError, match=f"{path}: no optimizer.pt"):
        load_checkpoint(path, model=m, optimizer=opt)
    (path / "model" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_checkpoint(path, model=m)
    (path / "COMPLETE").unlink()
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        load_checkpoint(path, model=m)
    with pytest.raises(ValueError, match="missing or incomplete"):
        latest_checkpoint(tmp_path)


def test_wrong_model_is_refused(tmp_path):
    path = _save(tmp_path, 1, _model(0))
    other = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                                       bos_token_id=0, eos_token_id=0))
    with pytest.raises(ValueError, match=r"lacks weights for \['transformer.h.1"):
        load_checkpoint(path, model=other)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl_moe"])
def test_hub_layout_loads_in_place(tmp_path, arch):
    """Qwen2.5-VL saves `model.language_model.*` as `model.*`; Qwen3-VL-MoE saves its experts transposed."""
    from transformers import AutoModelForImageTextToText

    from models.tiny import tiny_model_dir

    src = AutoModelForImageTextToText.from_pretrained(tiny_model_dir(arch))
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))  # differ from the files tiny_model_dir wrote
    path = _save(tmp_path, 1, src)
    dst = AutoModelForImageTextToText.from_pretrained(tiny_model_dir(arch))
    load_checkpoint(path, model=dst)
    for (name, x), y in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(x, y), name


def test_peft_adapter_round_trip(tmp_path):
    from peft import LoraConfig, get_peft_model

    def lora(seed):
        base = _model(0)
        torch.manual_seed(seed)  # after _model, which seeds too: the two adapters start different
        cfg = LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False, fan_in_fan_out=True)
        return get_peft_model(base, cfg)

    a, b = lora(1), lora(2)
    assert not torch.equal(a.base_model.model.transformer.h[0].attn.c_attn.lora_A["default"].weight,
                           b.base_model.model.transformer.h[0].attn.c_attn.lora_A["default"].weight)
    path = _save(tmp_path, 1, a)
    assert (path / "model" / "adapter_model.safetensors").is_file()
    load_checkpoint(path, model=b)
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="not a peft model"):
        load_checkpoint(path, model=_model(0))


def _draw(gen):
    return (random.random(), np.random.rand(), torch.rand(3).tolist(), torch.rand(2, generator=gen).tolist())


def test_rng_restore_reproduces_draws(tmp_path):
    model, target = _model(0), _model(1)  # built first: building seeds torch's global RNG
    gen = torch.Generator().manual_seed(5)
    _draw(gen)  # move every stream off its seed
    state = capture_rng({"sampler": gen})
    path = _save(tmp_path, 1, model, extra_state={"rng": state})  # through torch.save/load too
    first = _draw(gen)
    assert _draw(gen) != first
    restore_rng(load_checkpoint(path, model=target)["rng"], {"sampler": gen})
    assert _draw(gen) == first
    with pytest.raises(ValueError, match="generators"):
        restore_rng(state, {"other": gen})
    # The sampling generator's state is a plain uint8 tensor (loadable with weights_only=True), its device type
    # beside it: a CUDA generator's state (seed + offset) does not fit a CPU generator, and is refused by name.
    assert state["generators"]["sampler"].dtype == torch.uint8 and generator_device(state, "sampler") == "cpu"
    with pytest.raises(ValueError, match="'sampler' was saved on cuda"):
        restore_rng({**state, "generator_devices": {"sampler": "cuda"}}, {"sampler": gen})
    assert generator_device({"generators": {}}, "sampler") == "cpu"  # checkpoints from before the field


class _Planted:
    """What a tampered run folder could hold: unpickling it would call os.system."""

    def __reduce__(self):
        import os
        return (os.system, ("touch PLANTED",))


@pytest.mark.parametrize("file", ["state.pt", "optimizer.pt", "scheduler.pt"])
def test_planted_pickle_is_refused_not_run(tmp_path, file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = _model(0)
    opt, sched = _opt_sched(m)
    path = _save(tmp_path, 1, m, optimizer=opt, scheduler=sched)
    torch.save({"step": 1, "x": _Planted()}, path / file)
    with pytest.raises(ValueError, match=rf"{file}: refused: it holds Python objects.*posix.system"):
        load_checkpoint(path, model=_model(1), optimizer=opt, scheduler=sched)
    assert not (tmp_path / "PLANTED").exists()


def test_only_plain_data_is_written(tmp_path):
    m = _model(0)
    with pytest.raises(ValueError, match=r"extra_state.rng\[1\]: a ndarray cannot go into a checkpoint"):
        _save(tmp_path, 1, m, extra_state={"rng": [1, np.zeros(3)]})
    assert latest_checkpoint(tmp_path) is None
    # A metric that came out of numpy is a float subclass pickled as a numpy object: written as a plain float.
    path = _save(tmp_path, 1, m, extra_state={"summary": {"acc": np.float64(0.5), "n": np.int64(3)}, "t": (1, 2)})
    state = load_checkpoint(path, model=None)
    assert state == {"summary": {"acc": 0.5, "n": 3}, "t": (1, 2)} and type(state["summary"]["acc"]) is float
