"""CLIP embeddings through open_clip for "image_embedding" (reward.clip_backend = "open_clip"): the same
`embed_text` / `embed_image` interface as the transformers ClipEmbedder in rewards/scorer.py.

    bash scripts/install_openclip.sh                            # open_clip + a patched torchvision: .venv-openclip
    clip = OpenClipEmbedder.load("/models/CLIP-ViT-B-32-laion2B")  # reward.clip_path, with clip_backend open_clip
    clip.embed_text(["a stop sign"]); clip.embed_image([pil_image])  # [N, D] numpy, unit rows

open_clip is optional: it imports torchvision, whose PyPI build is a CUDA build that fails to import beside CPU
torch until two fake-kernel registrations are guarded (docs/PLATFORM.md; the install script does it). The folder is
open_clip's own local-dir layout, which is also the layout of its Hugging Face hub repositories (copy one by
hand; nothing is downloaded here): `open_clip_config.json` ({"model_cfg": ..., "preprocess_cfg": ...}) and
`open_clip_model.safetensors` (or `open_clip_pytorch_model.bin`). Loaded with
`open_clip.create_model_and_transforms("local-dir:PATH")` and `open_clip.get_tokenizer("local-dir:PATH")`; the
image transform is open_clip's eval transform (resize, centre crop, normalise). `build_tiny_open_clip(DIR)`
writes a tiny random CLIP (open_clip's bundled BPE tokenizer, 32x32 images) for the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

INSTALL_HINT = "run `bash scripts/install_openclip.sh` and train from the venv it builds (.venv-openclip)"


def import_open_clip():
    """The open_clip module, or ValueError saying why it cannot be imported and how to fix it."""
    try:
        import open_clip
    except Exception as exc:  # ImportError, or RuntimeError from an unpatched CUDA torchvision beside CPU torch
        raise ValueError(f"reward.clip_backend 'open_clip' needs open_clip, which does not import here "
                         f"({exc!r}): {INSTALL_HINT}, or use clip_backend 'transformers'") from exc
    return open_clip


@dataclass
class OpenClipEmbedder:
    """An open_clip CLIP model with its tokenizer and eval image transform; unit-length embeddings."""

    model: torch.nn.Module
    tokenizer: object
    preprocess: object

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "OpenClipEmbedder":
        path = Path(path)
        if not (path / "open_clip_config.json").exists():
            raise ValueError(f"{path} is not an open_clip folder (no open_clip_config.json); no hub downloads here")
        open_clip = import_open_clip()
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}", device=device)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        return cls(model=model.eval().requires_grad_(False), tokenizer=tokenizer, preprocess=preprocess)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(list(texts)).to(self._device())
        return self.model.encode_text(ids, normalize=True).float().cpu().numpy()  # sync point

    @torch.no_grad()
    def embed_image(self, images: list[Image.Image]) -> np.ndarray:
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self._device())
        return self.model.encode_image(pixels, normalize=True).float().cpu().numpy()  # sync point


def build_tiny_open_clip(out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random open_clip CLIP folder (embed 16, width 32, 2 layers each, 32x32 images, 8x8 patches,
    context 32; the bundled BPE tokenizer, so the vocabulary is CLIP's 49,408 tokens: ~1.6 M parameters,
    6.3 MB). Deterministic for a seed."""
    open_clip = import_open_clip()
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
                 "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    preprocess_cfg = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg},
                                                          indent=2))
    return out
