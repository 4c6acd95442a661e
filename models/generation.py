"""Our own batched sampler on the policy: KV cache, temperature / top-k / top-p, stop ids, G samples per prompt.

    outs = generate(model, requests, cfg.rollout, max_new_tokens=32, stop_ids=eos, expand=G, generator=g)

`sampling` is any object with `temperature`, `top_k` and `top_p` (the trainer passes its `rollout` config section
itself, engine/config/settings.py, so those settings are defined once; `GREEDY` is argmax). What stops a sequence and what
may never be drawn are arguments of the call, not settings.

Each request is one sequence to continue (prompt, or a trajectory after a tool result was injected), with its
images and its mrope positions. Sequences are left-padded into one batch and prefilled once; with `expand=G` the
KV cache is then repeated G times, so every prompt's images go through the vision tower ONCE, not G times.
Finished rows are dropped from the cache as they stop, so late steps run only the rows still going.

Positions are always passed explicitly (computed per sequence with the model's own `get_rope_index`): the
model's cached `rope_deltas` are state kept on the module and silently wrong across batches (docs/PLATFORM.md,
"Crop re-injection and cached generation").
Shapes: B rows, T tokens, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from models.decode_graph import preallocated_cache, static_cache
from models.decode_steps import DynamicStep, FixedStep


class Sampling(Protocol):
    """What `generate` reads from the sampling settings (engine.config.settings.RolloutConfig has these fields)."""

    temperature: float  # 0 → greedy
    top_k: int  # 0 → off
    top_p: float  # 1 → off


class _Fixed(NamedTuple):
    temperature: float
    top_k: int
    top_p: float


GREEDY: Sampling = _Fixed(temperature=0.0, top_k=0, top_p=1.0)  # argmax (the scorer's and the tests' decoding)


class StopRequested(Exception):
    """`generate`'s `should_stop()` said to stop (a signal reached the trainer): the call's samples are dropped."""


@dataclass
class GenRequest:
    ids: list[int]
    positions: torch.Tensor  # [3, T] mrope positions of `ids`
    pixel_values: torch.Tensor | None = None  # this sequence's images, concatenated
    grid_thw: torch.Tensor | None = None  # [N, 3]
    max_new_tokens: int | None = None  # per-request cap (≤ the call's max_new_tokens)
    seed: int | None = None  # the request's own sampling seed: the vLLM sampler's (sample k of G uses seed + k)


@dataclass
class GenOutput:
    tokens: list[int]
    logps: list[float]  # log-prob of each sampled token under softmax(logits / temperature)
    stop: str  # "stop" (hit a stop id) | "length"


def _ban_bias(vocab: int, banned_ids: frozenset[int], num_token_ids: int, device) -> torch.Tensor | None:
    """[V] additive mask: -inf on banned ids and on ids past the tokenizer; None when nothing is banned. Made once
    per generate call, so a decoding step adds one tensor instead of building an index list."""
    if not banned_ids and not 0 < num_token_ids < vocab:
        return None
    bias_V = torch.zeros(vocab, device=device)
    bias_V[torch.tensor(sorted(banned_ids), dtype=torch.long, device=device)] = float("-inf")
    if 0 < num_token_ids < vocab:
        bias_V[num_token_ids:] = float("-inf")
    return bias_V


def _sample(logits_BV: torch.Tensor, p: Sampling, banned_ids: frozenset[int], num_token_ids: int,
            gen: torch.Generator | None):
    """Returns (token_B, logp_B); logp is under the temperature-scaled distribution with banned ids and ids past
    the tokenizer (`num_token_ids`) removed. top-k/top-p only decide what may be drawn and do not change logp (the
    trainer recomputes the same quantity; banned and padded ids hold ~0 probability in any trained model, so
    removing them changes logp negligibly; in a random-init model they do not, and only the sampler masks them).
    `gen` must live on the logits' device (torch.rand's rule)."""
    return _draw(logits_BV, p, _ban_bias(logits_BV.shape[-1], banned_ids, num_token_ids, logits_BV.device), gen)


def _draw(logits_BV: torch.Tensor, p: Sampling, bias_V: torch.Tensor | None, gen: torch.Generator | None):
    """_sample with its ban mask made already: everything stays on the device, no host sync."""
    logits_BV = logits_BV.float()
    if bias_V is not None:
        logits_BV = logits_BV + bias_V
    if p.temperature <= 0:
        tok_B = logits_BV.argmax(-1)
        return tok_B, torch.log_softmax(logits_BV, -1).gather(-1, tok_B[:, None])[:, 0]
    scaled_BV = logits_BV / p.temperature
    logp_BV = torch.log_softmax(scaled_BV, -1)
    masked_BV = scaled_BV
    if p.top_k > 0:
        kth = torch.topk(masked_BV, min(p.top_k, masked_BV.shape[-1]), dim=-1).values[:, -1:]
        masked_BV = masked_BV.masked_fill(masked_BV < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_BV, order_BV = torch.sort(masked_BV, descending=True, dim=-1)
        cum_BV = torch.softmax(sorted_BV, -1).cumsum(-1)
        drop_BV = cum_BV - torch.softmax(sorted_BV, -1) > p.top_p  # keep the token that crosses top_p
        masked_BV = masked_BV.scatter(-1, order_BV, sorted_BV.masked_fill(drop_BV, float("-inf")))
    tok_B = _inverse_cdf(torch.softmax(masked_BV, -1), gen)
    return tok_B, logp_BV.gather(-1, tok_B[:, None])[:, 0]


def _inverse_cdf(probs_BV: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One draw per row from probs_BV by inverse CDF: one uniform per row and a binary search, where
    torch.multinomial draws an exponential for every entry (V of them per row: ~0.3 ms of a ~3 ms decoding step on
    the tiny model, 16 rows). A zero-probability id is never drawn: its CDF step is flat, and the search returns the
    first id whose cumulative probability exceeds u."""
    cdf_BV = probs_BV.cumsum(-1)
    total_B1 = cdf_BV[:, -1:]
    u_B1 = torch.rand(probs_BV.shape[0], 1, device=probs_BV.device, generator=gen) * total_B1
    # u * total can round up to total itself: keep u below it, so the search always lands on a positive step
    u_B1 = torch.minimum(u_B1, torch.nextafter(total_B1, torch.zeros_like(total_B1)))
    return torch.searchsorted(cdf_BV, u_B1, right=True)[:, 0]


def left_pad(requests: list[GenRequest], pad_id: int):
    """(ids_BT, mask_BT, pos_3BT): the requests left-padded into one batch (also the scorer's forward layout)."""
    B, T = len(requests), max(len(r.ids) for r in requests)
    ids_BT = torch.full((B, T), pad_id, dtype=torch.long)
    mask_BT = torch.zeros(B, T, dtype=torch.long)
    pos_3BT = torch.zeros(3, B, T, dtype=torch.long)
    for b, r in enumerate(requests):
        n = len(r.ids)
        ids_BT[b, T - n:] = torch.tensor(r.ids)
        mask_BT[b, T - n:] = 1
        pos_3BT[:, b, T - n:] = r.positions
    return ids_BT, mask_BT, pos_3BT


def concat_images(requests: list[GenRequest]):
    """(pixel_values, grid_thw) of every request that has images, concatenated; (None, None) when none has."""
    pix = [r.pixel_values for r in requests if r.grid_thw is not None and len(r.grid_thw)]
    if not pix:
        return None, None
    grids = [r.grid_thw for r in requests if r.grid_thw is not None and len(r.grid_thw)]
    return torch.cat(pix), torch.cat(grids)


DECODE_MODES = ("auto", "dynamic", "static", "graph")


def _decode_mode(decode: str, device: torch.device) -> str:
    if decode not in DECODE_MODES:
        raise ValueError(f"decode {decode!r}: choose one of {', '.join(DECODE_MODES)}")
    if decode == "graph" and device.type != "cuda":
        raise ValueError(f"decode 'graph' needs a CUDA device, the model is on {device}")
    if decode == "auto":
        decode = "graph" if device.type == "cuda" else "dynamic"
    return decode


def _stop_check_every(device: torch.device) -> int:
    """Decoding steps between host syncs that drop finished rows. On a GPU each sync stalls the launch queue, so
    rows that finished keep decoding (their extra tokens are cut off) until the next check; on the CPU a check
    costs nothing and dropping rows at once keeps the sampler's random stream as it always was."""
    return 8 if device.type == "cuda" else 1


def _prefill(model, requests: list[GenRequest], *, pad_id: int, limits: list[int], expand: int, mode: str):
    """One forward over the left-padded prompts (their images through the vision tower once), its KV cache then
    repeated `expand` times. Returns (the decoding step to continue with, the last logits [N, V], each output's
    next position [N] and its token limit [N])."""
    device = next(model.parameters()).device
    ids_BT, mask_BT, pos_3BT = left_pad(requests, pad_id)
    # Prompts of one length (a group's, or several of one template) need no padding mask at all: attention is
    # plain causal, and transformers builds no mask tensor at any step (measured: ~10 % of a CPU rollout).
    padded = not bool(mask_BT.all())
    ids_BT, mask_BT, pos_3BT = (t.to(device) for t in (ids_BT, mask_BT, pos_3BT))
    pixels, grids = concat_images(requests)
    steps = max(limits, default=0)
    capacity = ids_BT.shape[1] + steps
    fixed = static_cache(model, capacity, device) if mode != "dynamic" else None
    cache, cursor = fixed or (preallocated_cache(model, capacity), None)
    out = model(input_ids=ids_BT, attention_mask=mask_BT if padded else None, position_ids=pos_3BT, use_cache=True,
                past_key_values=cache,
                pixel_values=None if pixels is None else pixels.to(device, dtype=model.dtype),
                image_grid_thw=None if grids is None else grids.to(device), logits_to_keep=1)
    cache, logits_BV = out.past_key_values, out.logits[:, -1]
    next_pos_B = pos_3BT.amax(dim=(0, 2)) + 1
    limit_B = torch.tensor(limits, device=device)
    if expand > 1:
        cache.batch_repeat_interleave(expand)
        logits_BV, mask_BT, next_pos_B, limit_B = (t.repeat_interleave(expand, 0)
                                                   for t in (logits_BV, mask_BT, next_pos_B, limit_B))
    if fixed is not None:
        step = FixedStep(model, cache, cursor, mask_BT, capacity=capacity, steps=steps, mode=mode)
    else:
        step = DynamicStep(model, cache, mask_BT, padded=padded, steps=steps)
    return step, logits_BV, next_pos_B, limit_B


def _decode(step, logits_BV, next_pos_B, limit_B, sampling: Sampling, *, stop_ids: frozenset[int],
            bias_V, generator, every: int, should_stop=None):
    """Draw, record, step, until every output stopped or reached its limit. Everything stays on the device: tokens
    and log-probs go into [N, steps] buffers, stops are recorded per output as they happen, and the host looks only
    every `every` steps (to drop finished rows from a dynamic cache, or end). `should_stop()` is asked before each
    draw (a flag read, no sync) and True raises StopRequested. Returns (tok_NS, logp_NS, len_N, stopped_N)."""
    device, n, steps = logits_BV.device, logits_BV.shape[0], int(limit_B.max()) if len(limit_B) else 0
    tok_NS = torch.zeros(n, steps, dtype=torch.long, device=device)
    logp_NS = torch.zeros(n, steps, device=device)
    len_N = limit_B.clone()  # tokens each output keeps: its limit, or up to and including its first stop id
    stopped_N = torch.zeros(n, dtype=torch.bool, device=device)
    row_B = torch.arange(n, device=device)  # which output each live row writes to
    done_B = torch.zeros(n, dtype=torch.bool, device=device)
    stop_t = torch.tensor(sorted(stop_ids), device=device, dtype=torch.long)
    for i in range(steps):
        if should_stop is not None and should_stop():
            raise StopRequested(f"at decoding step {i}")
        tok_B, logp_B = _draw(logits_BV, sampling, bias_V, generator)
        tok_NS[row_B, i], logp_NS[row_B, i] = tok_B, logp_B
        hit_B = torch.isin(tok_B, stop_t) & ~done_B  # a row's FIRST stop id
        len_N[row_B] = torch.where(hit_B, i + 1, len_N[row_B])
        stopped_N[row_B] |= hit_B
        done_B = done_B | hit_B | (i + 1 >= limit_B)
        if (i + 1) % every == 0 or i + 1 == steps:
            if bool(done_B.all()):  # host sync: once per `every` steps
                break
            if step.drops_rows and bool(done_B.any()):  # host sync (fixed shapes keep finished rows)
                keep = (~done_B).nonzero()[:, 0]
                step.drop(keep)
                tok_B, next_pos_B, limit_B, row_B, done_B = (t[keep] for t in (tok_B, next_pos_B, limit_B, row_B,
                                                                               done_B))
        if i + 1 == steps:  # the last draw: no forward for a token nobody samples
            break
        logits_BV = step(tok_B, next_pos_B, i)
        next_pos_B = next_pos_B + 1
    return tok_NS, logp_NS, len_N, stopped_N


@torch.inference_mode()  # no autograd bookkeeping (-9 % CPU per rollout vs no_grad); only Python lists leave the call
def generate(model, requests: list[GenRequest], sampling: Sampling, *, pad_id: int, max_new_tokens: int,
             stop_ids: frozenset[int] = frozenset(), banned_ids: frozenset[int] = frozenset(),
             num_token_ids: int = 0, expand: int = 1, generator: torch.Generator | None = None,
             decode: str = "auto", should_stop=None) -> list[GenOutput]:
    """Continue every request by at most `max_new_tokens` (or its own smaller cap), stopping on `stop_ids`;
    `banned_ids` are never drawn (e.g. image placeholders), nor ids >= `num_token_ids` (padded embedding rows that
    name no token; 0: off). With expand=G each request yields G outputs (request-major order).

    Three pieces: `_prefill` (one forward over the prompts), `_decode` (the sampling loop, on the device) and the
    decoding step it calls (models/decode_steps.py). `decode` chooses the step: "dynamic" (the cache grows by a
    column a step and finished rows are dropped from it), "graph" (fixed shapes, models/decode_graph.py, captured
    once as a CUDA graph and replayed), "static" (the same fixed-shape step without the capture: tests), "auto"
    (graph on a CUDA device, dynamic elsewhere). Where fixed shapes don't hold (sliding-window or mixture-of-experts
    layers) every mode runs dynamic.

    `should_stop`: a callable asked before the prefill and at every decoding step (a flag read, no sync); when it
    returns True the call raises StopRequested, so a signal is acted on within a step, not after the rollout."""
    device = next(model.parameters()).device
    if should_stop is not None and should_stop():
        raise StopRequested("before the prefill")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the sampling generator is on {generator.device} and the model on {device}: make it with "
                         "torch.Generator(device=<the model's device>)")
    if any(r.seed is not None for r in requests):
        raise ValueError("a request carries its own sampling seed: per-request seeds are the vLLM sampler's "
                         "(engine/rollout/vllm_sampler.py); this sampler draws every row from one generator")
    limits = [min(r.max_new_tokens or max_new_tokens, max_new_tokens) for r in requests]
    step, logits_BV, next_pos_B, limit_B = _prefill(model, requests, pad_id=pad_id, limits=limits, expand=expand,
                                                     mode=_decode_mode(decode, device))
    try:
        tok_NS, logp_NS, len_N, stopped_N = _decode(
            step, logits_BV, next_pos_B, limit_B, sampling, stop_ids=stop_ids, generator=generator,
            bias_V=_ban_bias(logits_BV.shape[-1], banned_ids, num_token_ids, device), every=_stop_check_every(device),
            should_stop=should_stop)
    finally:
        step.close()
    # host sync, once: the buffers to Python lists
    lens, stops = len_N.tolist(), stopped_N.tolist()
    return [GenOutput(tokens=t[:k], logps=lp[:k], stop="stop" if s else "length")
            for t, lp, k, s in zip(tok_NS.tolist(), logp_NS.tolist(), lens, stops)]
