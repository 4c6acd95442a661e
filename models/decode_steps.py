"""The decoding strategies of models/generation.py `generate`: each turns the last drawn tokens into the next logits.

    step = FixedStep(...) or DynamicStep(...)        # chosen by `generate` from its `decode` argument
    logits_BV = step(tok_B, next_pos_B, step_index)  # one decoding step of every live row
    step.drop(keep_B)                                # DynamicStep only: finished rows leave the cache

- `DynamicStep`: the cache grows by a column a step and finished rows are dropped from it. The step is the CPU's
  lean one where it is bitwise the model's (models/lean_decode.py), else the model's own forward. Under sdpa /
  eager a padded batch's mask is made once as the additive [N, 1, 1, keys] tensor transformers would build at every
  step (~10 % of a CPU step), and each step takes a view of it.
- `FixedStep`: fixed shapes (models/decode_graph.py's static cache): finished rows keep decoding (their extra tokens
  are cut by the caller), and with mode "graph" the step is captured once as a CUDA graph and replayed.
Shapes: B live rows, N outputs, T prompt columns, K keys, V vocab.
"""

from __future__ import annotations

import torch

from models.attention import SDPA_GQA
from models.decode_graph import DecodeStep
from models.lean_decode import lean_step_for


def _additive(keys_NK: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, 1, 1, K] additive mask: 0 where a key may be attended to, the dtype's most negative value elsewhere."""
    return torch.zeros(keys_NK.shape[0], 1, 1, keys_NK.shape[1], device=keys_NK.device).masked_fill_(
        keys_NK[:, None, None, :] == 0, torch.finfo(torch.float32).min).to(dtype)


class DynamicStep:
    drops_rows = True

    def __init__(self, model, cache, mask_BT: torch.Tensor, *, padded: bool, steps: int):
        self.model, self.cache, self.padded = model, cache, padded
        self.mask_BT = mask_BT if padded else None
        config = getattr(model, "config", None)  # (a test's wrapper module may have none: then the 2-D mask)
        self.add_N11K = None
        if padded and getattr(config, "_attn_implementation", None) in ("sdpa", "eager", SDPA_GQA):
            self.add_N11K = _additive(torch.cat([mask_BT, mask_BT.new_ones(mask_BT.shape[0], steps)], 1),
                                      model.dtype)
        self.lean = lean_step_for(model)

    def drop(self, keep_B: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep_B)
        if self.padded:
            self.mask_BT = self.mask_BT[keep_B]
        if self.add_N11K is not None:
            self.add_N11K = self.add_N11K[keep_B]

    def __call__(self, tok_B: torch.Tensor, next_pos_B: torch.Tensor, step: int) -> torch.Tensor:
        if self.padded:
            self.mask_BT = torch.cat([self.mask_BT, torch.ones_like(self.mask_BT[:, :1])], dim=1)
        step_mask = self.mask_BT if self.add_N11K is None else self.add_N11K[..., :self.mask_BT.shape[1]]
        pos_3B1 = next_pos_B.view(1, -1, 1).expand(3, -1, 1)
        if self.lean is not None:  # (SDPA_GQA: a padded batch has its additive mask)
            return self.lean(tok_B, pos_3B1, self.cache, step_mask)
        out = self.model(input_ids=tok_B[:, None], attention_mask=step_mask, past_key_values=self.cache,
                         use_cache=True, position_ids=pos_3B1)
        self.cache = out.past_key_values
        return out.logits[:, -1]

    def close(self) -> None:
        pass


class FixedStep:
    drops_rows = False

    def __init__(self, model, cache, cursor, mask_BT: torch.Tensor, *, capacity: int, steps: int, mode: str):
        n = mask_BT.shape[0]
        self.prompt_len = mask_BT.shape[1]
        # the additive mask over every column of the cache; DecodeStep opens each step's column
        mask_N11C = _additive(torch.cat([mask_BT, mask_BT.new_zeros(n, capacity - self.prompt_len)], 1),
                              model.dtype)
        self.step = DecodeStep(model, cache, cursor, mask_N11C, mode)

    def drop(self, keep_B: torch.Tensor) -> None:
        raise AssertionError("a fixed-shape step keeps every row")

    def __call__(self, tok_B: torch.Tensor, next_pos_B: torch.Tensor, step: int) -> torch.Tensor:
        return self.step(tok_B, next_pos_B, self.prompt_len + step)

    def close(self) -> None:
        self.step.close()
