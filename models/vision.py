"""Images → model inputs, without the HF `AutoProcessor` (which needs torchvision for its video half).

An image in a token sequence is `<|vision_start|>` + n × `<|image_pad|>` + `<|vision_end|>`, with
n = grid_t·grid_h·grid_w // merge². `pixel_values` of several images concatenate along dim 0 (the vision tower
splits them again by `image_grid_thw`), so images can be encoded once and shared by every sample of a prompt.
"""

from __future__ import annotations

import torch
from PIL import Image

from models.admit import short_side_size
from models.family import Family


def encode_images(image_processor, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (pixel_values [P, D], image_grid_thw [N, 3] long). Empty list → empty tensors."""
    if not images:
        return torch.zeros(0), torch.zeros(0, 3, dtype=torch.long)
    out = image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"].long()


def num_image_tokens(grid_thw: torch.Tensor, family: Family) -> int:
    """Placeholder tokens one image takes in the text (grid_thw: one row [t, h, w])."""
    return int(grid_thw.prod().item()) // family.merge_size**2


def image_block(grid_thw: torch.Tensor, family: Family) -> list[int]:
    """Token ids that stand for one image in the sequence."""
    n = num_image_tokens(grid_thw, family)
    return [family.vision_start_id] + [family.image_token_id] * n + [family.vision_end_id]


def expand_image_pads(ids: list[int], grid_thw: torch.Tensor, family: Family) -> list[int]:
    """Replace each single <|image_pad|> the chat template wrote with the image's full placeholder run."""
    out, k = [], 0
    for i, t in enumerate(ids):
        if t == family.image_token_id:
            if k >= len(grid_thw):
                raise ValueError("the prompt has more image placeholders than images")
            out += image_block(grid_thw[k], family)[1:-1]
            k += 1
        else:
            out.append(t)
    if k != len(grid_thw):
        raise ValueError(f"the chat template wrote {k} image placeholders for {len(grid_thw)} images")
    return out


def resized_size(grid_thw: torch.Tensor, family: Family) -> tuple[int, int]:
    """(width, height) in pixels of the image as the processor resized it (Qwen2.5-VL's box frame)."""
    _, h, w = (int(v) for v in grid_thw.tolist())
    return w * family.patch_size, h * family.patch_size


def mm_token_type_ids(input_ids: torch.Tensor, family: Family) -> torch.Tensor:
    """1 on image placeholder tokens, 0 elsewhere. transformers' get_rope_index REQUIRES it: without it the
    model silently falls back to 1-D positions (see docs/PLATFORM.md)."""
    return (input_ids == family.image_token_id).to(torch.int32)


def _backbone(model):
    """The inner multimodal model that owns get_rope_index (through a peft wrapper if any)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.model


def rope_positions(model, ids: list[int] | torch.Tensor, grid_thw: torch.Tensor | None, family: Family) -> torch.Tensor:
    """mrope positions [3, T] of one unpadded sequence, from the model's own get_rope_index."""
    ids_1T = torch.as_tensor(ids, dtype=torch.long).view(1, -1)
    if grid_thw is None or len(grid_thw) == 0:
        return torch.arange(ids_1T.shape[1]).view(1, -1).expand(3, -1).clone()
    pos_31T, _ = _backbone(model).get_rope_index(
        ids_1T, mm_token_type_ids=mm_token_type_ids(ids_1T, family), image_grid_thw=grid_thw)
    return pos_31T[:, 0].cpu()


def resize_short_side(image: Image.Image, side: int) -> Image.Image:
    """`image` scaled (bicubic, aspect ratio kept, long side rounded) so its shorter side is `side`; 0: as is
    (seed 001's rule for the main image: the model sees it at 448 px on its shorter side). The size is
    models.admit.short_side_size's, the one the data's admission check judged."""
    size = short_side_size(image.size, side)
    return image if size == image.size else image.resize(size, Image.BICUBIC)
