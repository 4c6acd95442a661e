"""LoRA on the policy (peft 0.21): adapters on the language model's attention projections by default, the
reference model as the same weights with the adapters switched off, adapter-only saves and a merged export.

    model = apply_lora(vlm.model, r=16, alpha=32, dropout=0.0)          # a peft PeftModel, base frozen
    with adapters_disabled(model):                                       # the reference policy: no second copy
        ref = rows_logps(model, rows)
    save_adapter(model, out_dir)                                         # adapter_model.safetensors + config
    merged_export(model, out_dir, tokenizer, image_processor)           # plain HF folder, base + B·A·scaling

Targets are a regex over module names, because the vision tower's MLP shares `gate_proj/up_proj/down_proj`
with the language model's (docs/PLATFORM.md): a plain name list would put adapters in the vision tower too.
`target="language+vision"` adds the vision blocks' attention (`qkv`, `proj`).

The model is wrapped as a plain `PeftModel` (no task_type), whose forward passes every keyword through to the
HF model unchanged (position_ids, logits_to_keep, past_key_values, pixel_values): the engine calls it exactly
as it calls the bare model. Under FSDP the HF model inside (not the wrapper) is sharded: see distributed.py.

The merged export never touches the training model: it merges from a state dict (the model's own, or the
full one gathered from FSDP shards) into new tensors, so training continues bit-for-bit unchanged.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

TARGETS = ("language", "language+vision")
LM_PATTERN = r".*language_model.*\.({names})"
VISION_PATTERN = r".*visual\.blocks\.\d+\..*\.({names})"
PEFT_PREFIX = "base_model.model."  # PeftModel.state_dict() keys = this + the HF model's own keys


def target_regex(target: str, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
                 vision_modules=("qkv", "proj")) -> str:
    """The regex peft fullmatches against module names."""
    if target not in TARGETS:
        raise ValueError(f"lora target {target!r} is unknown; choose one of {TARGETS}")
    if not target_modules:
        raise ValueError("lora target_modules is empty: name at least one projection, e.g. ('q_proj', 'v_proj')")
    parts = [LM_PATTERN.format(names="|".join(target_modules))]
    if target == "language+vision":
        parts.append(VISION_PATTERN.format(names="|".join(vision_modules)))
    return "|".join(f"(?:{p})" for p in parts)


def apply_lora(model, *, r: int, alpha: float, dropout: float, target: str = "language",
               target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), vision_modules=("qkv", "proj")):
    """Wrap `model` (modified in place: its Linear layers gain adapters) in a PeftModel; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ValueError(f"lora r = {r} must be >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora dropout = {dropout} must be in [0, 1)")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=target_regex(target, target_modules, vision_modules))
    return get_peft_model(model, config)  # raises ValueError when the regex matches no module


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


@contextlib.contextmanager
def adapters_disabled(model):
    """Run the base weights (the reference policy). A no-op for a model without adapters is NOT offered: the
    caller holding a plain model needs a real reference copy, and silently returning the policy would make KL 0."""
    if not is_peft(model):
        raise ValueError("adapters_disabled needs a peft model (apply_lora); a full fine-tune needs its own "
                         "frozen reference copy")
    with model.disable_adapter():
        yield model


def save_adapter(model, out_dir: str | Path, *, state_dict: dict | None = None) -> Path:
    """adapter_config.json + adapter_model.safetensors. Under FSDP pass the full state dict gathered on this
    rank (distributed.full_state_dict, every rank calls it; only the main rank saves)."""
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    _unwrap_auto_mapping(model, out / "adapter_config.json")
    return out


def _unwrap_auto_mapping(model, config_path: Path) -> None:
    """peft records the base model's class for AutoPeftModel; under FSDP2 that is the generated
    `FSDP<Class>`, which nothing can import. Write the class FSDP wrapped instead."""
    import json

    config = json.loads(config_path.read_text())
    mapping = config.get("auto_mapping") or {}
    if not str(mapping.get("base_model_class", "")).startswith("FSDP"):
        return
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model.get_base_model()).__mro__ if not issubclass(c, FSDPModule))
    config["auto_mapping"] = {"base_model_class": cls.__name__, "parent_library": cls.__module__}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _check_plain(state: dict[str, torch.Tensor]) -> None:
    from torch.distributed.tensor import DTensor

    sharded = [k for k, v in state.items() if isinstance(v, DTensor)]
    if sharded:
        raise ValueError(f"{sharded[0]} is a DTensor shard: pass state_dict=distributed.full_state_dict(model) "
                         "(gathered on every rank, saved on the main one)")


def merged_state_dict(model, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The HF model's own state dict with every LoRA layer folded in: W + (B @ A) * scaling (peft's
    get_delta_weight, computed in fp32 and cast back to W's dtype). New tensors; the model is untouched."""
    from peft.tuners.lora import Linear as LoraLinear

    state = model.state_dict() if state is None else state
    _check_plain(state)
    adapter = model.active_adapter
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(PEFT_PREFIX):
            raise ValueError(f"{key}: not a PeftModel state dict key (expected the prefix {PEFT_PREFIX!r})")
        if ".lora_" in key:
            continue
        name = key[len(PEFT_PREFIX):]
        if ".base_layer." not in name:
            out[name] = value
            continue
        module_name, leaf = name.split(".base_layer.")
        layer = model.get_base_model().get_submodule(module_name)
        if not isinstance(layer, LoraLinear) or layer.fan_in_fan_out or layer.use_dora.get(adapter, False):
            raise ValueError(f"{module_name}: merged_export handles plain LoRA on nn.Linear only "
                             f"(got {type(layer).__name__}, DoRA or fan_in_fan_out)")
        if leaf == "weight":
            a = state[f"{PEFT_PREFIX}{module_name}.lora_A.{adapter}.weight"].float()
            b = state[f"{PEFT_PREFIX}{module_name}.lora_B.{adapter}.weight"].float()
            value = (value.float() + (b @ a) * layer.scaling[adapter]).to(value.dtype)
        out[f"{module_name}.{leaf}"] = value
    return out


def merged_export(model, out_dir: str | Path, tokenizer=None, image_processor=None, *,
                  state_dict: dict | None = None) -> Path:
    """A plain Hugging Face folder (base + merged adapters) that AutoModelForImageTextToText.from_pretrained
    loads without peft. Under FSDP pass the gathered full state dict (see save_adapter)."""
    out = Path(out_dir)
    merged = merged_state_dict(model, state_dict)
    # The HF model saves it: its save_pretrained maps keys to the hub layout and writes config + generation config.
    model.get_base_model().save_pretrained(out, state_dict=merged, safe_serialization=True)
    for extra in (tokenizer, image_processor):
        if extra is not None:
            extra.save_pretrained(out)
    return out
