"""Pack trajectories into rows by a token budget and compute per-token log-probs of a packed row.

A row is the unit of one forward (a micro-batch): its trajectories' tokens, positions and images, concatenated.
How it reaches the model (one packed sequence for a varlen kernel; a padded batch; a shared prompt run once,
then the continuations on its KV cache) is engine/forward/layouts.py's choice; every layout is exact.

Exactness (docs/PLATFORM.md, transformers 5.19): a packed row gives the same logits as separate sequences only with
4-row position ids (row 0 = 0..len-1 per sequence, rows 1-3 = that sequence's mrope T/H/W), attention_mask=None
and use_cache=False. Anything else lets sequences attend to each other, silently.

Only positions whose NEXT token carries loss go through the LM head, chunk by chunk (engine/forward/logprobs.py), so
prompt and image tokens never materialise [T, V] logits and the kept ones at most chunk_tokens × V at a time.
Shapes: T tokens in a row, K kept positions, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.forward.layouts import LAYOUTS, default_layout
from engine.forward.logprobs import head_logps
from engine.rollout.trajectory import Trajectory


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
    prefix_lens: list[int]  # each member's prompt length
    prefix_of: list[int]  # slot (0..len(members)-1) of the first member with the same prompt
    image_counts: list[int]  # images of each member: its prompt's first, then any tool's
    prompt_image_counts: list[int]  # images of each member's prompt
    class_K: torch.Tensor | None = None  # token class of each kept token (engine/algo/diagnostics.py; -1: unknown)

    @property
    def num_tokens(self) -> int:
        return int(self.ids_T.numel())

    @property
    def starts(self) -> list[int]:
        return _cumsum(self.lengths)[:-1]

    def images(self, parts: list[tuple[int, int, int]]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(pixel_values, grid_thw) of images i..j-1 of member slot s, for each (s, i, j) in `parts`, in order;
        (None, None) when that is no image."""
        if self.grid_thw is None or all(i == j for _, i, j in parts):
            return None, None
        first_image = _cumsum(self.image_counts)
        first_patch = _cumsum(self.grid_thw.prod(-1).tolist())
        pix, grids = [], []
        for s, i, j in parts:
            a, b = first_image[s] + i, first_image[s] + j
            pix.append(self.pixel_values[first_patch[a]:first_patch[b]])
            grids.append(self.grid_thw[a:b])
        return torch.cat(pix), torch.cat(grids)


def _cumsum(counts: list[int]) -> list[int]:
    out = [0]
    for n in counts:
        out.append(out[-1] + n)
    return out


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
    ids, pos, pix, grids, target, seq, offset, classes = [], [], [], [], [], [], [], []
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
        classes.append(torch.tensor([t.token_class[k] for k in where.tolist()], dtype=torch.long)
                       if t.token_class is not None else torch.full_like(where, -1))
        start += n
    return PackedRow(members=members, ids_T=torch.cat(ids), pos_4T=torch.cat(pos, 1),
                     pixel_values=torch.cat(pix) if pix else None, grid_thw=torch.cat(grids) if grids else None,
                     target_K=torch.cat(target), seq_K=torch.cat(seq), offset_K=torch.cat(offset),
                     lengths=[len(trajs[i].ids) for i in members], class_K=torch.cat(classes),
                     prefix_lens=[trajs[i].prompt_len for i in members], prefix_of=_prefix_owners(trajs, members),
                     image_counts=[len(trajs[i].grid_thw) for i in members],
                     prompt_image_counts=[len(trajs[i].prompt.grid_thw) for i in members])


def _prefix_owners(trajs: list[Trajectory], members: list[int]) -> list[int]:
    """For each member slot, the first slot whose trajectory starts from the same prompt (the same object: the
    G samples of a group), whose prompt tokens it therefore repeats exactly."""
    first: dict[int, int] = {}
    out = []
    for slot, i in enumerate(members):
        owner = first.setdefault(id(trajs[i].prompt), slot)
        n = trajs[i].prompt_len
        assert trajs[members[owner]].ids[:n] == trajs[i].ids[:n], "samples of one prompt must start with it"
        out.append(owner)
    return out


def pack(trajs: list[Trajectory], max_tokens: int) -> list[PackedRow]:
    return [pack_row(trajs, m) for m in plan_rows([len(t.ids) for t in trajs], max_tokens)]


def row_logps(model, row: PackedRow, *, temperature: float = 1.0, with_entropy: bool = False,
              chunk_tokens: int = 0, layout: str | None = None, entropy_grad: bool = False):
    """Per kept token: log p(token | its own prefix) under softmax(logits / temperature). Returns
    (logp_K, entropy_K or None). Gradients flow when called outside no_grad. chunk_tokens > 0 bounds the
    logits in memory to that many tokens at a time (engine/forward/logprobs.py). layout: engine/forward/layouts.py's name (all
    exact; tests force each); None: the fastest that applies (default_layout). entropy_grad: the entropy carries
    gradient too (a loss that needs it)."""
    device = next(model.parameters()).device
    flat_T, calls, run = LAYOUTS[layout or default_layout(model, row)](row)
    keep_K = flat_T[row.target_K - 1].to(device)  # logits at t-1 predict token t
    tok_K = row.ids_T[row.target_K].to(device)
    with head_logps(model, keep_K, tok_K, temperature=temperature, with_entropy=with_entropy,
                    chunk_tokens=chunk_tokens, calls=calls, entropy_grad=entropy_grad) as out:
        run(model, device)
    return out.logp_K, out.entropy_K
