"""The native sampler's decoding step with fixed shapes, replayed as a CUDA graph on a GPU.

A decoding step of a 3B model through transformers' Python forward launches ~20 kernels per layer: on an H200
that is ~30 ms of launch overhead a step for 64 rows (docs/BENCHMARKS.md, "GPU"), where the step's arithmetic and
weight reads take ~2 ms. A CUDA graph records the step's kernels once and replays them with one launch, which
needs every tensor the step reads or writes at a fixed address with a fixed shape:

- the KV cache is a `StaticLayer` per decoder layer: zeroed [rows, heads, capacity, dim] buffers for the whole
  call. The prefill writes its columns as usual; a decoding step writes one column at the index held in the
  device tensor `Cursor.at` and attends over the WHOLE buffer, the columns not yet written hidden by
- an additive [rows, 1, 1, capacity] mask (0 on the prompts' real tokens and on every written step, the dtype's
  minimum elsewhere), which transformers passes to the attention as it is (a 4-D mask is never rebuilt);
- the step's token ids and 3-D rope positions live in buffers the caller fills in place before each replay;
- the step's attention is models/attention.py's DECODE_GQA, whatever the model's own: one query per row, the
  grouped query heads folded onto their kv head instead of K and V copied for each (transformers' sdpa with a mask).

Rows that finish keep decoding (their extra tokens are cut off by the caller): dropping them would change the
shapes. Sampling stays outside the graph (its random generator advances on the host side), so the tokens drawn
are the eager step's exactly; `mode="static"` runs the same fixed-shape step without capturing it (on any device:
the CPU tests check it against the ordinary step).
"""

from __future__ import annotations

import warnings

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from models.attention import DECODE_GQA, register


class Cursor:
    """Shared by every layer of one cache: whether the model is decoding, and the column a decoding step writes."""

    def __init__(self, device):
        self.decoding = False
        self.at = torch.zeros(1, dtype=torch.long, device=device)


class PreallocatedLayer(DynamicLayer):
    """transformers' DynamicLayer with its keys and values in buffers sized for the whole call: a decoding step
    writes one column in place instead of copying the layer's cache into a new tensor (torch.cat: ~25 % of a
    decoding step's CPU time measured on the tiny model, 16 rows). `keys` / `values` are views of the filled part,
    so everything that reads them (masks, lengths) is unchanged. Generation only: the writes are in place."""

    zeroed = False  # StaticLayer's unwritten columns enter the attention's product: zeros, not garbage

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            B, H, _, D = key_states.shape
            new = key_states.new_zeros if self.zeroed else key_states.new_empty
            self.k_buf = new(B, H, self.capacity, D)
            self.v_buf = new(B, H, self.capacity, value_states.shape[-1])
        n = key_states.shape[-2]
        assert self.length + n <= self.capacity, "the preallocated cache is full"
        self.k_buf[:, :, self.length:self.length + n] = key_states
        self.v_buf[:, :, self.length:self.length + n] = value_states
        self.length += n
        return self._views()

    def _views(self):
        self.keys, self.values = self.k_buf[:, :, :self.length], self.v_buf[:, :, :self.length]
        return self.keys, self.values

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self.k_buf, self.v_buf = (b.repeat_interleave(repeats, dim=0) for b in (self.k_buf, self.v_buf))
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length:
            self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
            self._views()


class StaticLayer(PreallocatedLayer):
    """A PreallocatedLayer whose decoding steps (`cursor.decoding`) write one column at the device index
    `cursor.at` and return the WHOLE buffers, zeroed (0 x NaN garbage in a masked column would poison the
    product): the same kernels and shapes at every step. The prefill is PreallocatedLayer's."""

    zeroed = True

    def __init__(self, capacity: int, cursor: Cursor):
        super().__init__(capacity)
        self.cursor = cursor

    def update(self, key_states, value_states, *args, **kwargs):
        if not (self.cursor.decoding and self.is_initialized):
            return super().update(key_states, value_states, *args, **kwargs)
        self.k_buf.index_copy_(2, self.cursor.at, key_states)
        self.v_buf.index_copy_(2, self.cursor.at, value_states)
        self.keys, self.values = self.k_buf, self.v_buf
        return self.k_buf, self.v_buf


def _full_attention_layers(model) -> int | None:
    """The text model's layer count, or None where a preallocated cache doesn't fit: sliding-window layers, or no
    readable layer count."""
    text = getattr(getattr(model, "config", None), "text_config", None)
    layers = getattr(text, "num_hidden_layers", None)
    if not layers or any(t != "full_attention" for t in (getattr(text, "layer_types", None) or ["full_attention"])):
        return None
    return layers


def _cache_of(layers: list) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = layers
    return cache


def preallocated_cache(model, capacity: int) -> DynamicCache | None:
    """A DynamicCache of PreallocatedLayer; None (transformers makes its own) where _full_attention_layers says."""
    layers = _full_attention_layers(model)
    return _cache_of([PreallocatedLayer(capacity) for _ in range(layers)]) if layers else None


def static_cache(model, capacity: int, device) -> tuple[DynamicCache, Cursor] | None:
    """(cache, cursor) for `model`, or None where fixed shapes don't hold: those of _full_attention_layers, and
    mixture-of-experts text models (their routing sorts tokens by expert: data-dependent shapes)."""
    layers = _full_attention_layers(model)
    text = model.config.text_config if layers else None
    if not layers or getattr(text, "num_experts", 0) or getattr(text, "num_local_experts", 0):
        return None
    cursor = Cursor(device)
    return _cache_of([StaticLayer(capacity, cursor) for _ in range(layers)]), cursor


class DecodeStep:
    """One decoding step over fixed buffers: `step(tok_B, pos_B, column)` -> logits [rows, vocab] of the next token.
    `mask_N11C` is the additive mask over the cache's columns (the caller's; this object opens `column` in it).
    mode "graph" captures the step as a CUDA graph on its first call and replays it after; "static" runs it
    eagerly. A capture that fails (an operation in the forward that a graph cannot hold) warns once and falls back
    to running the step eagerly, with the same results."""

    _warned = False

    def __init__(self, model, cache: DynamicCache, cursor: Cursor, mask_N11C: torch.Tensor, mode: str):
        n, device = mask_N11C.shape[0], mask_N11C.device
        self.model, self.cache, self.cursor, self.mask = model, cache, cursor, mask_N11C
        self.tok_N1 = torch.zeros(n, 1, dtype=torch.long, device=device)
        self.pos_3N1 = torch.zeros(3, n, 1, dtype=torch.long, device=device)
        self.graph, self.mode, self.logits_NV = None, mode, None
        cursor.decoding = True
        register()  # DECODE_GQA, the step's attention

    def _forward(self) -> torch.Tensor:
        text = self.model.config.text_config  # its attention modules read the implementation at every call
        usual, text._attn_implementation = text._attn_implementation, DECODE_GQA
        try:
            out = self.model(input_ids=self.tok_N1, attention_mask=self.mask, position_ids=self.pos_3N1,
                             past_key_values=self.cache, use_cache=True)
        finally:
            text._attn_implementation = usual
        return out.logits[:, -1]

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (kernel selection, workspaces): the same step
            self._forward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.logits_NV = self._forward()
        except Exception as exc:  # noqa: BLE001 -- any capture failure has the same remedy: run eagerly
            if not DecodeStep._warned:
                warnings.warn(f"the decoding step could not be captured as a CUDA graph ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); decoding eagerly instead "
                              "(set rollout.cuda_graph false to skip the attempt)", stacklevel=3)
                DecodeStep._warned = True
            self.mode = "static"
            return
        self.graph = graph

    def __call__(self, tok_B: torch.Tensor, pos_B: torch.Tensor, column: int) -> torch.Tensor:
        self.tok_N1.copy_(tok_B[:, None])
        self.pos_3N1.copy_(pos_B.view(1, -1, 1).expand(3, -1, 1))
        self.cursor.at.fill_(column)
        self.mask[..., column] = 0  # the new token attends to itself and, from now on, is attended to
        if self.mode == "graph" and self.graph is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return self.logits_NV
        return self._forward()

    def close(self) -> None:
        self.cursor.decoding = False
        self.graph = self.logits_NV = None
