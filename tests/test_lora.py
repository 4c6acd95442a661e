"""engine/runtime/lora.py on the tiny Qwen2.5-VL: which layers get adapters (and how many parameters, worked out by
hand), a packed forward + backward through the PeftModel, the reference policy as the same weights with the
adapters off, the merged export reloaded by plain transformers, and the adapter save/load round trip.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from engine.runtime.lora import adapters_disabled, apply_lora, merged_export, save_adapter
from engine.forward.packing import pack, row_logps
from engine.algo.sft import sft_trajectory
from models.load import load_vlm
from tests.engine_helpers import load_tiny, make_prompt, plain_logits, plain_logps

LM_ATTN = ("k_proj", "o_proj", "q_proj", "v_proj")


@pytest.fixture(scope="module")
def tiny():
    """The base model, two trajectories packed into ONE row, and the base model's log-probs of that row."""
    vlm = load_tiny()
    prompts = [make_prompt(vlm, (112, 112), "What colour is it?", seed=1),
               make_prompt(vlm, (84, 140), "Describe the picture.", seed=2)]
    trajs = [sft_trajectory(p, t, vlm) for p, t in zip(prompts, ["<answer>red</answer>", "a noisy picture"])]
    (row,) = pack(trajs, 10_000)
    with torch.no_grad():
        base_K = row_logps(vlm.model, row)[0]
    return vlm, trajs, row, base_K


def lora_copy(vlm, **kw):
    """Adapters on a copy: get_peft_model modifies the model it wraps."""
    args = dict(r=4, alpha=8, dropout=0.0)
    args.update(kw)
    return apply_lora(copy.deepcopy(vlm.model), **args)


def adapted(model) -> set[str]:
    return {n.split(".lora_A.")[0] for n, _ in model.named_parameters() if ".lora_A." in n}


def randomise_b(model, seed: int) -> None:
    """LoRA B starts at 0 (the adapted model equals the base); give it values so the adapters matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_adapters_only_on_language_attention(tiny):
    vlm = tiny[0]
    model = lora_copy(vlm)
    want = {f"base_model.model.model.language_model.layers.{i}.self_attn.{p}" for i in range(4) for p in LM_ATTN}
    assert adapted(model) == want  # none in `visual`, none on the LM MLP
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # r * (in + out) per layer (hidden 128; 2 KV heads x 32 = 64 for k/v): q 4*(128+128) = 1024,
    # k 4*(128+64) = 768, v 768, o 4*(128+128) = 1024 -> 3584 per decoder layer, x 4 layers = 14336.
    assert sum(trainable.values()) == 14336


def test_language_plus_vision_adds_only_vision_attention(tiny):
    vlm = tiny[0]
    model = lora_copy(vlm, r=2, target="language+vision")
    vision = {n for n in adapted(model) if ".visual." in n}
    assert vision == {f"base_model.model.model.visual.blocks.{i}.attn.{p}" for i in range(2) for p in ("qkv", "proj")}
    # LM: 2 * 3584 = 7168. Vision (hidden 64): qkv 2*(64+192) = 512, proj 2*(64+64) = 256 -> 768 per block, x 2.
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 7168 + 1536
    with pytest.raises(ValueError, match="unknown"):
        lora_copy(vlm, target="vision")


def test_packed_backward_and_reference_is_the_base_model(tiny):
    vlm, trajs, row, base_K = tiny
    model = lora_copy(vlm)
    with torch.no_grad():
        assert torch.equal(row_logps(model, row)[0], base_K)  # B = 0: the adapters add exactly nothing
    logp_K, _ = row_logps(model, row)  # position_ids, logits_to_keep, attention_mask=None through the wrapper
    assert logp_K.shape == base_K.shape
    (-logp_K.sum() / logp_K.numel()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().max() > 0 for n, g in grads.items() if ".lora_B." in n)
    assert all(g is None or not g.any() for n, g in grads.items() if ".lora_A." in n)  # dL/dA = 0 while B = 0
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    assert all(p.abs().max() > 0 for n, p in model.named_parameters() if ".lora_B." in n)

    with torch.no_grad():
        with adapters_disabled(model):
            off_K = row_logps(model, row)[0]
        on_K = row_logps(model, row)[0]  # adapters are back on after the block
    assert torch.equal(off_K, base_K)  # the reference policy: base weights, bit for bit
    assert (on_K - base_K).abs().max() > 1e-3
    # The packed row through the PeftModel equals one ordinary forward per sequence: if the wrapper dropped the
    # 4-row position_ids the sequences would attend to each other (docs/PLATFORM.md: off by ~0.9).
    with torch.no_grad():
        each_K = torch.cat([plain_logps(replace(vlm, model=model), t) for t in trajs])
    assert torch.allclose(on_K, each_K, atol=1e-4), (on_K - each_K).abs().max()
    with pytest.raises(ValueError, match="peft"):
        with adapters_disabled(vlm.model):
            pass


def test_merged_export_reloads_with_plain_transformers(tiny, tmp_path):
    vlm, trajs, _, _ = tiny
    model = lora_copy(vlm, target="language+vision")
    randomise_b(model, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = merged_export(model, tmp_path / "merged", vlm.tokenizer, vlm.image_processor)
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    exported = load_vlm(out)  # AutoModelForImageTextToText + tokenizer + image processor, no peft
    assert type(exported.model) is type(vlm.model) and not hasattr(exported.model, "peft_config")
    t = trajs[0]
    with torch.no_grad():
        want = plain_logits(replace(vlm, model=model), t.ids, t.pixel_values, t.grid_thw)
        got = plain_logits(exported, t.ids, t.pixel_values, t.grid_thw)
        base = plain_logits(vlm, t.ids, t.pixel_values, t.grid_thw)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (want - base).abs().max() > 1e-2  # the adapters (LM and vision) changed the model
    # Same weights as peft's own merge_and_unload (on a copy).
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    mine = exported.model.state_dict()
    assert merged.keys() == mine.keys()
    assert max((merged[k] - mine[k]).abs().max().item() for k in merged) < 1e-6


def test_adapter_save_load_round_trip(tiny, tmp_path):
    from peft import PeftModel

    vlm, _, row, _ = tiny
    model = lora_copy(vlm)
    randomise_b(model, seed=1)
    save_adapter(model, tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert len(saved) == 32 and all(".lora_A." in k or ".lora_B." in k for k in saved)  # 16 layers x (A, B)
    loaded = PeftModel.from_pretrained(copy.deepcopy(vlm.model), tmp_path / "adapter")
    ours = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    theirs = {n: p for n, p in loaded.named_parameters() if ".lora_" in n}
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)
    with torch.no_grad():
        assert torch.equal(row_logps(loaded, row)[0], row_logps(model, row)[0])
