"""Pack trajectories into rows by a token budget and compute per-token log-probs of a packed row.

A row is the unit of one forward (a micro-batch). How it reaches the model depends on the attention kernel:
- a variable-length kernel (models/attention.py's `varlen_attn`, flash-attn): ONE sequence of T tokens, each
  trajectory attending only to itself through the kernel's cumulative lengths, no mask at all;
- sdpa / eager (CPU): a right-padded batch [S, L] of the row's S trajectories, plain causal attention. A packed
  row there would cost a dense T×T block mask (transformers builds it from the position ids), i.e. S times the
  attention work; padding costs S·L − T tokens of the other layers instead (measured: docs/BENCHMARKS.md).

Exactness (PLATFORM.md, transformers 5.19): a packed row gives the same logits as separate sequences only with
4-row position ids (row 0 = 0..len-1 per sequence, rows 1-3 = that sequence's mrope T/H/W), attention_mask=None
and use_cache=False. Anything else lets sequences attend to each other, silently. The padded batch is exact
because padding sits at the END of each sequence: causal attention never lets a real token see it.

Only positions whose NEXT token carries loss go through the LM head, chunk by chunk (engine/logprobs.py), so
prompt and image tokens never materialise [T, V] logits and the kept ones at most chunk_tokens × V at a time.
Shapes: T tokens in a row, S trajectories in a row, L longest of them, K kept positions, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.logprobs import head_logps
from engine.trajectory import Trajectory
from models.attention import uses_varlen


@dataclass
class PackedRow:
    members: list[int]  # indices of the trajectories in this row, in order
    ids_T: torch.Tensor
    pos_4T: torch.Tensor
    pixel_values: torch.Tensor | None
    grid_thw: torch.Tensor | None
    target_K: torch.Tensor  # row positions t whose token is predicted (mask 1), logits taken at t-1
    seq_K: torch.Tensor  # index (into `members`'s global numbering) of the trajectory each kept token belongs to
    offset_K: torch.Tensor  # position of each kept token inside its own trajectory
    lengths: list[int]  # tokens of each member, in order

    @property
    def num_tokens(self) -> int:
        return int(self.ids_T.numel())


def plan_rows(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """First-fit decreasing: group sequence indices into rows of at most `max_tokens` tokens (a longer sequence
    gets a row of its own). Deterministic: ties keep input order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_tokens - lengths[i])
    return [sorted(r) for r in rows]


def pack_row(trajs: list[Trajectory], members: list[int]) -> PackedRow:
    ids, pos, pix, grids, target, seq, offset = [], [], [], [], [], [], []
    start = 0
    for i in members:
        t = trajs[i]
        n = len(t.ids)
        assert t.positions is not None and t.positions.shape == (3, n), "finish() the trajectory first"
        ids.append(torch.tensor(t.ids))
        pos.append(torch.cat([torch.arange(n).view(1, n), t.positions], 0))
        if len(t.grid_thw):
            pix.append(t.pixel_values)
            grids.append(t.grid_thw)
        where = torch.tensor([k for k in range(1, n) if t.mask[k]], dtype=torch.long)
        target.append(where + start)
        offset.append(where)
        seq.append(torch.full_like(where, i))
        start += n
    return PackedRow(members=members, ids_T=torch.cat(ids), pos_4T=torch.cat(pos, 1),
                     pixel_values=torch.cat(pix) if pix else None, grid_thw=torch.cat(grids) if grids else None,
                     target_K=torch.cat(target), seq_K=torch.cat(seq), offset_K=torch.cat(offset),
                     lengths=[len(trajs[i].ids) for i in members])


def pack(trajs: list[Trajectory], max_tokens: int) -> list[PackedRow]:
    return [pack_row(trajs, m) for m in plan_rows([len(t.ids) for t in trajs], max_tokens)]


def _as_packed(row: PackedRow):
    """(input_ids [1, T], position_ids [4, 1, T], flat index of every row position)."""
    T = row.num_tokens
    return row.ids_T.view(1, T), row.pos_4T.view(4, 1, T), torch.arange(T)


def _as_padded(row: PackedRow):
    """(input_ids [S, L], position_ids [4, S, L], flat index s·L + j of every row position), right-padded.
    Padding repeats the row's first token (never an image placeholder) and continues row 0's positions, so
    transformers sees S plain causal sequences (no restart in row 0: nothing is detected as packed)."""
    S, L = len(row.lengths), max(row.lengths)
    ids_SL = row.ids_T[0].repeat(S, L)
    pos_4SL = torch.arange(L).repeat(4, S, 1)
    flat = []
    start = 0
    for s, n in enumerate(row.lengths):
        ids_SL[s, :n] = row.ids_T[start:start + n]
        pos_4SL[1:, s, :n] = row.pos_4T[1:, start:start + n]
        flat.append(torch.arange(n) + s * L)
        start += n
    return ids_SL, pos_4SL, torch.cat(flat)


LAYOUTS = {"packed": _as_packed, "padded": _as_padded}


def row_logps(model, row: PackedRow, *, temperature: float = 1.0, with_entropy: bool = False,
              chunk_tokens: int = 0, layout: str | None = None):
    """Per kept token: log p(token | its own prefix) under softmax(logits / temperature). Returns
    (logp_K, entropy_K or None). Gradients flow when called outside no_grad. chunk_tokens > 0 bounds the
    logits in memory to that many tokens at a time (engine/logprobs.py). layout None: "packed" when the model's
    attention is variable-length, else "padded" (both exact; tests force either)."""
    device = next(model.parameters()).device
    layout = layout or ("packed" if uses_varlen(model) else "padded")
    ids, pos, flat_T = LAYOUTS[layout](row)
    keep_K = flat_T[row.target_K - 1].to(device)  # logits at t-1 predict token t
    tok_K = row.ids_T[row.target_K].to(device)
    with head_logps(model, keep_K, tok_K, temperature=temperature, with_entropy=with_entropy,
                    chunk_tokens=chunk_tokens) as out:
        model(input_ids=ids.to(device), position_ids=pos.to(device), attention_mask=None, use_cache=False,
              logits_to_keep=0,
              pixel_values=None if row.pixel_values is None else row.pixel_values.to(device, model.dtype),
              image_grid_thw=None if row.grid_thw is None else row.grid_thw.to(device))
    return out.logp_K, out.entropy_K
