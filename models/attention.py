"""Variable-length attention for packed rows, plugged into transformers' attention interface.

    from models.attention import VARLEN, uses_varlen
    load_vlm(path, attn_implementation=VARLEN)          # models/load.py does the registration

Several sequences packed into one row [1, T] attend each to itself through a variable-length kernel given the
cumulative sequence lengths (cu_seqlens): no T×T mask, no work across sequences. The kernel is torch's own
`torch.nn.attention.varlen.varlen_attn` (flash attention inside torch, CUDA only), or flash-attn's
`flash_attn_varlen_func` when that package is installed. Qwen2.5-VL's vision tower takes the same path: with an
implementation whose name contains "flash", transformers hands it the windows' and images' cu_seqlens, so each
vision block is ONE varlen call instead of one sdpa call per window.

What transformers passes (5.17-5.19): text layers give `position_ids` (row 0 of the 4-row packed positions;
a sequence starts where it is 0) and a 2-D padding mask or None (the flash mask function); the vision tower
gives `cu_seq_lens_q/k` and `max_length_q/k`. Anything else (a KV cache, a padding mask: the sampler's left-padded
batches) goes to sdpa with the equivalent boolean mask, so one loaded model serves training and sampling.
Shapes: B batch, H heads, Q query tokens, K key tokens, D head dim, N sequences.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

VARLEN = "flash_varlen_torch"  # must contain "flash": see the docstring


def uses_varlen(model) -> bool:
    """True when the model's attention takes packed rows without a mask (ours or flash-attn's)."""
    return "flash" in (getattr(model.config, "_attn_implementation", None) or "")


def _varlen_kernel():
    """(fn, causal_kwargs(is_causal) -> dict): flash-attn's varlen function when installed, else torch's."""
    try:
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func, "flash_attn"
    except ImportError:
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn, "torch"


def _torch_varlen_kwargs(fn, is_causal: bool, scale: float | None, head_dim: int) -> tuple[dict, float]:
    """(keyword arguments, factor to pre-scale queries by) for torch's varlen_attn, whose signature moved:
    2.10 took `is_causal`; 2.11+ take window_size=(-1, 0) for causal ((-1, -1): full) and `scale` (2.13 checked
    in its source; a release without `scale` gets the queries pre-scaled instead)."""
    params = inspect.signature(fn).parameters
    kw = ({"window_size": (-1, 0) if is_causal else (-1, -1)} if "window_size" in params
          else {"is_causal": is_causal})
    if scale is None:
        return kw, 1.0
    if "scale" in params:
        return {**kw, "scale": scale}, 1.0
    return kw, scale * head_dim**0.5  # the kernel's default scale is 1/sqrt(head_dim)


def varlen_available(device) -> bool:
    """Whether a varlen kernel runs on `device`: a CUDA device of compute capability 8.0 or above (flash
    attention's floor: Ampere) with flash-attn or torch's varlen module importable."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device)[0] < 8:
        return False
    try:
        _varlen_kernel()
    except ImportError:
        return False
    return True


def _native_gqa(fn, device: torch.device) -> bool:
    """Whether torch's varlen_attn takes fewer kv heads itself: `enable_gqa` exists (2.13) and the flash backend
    runs (2.13 picks cuDNN on compute capability >= 10, which refuses GQA)."""
    if "enable_gqa" not in inspect.signature(fn).parameters:
        return False
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 10


def cu_seqlens_from_positions(pos_T: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sequence starts are where the (plain, row-0) position is 0. Returns (cu_seqlens [N+1] int32, max length).
    sync point: the max length is a host int the kernel needs."""
    T = pos_T.numel()
    assert T, "no positions"
    starts = torch.nonzero(pos_T == 0)[:, 0]
    cu = torch.cat([starts, starts.new_tensor([T])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


_LAST: list = [None, None]  # (position_ids, its cu_seqlens): every text layer of one forward gets the same tensor


def _row_seqlens(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """cu_seqlens of a packed row, computed once per forward (one host sync) instead of once per layer."""
    if _LAST[0] is not position_ids:
        _LAST[0], _LAST[1] = position_ids, cu_seqlens_from_positions(position_ids.reshape(-1))
    return _LAST[1]


def _sdpa_fallback(query_BHQD, key_BHKD, value_BHKD, attention_mask, scaling, is_causal):
    """Ordinary batches (the sampler's, and the "prefix" layout's prompts and continuations): causal within each
    row, a 2-D padding mask if given, KV cache aware; a 4-D mask (models/decode_graph.py's fixed-shape decoding
    step) is added to the scores as it is. As transformers' sdpa does on a GPU: with no padding and as many queries
    as keys the kernel's own causal flag (CUDA's flash kernel takes no mask), and under a mask every query head gets
    its K and V (CUDA's kernels that take a mask want them repeated)."""
    Q, K = query_BHQD.shape[2], key_BHKD.shape[2]
    mask, causal = None, False
    if attention_mask is not None and attention_mask.ndim == 4:  # an additive mask built whole by the caller
        mask = attention_mask[:, :, :, :K].to(query_BHQD.dtype)
    elif attention_mask is None and is_causal and Q == K and Q > 1:
        causal = True
    else:
        if is_causal and Q > 1:  # queries are the last Q of the K keys
            mask = torch.ones(Q, K, dtype=torch.bool, device=query_BHQD.device).tril(K - Q)[None, None]
        if attention_mask is not None:
            pad = attention_mask[:, -K:].bool()[:, None, None, :]
            mask = pad if mask is None else mask & pad
    groups = query_BHQD.shape[1] // key_BHKD.shape[1]
    if groups > 1 and mask is not None and query_BHQD.is_cuda:
        key_BHKD, value_BHKD = key_BHKD.repeat_interleave(groups, 1), value_BHKD.repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(query_BHQD, key_BHKD, value_BHKD, attn_mask=mask, is_causal=causal,
                                          scale=scaling, enable_gqa=query_BHQD.shape[1] != key_BHKD.shape[1])


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             is_causal=None, position_ids=None, cu_seq_lens_q=None, cu_seq_lens_k=None,
                             max_length_q=None, max_length_k=None, **kwargs):
    """transformers' attention-interface signature: q/k/v [B, H, T, D] in, ([B, T, H, D], None) out."""
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    B, _, Q, _ = query.shape
    if cu_seq_lens_q is None and (B == 1 and position_ids is not None and attention_mask is None
                                  and key.shape[2] == Q and Q > 1):
        cu_seq_lens_q, max_length_q = _row_seqlens(position_ids)
        cu_seq_lens_k, max_length_k = cu_seq_lens_q, max_length_q
    if cu_seq_lens_q is None:
        out = _sdpa_fallback(query, key, value, attention_mask, scaling, is_causal)
        return out.transpose(1, 2).contiguous(), None
    fn, kind = _varlen_kernel()
    q_THD, k_THD, v_THD = (t[0].transpose(0, 1) for t in (query, key, value))
    out_dtype = q_THD.dtype
    # CUDA flash kernels take bf16 / fp16 only. An fp32 forward reaches here under train.mixed_precision (the
    # sampler's): its attention runs in bf16, as the training forwards' does. A float32 model is refused in config.
    if out_dtype == torch.float32 and q_THD.is_cuda:
        q_THD, k_THD, v_THD = (t.to(torch.bfloat16) for t in (q_THD, k_THD, v_THD))
    gqa = {}
    if kind == "torch" and k_THD.shape[1] != q_THD.shape[1]:  # grouped-query attention
        if _native_gqa(fn, query.device):
            gqa = {"enable_gqa": True}
        else:  # repeat the kv heads (memory and time of K and V times the group size)
            rep = q_THD.shape[1] // k_THD.shape[1]
            k_THD, v_THD = k_THD.repeat_interleave(rep, 1), v_THD.repeat_interleave(rep, 1)
    cu_q, cu_k = cu_seq_lens_q.to(torch.int32), cu_seq_lens_k.to(torch.int32)
    if kind == "flash_attn":
        out_THD = fn(q_THD, k_THD, v_THD, cu_q, cu_k, int(max_length_q), int(max_length_k), dropout_p=dropout,
                     softmax_scale=scaling, causal=is_causal)
    else:
        kw, q_factor = _torch_varlen_kwargs(fn, is_causal, scaling, q_THD.shape[-1])
        q_THD = q_THD * q_factor if q_factor != 1.0 else q_THD
        out_THD = fn(q_THD, k_THD, v_THD, cu_q, cu_k, int(max_length_q), int(max_length_k), **kw, **gqa)
    return out_THD[None].to(out_dtype), None


SDPA_GQA = "sdpa_gqa"  # what a CPU model loaded with "sdpa" runs (models/load.py)


def sdpa_gqa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                     **kwargs):
    """transformers' sdpa attention, except that grouped-query heads reach torch's sdpa as they are
    (enable_gqa) when a mask is given too: transformers then repeats K and V to every query head (its CUDA kernels
    want no mask with GQA), a copy per layer per decoding step; torch's CPU kernels take both. Measured on the
    tiny model: -16 % CPU for a rollout, the same tokens. On CUDA, with a mask, K and V are repeated as there."""
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, :key.shape[-2]]
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and attention_mask is not None and query.is_cuda:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, is_causal=is_causal,
                                         enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


DECODE_GQA = "decode_gqa"  # the fixed-shape decoding step's attention (models/decode_graph.py)


def decode_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                             **kwargs):
    """One query per row over the whole fixed-shape KV cache, with the additive 4-D mask hiding the columns not yet
    written. Grouped-query heads are folded, not repeated: the G query heads that share a kv head (heads j*G ..
    j*G+G-1 use kv head j, transformers' repeat_kv order) become G queries of that head, which see the same keys
    under the same mask row. K and V are read once, where transformers' sdpa copies them G times per layer per
    step whenever a mask is given (on CUDA: measured 5.4 s vs 1.9 s for a 3B rollout, docs/BENCHMARKS.md)."""
    B, H, Q, D = query.shape
    h = key.shape[1]
    mask = None if attention_mask is None else attention_mask[:, :, :, :key.shape[-2]].to(query.dtype)
    if Q == 1 and H != h:
        out = F.scaled_dot_product_attention(query.reshape(B, h, H // h, D), key, value, attn_mask=mask,
                                             scale=scaling)
        return out.reshape(B, H, 1, D).transpose(1, 2).contiguous(), None
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=H != h)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make VARLEN, SDPA_GQA and DECODE_GQA names transformers accepts on a loaded model (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask, sdpa_mask

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, flash_attention_mask)  # None for packed rows: no T×T mask is built
    AttentionInterface.register(SDPA_GQA, sdpa_gqa_forward)
    AttentionMaskInterface.register(SDPA_GQA, sdpa_mask)  # the masks sdpa gets
    AttentionInterface.register(DECODE_GQA, decode_attention_forward)
    AttentionMaskInterface.register(DECODE_GQA, sdpa_mask)  # (never built: the step passes its 4-D mask)


def set_attention(model, name: str) -> None:
    """Switch a loaded model (and its text / vision sub-configs) to attention implementation `name`.
    `from_pretrained(attn_implementation=VARLEN)` would look for a flash-attn package or a hub kernel by
    that name (it contains "flash"), so the model loads with sdpa and switches here."""
    if name in (VARLEN, SDPA_GQA):
        register()
    configs = [model.config] + [getattr(model.config, k) for k in ("text_config", "vision_config")
                                if getattr(model.config, k, None) is not None]
    for c in configs:
        c._attn_implementation = name
