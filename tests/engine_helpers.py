"""Shared builders for tests/test_engine_*.py (not a test file itself): the tiny Qwen2.5-VL, noise images, prompts,
hand-made trajectories and the generation requests the rollout would build.

Every test module loads the tiny model ONCE through a module-scoped fixture calling `load_tiny()`; each
forward runs on one CPU thread (with two threads and a busy neighbour every op is ~20x slower).
"""

from __future__ import annotations

import io

import torch
from PIL import Image

from data.example import Example
from engine.config.settings import RolloutConfig
from engine.rollout.trajectory import Prompt, Trajectory, build_prompt
from models.generation import GenRequest
from models.load import VLM, load_vlm
from models.tiny import tiny_model_dir
from models.vision import mm_token_type_ids, rope_positions

SYSTEM = "You are a helpful assistant."
# (width, height), question, seed: three image sizes (grids 1x4x6, 1x8x4, 1x6x8) and three prompt lengths, so a
# batch of them is really left-padded and the images really differ in token count (the sampler tests' prompts)
MIXED_PROMPTS = [((90, 60), "What colour?", 0), ((56, 112), "How many dots are there in the picture?", 1),
                 ((112, 84), "Is it a cat", 2)]


def gen_args(max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             stop_ids: frozenset[int] = frozenset(), banned_ids: frozenset[int] = frozenset()) -> dict:
    """Keyword arguments of `generate` (and VLLMSampler.generate): the sampling settings as the trainer passes them
    (its rollout config section), plus the call's own limits."""
    return dict(sampling=RolloutConfig(temperature=temperature, top_k=top_k, top_p=top_p),
                max_new_tokens=max_new_tokens, stop_ids=stop_ids, banned_ids=banned_ids)


def load_tiny() -> VLM:
    torch.set_num_threads(1)
    vlm = load_vlm(tiny_model_dir("qwen2_5_vl"))
    vlm.model.eval()  # no dropout anywhere: gradients and samples are deterministic
    return vlm


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A (width, height) RGB image of seeded noise, so every crop of it differs from every other crop."""
    g = torch.Generator().manual_seed(seed)
    arr = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # lossless: the decoded image equals `image` pixel for pixel
    return buf.getvalue()


def make_prompt(vlm: VLM, size: tuple[int, int], question: str, seed: int) -> Prompt:
    ex = Example(question=question, answers=["red"], images=[png_bytes(noise_image(size, seed))], origin=f"test:{seed}")
    return build_prompt(ex, vlm, system_prompt=SYSTEM, question_template="{question}")


def request(prompt: Prompt, vlm: VLM) -> GenRequest:
    """The request engine/rollout/rollout.py `_request` builds for a fresh prompt: build_prompt ids, mrope positions from
    models.vision.rope_positions, the prompt's images."""
    positions = rope_positions(vlm.model, prompt.ids, prompt.grid_thw, vlm.family)
    return GenRequest(ids=list(prompt.ids), positions=positions, pixel_values=prompt.pixel_values,
                      grid_thw=prompt.grid_thw)


def encode(vlm: VLM, text: str) -> list[int]:
    return vlm.tokenizer(text, add_special_tokens=False).input_ids


def plain_logits(vlm: VLM, ids: list[int], pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """Logits [T, V] (fp32) of ONE ordinary forward: the model computes its own mrope positions (mm_token_type_ids
    given, no cache), so nothing of the engine's position, padding or packing code is reused. Gradients flow when
    called outside no_grad."""
    ids_1T = torch.tensor([list(ids)])
    out = vlm.model(input_ids=ids_1T, pixel_values=pixel_values, image_grid_thw=grid_thw,
                    mm_token_type_ids=mm_token_type_ids(ids_1T, vlm.family), use_cache=False)
    return out.logits[0].float()


def loss_positions(traj: Trajectory) -> torch.Tensor:
    """Positions t >= 1 whose token has mask 1 (each predicted by the logits at t - 1)."""
    return torch.tensor([t for t in range(1, len(traj.ids)) if traj.mask[t]], dtype=torch.long)


def plain_logps(vlm: VLM, traj: Trajectory, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) of every mask-1 token of `traj` from plain_logits, in order."""
    logits_TV = plain_logits(vlm, traj.ids, traj.pixel_values, traj.grid_thw)
    where = loss_positions(traj)
    tok = torch.tensor(traj.ids)[where]
    return torch.log_softmax(logits_TV[where - 1] / temperature, -1).gather(-1, tok[:, None])[:, 0]


def cycle_token_classes(trajs: list[Trajectory]) -> None:
    """Token classes set by hand: each trajectory's sampled tokens cycle tool, answer, text (0, 1, 2); -1 elsewhere."""
    for t in trajs:
        sampled = [k for k, m in enumerate(t.mask) if m]
        t.token_class = [-1] * len(t.ids)
        for j, k in enumerate(sampled):
            t.token_class[k] = j % 3


def take_grad(model) -> torch.Tensor:
    """The model's gradient as one flat vector (zeros for parameters without one), then cleared."""
    g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return g
