"""Pack trajectories into rows by a token budget and compute per-token log-probs of a packed row.

Exactness (PLATFORM.md, transformers 5.19): a packed row gives the same logits as separate sequences only with
4-row position ids (row 0 = 0..len-1 per sequence, rows 1-3 = that sequence's mrope T/H/W), attention_mask=None
and use_cache=False. Anything else lets sequences attend to each other, silently.

Only positions whose NEXT token carries loss go through the LM head (`logits_to_keep` as an index tensor), so
prompt and image tokens never materialise [T, V] logits. Shapes: T tokens in a row, K kept positions, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.trajectory import Trajectory


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
                     target_K=torch.cat(target), seq_K=torch.cat(seq), offset_K=torch.cat(offset))


def pack(trajs: list[Trajectory], max_tokens: int) -> list[PackedRow]:
    return [pack_row(trajs, m) for m in plan_rows([len(t.ids) for t in trajs], max_tokens)]


def row_logps(model, row: PackedRow, *, temperature: float = 1.0, with_entropy: bool = False):
    """Per kept token: log p(token | its own prefix) under softmax(logits / temperature). Returns
    (logp_K, entropy_K or None). Gradients flow when called outside no_grad."""
    device = next(model.parameters()).device
    keep_K = (row.target_K - 1).to(device)  # logits at t-1 predict token t
    out = model(input_ids=row.ids_T.view(1, -1).to(device), position_ids=row.pos_4T.view(4, 1, -1).to(device),
                attention_mask=None, use_cache=False, logits_to_keep=keep_K,
                pixel_values=None if row.pixel_values is None else row.pixel_values.to(device, model.dtype),
                image_grid_thw=None if row.grid_thw is None else row.grid_thw.to(device))
    logits_KV = out.logits[0].float()
    if temperature != 1.0:
        logits_KV = logits_KV / temperature
    logz_K = torch.logsumexp(logits_KV, -1)
    tok_K = row.ids_T.to(device)[row.target_K.to(device)]
    logp_K = logits_KV.gather(-1, tok_K[:, None])[:, 0] - logz_K
    entropy_K = None
    if with_entropy:
        with torch.no_grad():
            p_KV = torch.softmax(logits_KV, -1)
            entropy_K = logz_K.detach() - (p_KV * logits_KV.detach()).sum(-1)
    return logp_K, entropy_K
