"""The policy's weights for the vLLM sampler, one parameter group at a time, straight from FSDP2's shards.

    sampler.push_weights(policy_weights(model))       # engine/algo/step.py, after every optimizer step

`policy_weights` is a lazy stream of (name, tensor) pairs in Hugging Face checkpoint naming. It walks
`engine.runtime.distributed.parameter_groups` - each vision block, the rest of the vision tower, each decoder layer,
the rest of the model, the units FSDP2 shards - and only when the consumer reaches a group does it gather that
group's parameters (`full_tensor()`, an all-gather per parameter under FSDP2; the tensors themselves in one
process) and, under LoRA, fold the group's adapters into their base weights (W + B·A·scaling,
engine.runtime.lora.merged_state_dict on the group alone). So a rank holds at most one group's full tensors
(the largest: a decoder layer or the embeddings and LM head) beside its shards, never a copy of the whole
model, and the tensors stay on the device they were gathered on (the GPU beside a GPU engine). A decoder
layer's fused projections (q/k/v, gate/up) arrive together, in one group: vLLM loads a fused layer whole.

Collective under FSDP2: every rank must consume the stream to its end, in the same order (every rank pushes to its
own engine after every step, so they do). The groups come in `parameter_groups`' order, the embeddings and LM
head last: vLLM holds a layer's tensors until all of them arrived (a padded vocabulary: until the load ends).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from engine.runtime import distributed as D
from engine.runtime.lora import is_peft, merged_state_dict


def weight_groups(model) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Each parameter group's full tensors, LoRA merged, as (HF name, tensor) pairs; gathered when reached."""
    peft = is_peft(model)
    for group in D.parameter_groups(model):
        full: dict[int, torch.Tensor] = {}  # a tied parameter (two names) is gathered once
        for _, p in group:
            if id(p) not in full:
                full[id(p)] = D.full_tensor(p)  # detached: nothing here records a graph
        named = [(name, full[id(p)]) for name, p in group]
        yield list(merged_state_dict(model, dict(named)).items()) if peft else named
        del full, named  # before the next group is gathered: one group's tensors at a time


def policy_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights for the sampler: (name, tensor) in HF checkpoint naming, LoRA merged, group by group."""
    for group in weight_groups(model):
        yield from group
        del group  # released before the next group is gathered
