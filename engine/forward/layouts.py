"""How a packed row (engine/forward/packing.py) is laid out for the model's forward(s). All three are exact: every
trajectory's logits equal those of a forward of it alone (tests/test_engine_packing.py).

- "packed": ONE sequence [1, T] with 4-row positions (row 0 restarts at each trajectory): a variable-length
  kernel (models/attention.py) keeps trajectories apart with cumulative lengths, no mask. Under sdpa it works
  too, but through a dense T×T block mask (transformers builds it): the choice only for a varlen kernel.
- "padded": a right-padded batch [S, L] of the row's S trajectories, plain causal attention. Padding sits at the
  end of each sequence, where causal attention never lets a real token see it.
- "prefix": the trajectories of one prompt share its tokens (the G samples of a group): the prompts run once,
  [U, P] with their images (the vision tower encodes U prompt images, not S), into a KV cache that keeps its
  autograd graph; the cache is repeated to the S trajectories and their continuations [S, C] (tool images
  included) run on it with a padding mask. Gradients reach the shared prefix from every continuation (autograd
  sums them). Needs no gradient checkpointing while training (transformers turns the cache off under it; the frozen
  reference in eval mode keeps it) and no FSDP (two forwards before one backward): default_layout picks "packed"
  (varlen) or "padded" (sdpa / eager) then, and when no prompt repeats in the row. Under varlen the prompts' images
  go through the kernel and the two batched forwards through models/attention.py's sdpa fallback.

In "packed" and "padded", an image that several trajectories of the row share (their prompt's: the G samples of a
group) is encoded ONCE where the model allows it (`shares_images`): the vision tower runs on the row's distinct
images, their features are repeated to every placeholder that shows them, and the text model gets the embeddings
(autograd sums the repeats' gradients into the one encoding). On a group of 8 with one 448 px image each that is
1/8 of the vision work (measured share of the 3B update's model FLOPs: 30 %, docs/BENCHMARKS.md). "prefix"
shares the prompt's images by construction.

Each layout returns (flat_T, calls, run): the index of every row position in the LM head's inputs (flattened
and concatenated over the `calls` forwards), and `run(model, device)`, which makes those forwards.
Shapes: T row tokens, S trajectories, L longest, U distinct prompts, P longest prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from models.attention import VARLEN, uses_varlen

if TYPE_CHECKING:
    from engine.forward.packing import PackedRow


def _images(pixel_values, grid_thw, model, device) -> dict:
    return {"pixel_values": None if pixel_values is None else pixel_values.to(device, model.dtype),
            "image_grid_thw": None if grid_thw is None else grid_thw.to(device)}


def shares_images(model, row: PackedRow) -> bool:
    """Whether "packed" / "padded" encode the row's shared images once: some image repeats in the row, and the model
    takes its image features through its input embeddings alone (Qwen2-VL, Qwen2.5-VL; not Qwen3-VL, whose
    deepstack layers read vision features again) outside FSDP (whose root parameters are only whole inside the
    root module's forward)."""
    if row.grid_thw is None or len(set(row.prefix_of)) == len(row.prefix_of) or not any(row.prompt_image_counts):
        return False
    base = _base(model)
    return getattr(base.config, "model_type", None) in ("qwen2_vl", "qwen2_5_vl") and not _sharded(base)


def distinct_images(row: PackedRow) -> tuple[list[tuple[int, int, int]], list[int]]:
    """(parts, use): the row's distinct images as (slot, first, end) parts for `row.images` (each prompt's images
    once, at its first slot; every tool image), and for each image of the row in order, its index among them."""
    parts, first_of, use = [], {}, []
    for s, (n_prompt, n_all) in enumerate(zip(row.prompt_image_counts, row.image_counts)):
        owner = row.prefix_of[s]
        if owner not in first_of:
            first_of[owner] = len(parts)
            parts += [(s, i, i + 1) for i in range(n_prompt)]
        use += [first_of[owner] + i for i in range(n_prompt)]
        use += list(range(len(parts), len(parts) + n_all - n_prompt))
        parts += [(s, i, i + 1) for i in range(n_prompt, n_all)]
    return parts, use


def _inputs(ids, row: PackedRow, model, device) -> dict:
    """The forward's token inputs: ids and every image's pixels, or (shares_images) the embeddings with each
    distinct image encoded once."""
    if not shares_images(model, row):
        return {"input_ids": ids.to(device), **_images(row.pixel_values, row.grid_thw, model, device)}
    base, (parts, use) = _base(model), distinct_images(row)
    pixels, grids = row.images(parts)
    placeholders = ids == base.config.image_token_id  # on the host: counted without a device sync
    feats = base.get_image_features(pixels.to(device, model.dtype), grids.to(device)).pooler_output
    shown = torch.cat([feats[k] for k in use])  # repeats: one tensor, several uses
    if int(placeholders.sum()) != shown.shape[0]:  # a silent misfit would shift every later image
        raise ValueError(f"the row has {int(placeholders.sum())} image placeholders but its images make "
                         f"{shown.shape[0]} feature tokens")
    embeds = base.get_input_embeddings()(ids.to(device))
    mask = placeholders.to(device).unsqueeze(-1).expand_as(embeds)
    return {"input_ids": None, "inputs_embeds": embeds.masked_scatter(mask, shown.to(embeds.dtype))}


def packed(row: PackedRow):
    T = row.num_tokens

    def run(model, device):
        model(position_ids=row.pos_4T.view(4, 1, T).to(device), attention_mask=None, use_cache=False,
              logits_to_keep=0, **_inputs(row.ids_T.view(1, T), row, model, device))
    return torch.arange(T), 1, run


def padded(row: PackedRow):
    """Padding repeats the row's first token (never an image placeholder) and continues row 0's positions, so
    transformers sees S plain causal sequences (no restart in row 0: nothing is detected as packed)."""
    S, L = len(row.lengths), max(row.lengths)
    ids_SL = row.ids_T[0].repeat(S, L)
    pos_4SL = torch.arange(L).repeat(4, S, 1)
    flat = []
    for s, (start, n) in enumerate(zip(row.starts, row.lengths)):
        ids_SL[s, :n] = row.ids_T[start:start + n]
        pos_4SL[1:, s, :n] = row.pos_4T[1:, start:start + n]
        flat.append(torch.arange(n) + s * L)

    def run(model, device):
        model(position_ids=pos_4SL.to(device), attention_mask=None, use_cache=False, logits_to_keep=0,
              **_inputs(ids_SL, row, model, device))
    return torch.cat(flat), 1, run


def prefix(row: PackedRow):
    owners = sorted(set(row.prefix_of))  # the member slot whose tokens stand for each distinct prompt
    U, S = len(owners), len(row.lengths)
    u_S = [owners.index(o) for o in row.prefix_of]
    P = max(row.prefix_lens[o] for o in owners)
    cont = [n - row.prefix_lens[s] for s, n in enumerate(row.lengths)]  # continuation lengths
    C = max(cont)
    pad = row.ids_T[0]
    pre_ids_UP, pre_pos_3UP = pad.repeat(U, P), torch.zeros(3, U, P, dtype=torch.long)
    for u, o in enumerate(owners):
        start, p = row.starts[o], row.prefix_lens[o]
        pre_ids_UP[u, :p] = row.ids_T[start:start + p]
        pre_pos_3UP[:, u, :p] = row.pos_4T[1:, start:start + p]
    ids_SC, pos_3SC = pad.repeat(S, C), torch.zeros(3, S, C, dtype=torch.long)
    mask_SK = torch.ones(S, P + C, dtype=torch.long)  # keys: the (padded) prompt, then the continuation
    flat = []
    for s, start in enumerate(row.starts):
        p, c = row.prefix_lens[s], cont[s]
        ids_SC[s, :c] = row.ids_T[start + p:start + p + c]
        pos_3SC[:, s, :c] = row.pos_4T[1:, start + p:start + p + c]
        mask_SK[s, p:P] = 0  # the prompt's own right padding
        flat.append(torch.cat([torch.arange(p) + u_S[s] * P, torch.arange(c) + U * P + s * C]))
    pre_images = row.images([(o, 0, row.prompt_image_counts[o]) for o in owners])
    cont_images = row.images([(s, row.prompt_image_counts[s], n) for s, n in enumerate(row.image_counts)])

    def run(model, device):
        out = model(input_ids=pre_ids_UP.to(device), position_ids=pre_pos_3UP.to(device), attention_mask=None,
                    use_cache=True, logits_to_keep=0, **_images(*pre_images, model, device))
        cache = out.past_key_values
        cache.batch_select_indices(torch.tensor(u_S, device=device))  # differentiable: indexing, not a copy_
        model(input_ids=ids_SC.to(device), position_ids=pos_3SC.to(device), attention_mask=mask_SK.to(device),
              past_key_values=cache, use_cache=True, logits_to_keep=0, **_images(*cont_images, model, device))
    return torch.cat(flat), 2, run


LAYOUTS = {"packed": packed, "padded": padded, "prefix": prefix}


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _sharded(base) -> bool:
    """Whether FSDP2 wraps the model (its root parameters are whole only inside the root module's forward)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(base, FSDPModule)


def default_layout(model, row: PackedRow) -> str:
    """"prefix" where a prompt has several samples in the row and the model allows it (not under FSDP, nor under
    gradient checkpointing while training: transformers then turns the KV cache off; a reference model in eval
    mode keeps it), else "packed" under a varlen kernel and "padded" under sdpa / eager. transformers' own
    flash_attention_2 path always gets "packed". Measured on an H200 (3B shape, docs/BENCHMARKS.md): prefix 1.86 s
    per update against varlen packed 3.20 s, and 0.63 against 1.08 s per reference forward."""
    base, varlen = _base(model), uses_varlen(model)
    shared = len(set(row.prefix_of)) < len(row.lengths)  # some prompt has several samples in this row
    continues = all(n > p for n, p in zip(row.lengths, row.prefix_lens))
    no_cache = getattr(base, "is_gradient_checkpointing", False) and base.training
    flash_attention_2 = varlen and getattr(base.config, "_attn_implementation", None) != VARLEN
    if shared and continues and not _sharded(base) and not no_cache and not flash_attention_2:
        return "prefix"
    return "packed" if varlen else "padded"
