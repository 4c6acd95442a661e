"""The weight sync's worker: engine/rollout/weight_sync.policy_weights on an FSDP2-sharded tiny VLM, with the bytes it
holds counted. tests/test_weight_sync.py launches it under torchrun and imports `sync_report` for one process.

    torchrun --nproc_per_node 2 tests/dist_sync_worker.py OUT_DIR

Two models: the full policy, and LoRA (language + vision targets, lora_B drawn at random so the merge is not the
identity). Each is sharded (under torchrun), then its stream is consumed the way vLLM consumes it (name by name,
keeping nothing) while `Held` counts the bytes of every tensor the sync made that is still alive: the gathers
(`engine.runtime.distributed.full_tensor`, patched to register what it returns) and the tensors it yields. The
reference is the gathered full state dict (LoRA: merged by engine.runtime.lora.merged_state_dict), on rank 0.
Rank r writes OUT/rank{r}.json: per model, the names in stream order, the largest |pushed − reference|, the peak
bytes held, the largest group's bytes (its full tensors plus, under LoRA, its merged copies) and the model's.
"""

from __future__ import annotations

import json
import sys
import weakref
from pathlib import Path

if __name__ == "__main__":  # torchrun runs this file as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.distributed.fsdp import FSDPModule

from engine.rollout import weight_sync
from engine.runtime import distributed as D
from engine.runtime.lora import apply_lora, merged_state_dict
from tests.engine_helpers import load_tiny


class Held:
    """Bytes of the tensors registered with `add` that are still alive (a weakref finalizer per tensor object), and
    their peak."""

    def __init__(self):
        self.live: dict[int, int] = {}
        self.peak = 0

    def add(self, t: torch.Tensor) -> torch.Tensor:
        if id(t) not in self.live:
            self.live[id(t)] = t.numel() * t.element_size()
            weakref.finalize(t, self.live.pop, id(t), None)
            self.peak = max(self.peak, sum(self.live.values()))
        return t


def _bytes(p: torch.Tensor) -> int:
    return p.numel() * p.element_size()  # a DTensor's numel is the whole tensor's


def largest_group_bytes(model) -> int:
    """The most one group can hold at once: its full tensors (tied ones once), plus a merged copy of each
    LoRA base weight."""
    worst = 0
    for group in D.parameter_groups(model):
        unique = {id(p): p for _, p in group}
        merged = sum(_bytes(p) for n, p in group if n.endswith(".base_layer.weight"))
        worst = max(worst, sum(_bytes(p) for p in unique.values()) + merged)
    return worst


def sync_report(model, reference: dict[str, torch.Tensor]) -> dict:
    """Consume policy_weights(model) as vLLM does, counting what it holds; compare with `reference` (empty on
    ranks other than 0: nothing compared there)."""
    held, real = Held(), D.full_tensor
    D.full_tensor = lambda p: held.add(real(p))  # every gather the sync makes is registered
    names, worst = [], 0.0
    try:
        for name, t in weight_sync.policy_weights(model):
            held.add(t)
            names.append(name)
            if reference:
                worst = max(worst, (t.float().cpu() - reference[name].float()).abs().max().item())
            del t
    finally:
        D.full_tensor = real
    return {"names": names, "max_abs_diff": worst, "peak_bytes": held.peak,
            "largest_group_bytes": largest_group_bytes(model),
            "model_bytes": sum(_bytes(p) for p in model.parameters()), "reference_keys": sorted(reference)}


def lora_model():
    torch.manual_seed(0)
    model = apply_lora(load_tiny().model, r=4, alpha=8.0, dropout=0.0, target="language+vision")
    with torch.no_grad():  # lora_B starts at 0 (a merge that changes nothing): give it values
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape) * 0.1)
    return model


def main(out: str) -> None:
    d = D.init()
    result = {}
    for kind in ("full", "lora"):
        model = load_tiny().model if kind == "full" else lora_model()
        D.shard_model(model)
        state = D.full_state_dict(model)  # collective; rank 0 gets the tensors
        reference = merged_state_dict(model, state) if kind == "lora" and state else state
        result[kind] = sync_report(model, reference)
        result[kind]["sharded"] = any(isinstance(m, FSDPModule) for m in model.modules())
    Path(out, f"rank{d.rank}.json").write_text(json.dumps(result))
    D.barrier()
    D.close()


if __name__ == "__main__":
    main(sys.argv[1])
