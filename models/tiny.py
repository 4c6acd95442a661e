"""Build tiny, randomly initialised VLMs offline: real transformers classes, a locally trained tokenizer, the
Qwen chat template and a Qwen image processor, saved as a normal folder that `from_pretrained` loads.

    python -m models.tiny --arch qwen2_5_vl --out runs/tiny [--seed 0]
    python -m models.tiny --arch qwen2_5_vl --shape 3b --out runs/qwen2_5_vl-3b [--no-weights]

Archs: qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe. The same seed gives byte-identical files. `tiny_model_dir()`
caches builds under .cache/tiny/ so tests and the demo pay once.

`--shape` (models/shapes.py: 2b/7b for qwen2_vl, 3b/7b for qwen2_5_vl, 2b/8b for qwen3_vl) keeps the offline
tokenizer but takes a released checkpoint's text and vision dimensions, its padded vocabulary (151,936 embedding
rows for Qwen2.5-VL-3B; ids past the tokenizer are never sampled) and its image processor's pixel range (448 px
images and larger). Its weights are random, in bfloat16, built on a GPU when there is one (a 3B model takes ~7 GB);
`--no-weights` writes the folder without them, for `models.load.init_vlm` to build the model in memory.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from models.shapes import SHAPES, get_shape
from models.tiny_tokenizer import build_tokenizer

HIDDEN, LAYERS, HEADS, HEAD_DIM = 128, 4, 4, 32
MROPE_SECTION = [4, 6, 6]  # must sum to HEAD_DIM / 2; nothing in transformers checks it

_TEXT = dict(
    hidden_size=HIDDEN, intermediate_size=256, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
    num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
)


def _qwen2_vl(vocab: int) -> dict:
    return dict(
        text_config=dict(_TEXT, vocab_size=vocab, rope_parameters=dict(
            rope_type="default", rope_theta=10000.0, mrope_section=MROPE_SECTION)),
        vision_config=dict(depth=2, embed_dim=64, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    )


def _qwen2_5_vl(vocab: int) -> dict:
    return dict(
        text_config=dict(_TEXT, vocab_size=vocab, rope_parameters=dict(
            rope_type="default", rope_theta=10000.0, mrope_section=MROPE_SECTION)),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=HIDDEN,
                           fullatt_block_indexes=[1], window_size=112, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
    )


def _qwen3_vl(vocab: int, moe: bool = False) -> dict:
    text = dict(_TEXT, vocab_size=vocab, head_dim=HEAD_DIM, rope_parameters=dict(
        rope_type="default", rope_theta=10000.0, mrope_section=MROPE_SECTION, mrope_interleaved=True))
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, decoder_sparse_step=1)
    return dict(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=HIDDEN,
                           num_position_embeddings=256, deepstack_visual_indexes=[1], patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2),
    )


ARCHS = {
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl,
    "qwen3_vl": _qwen3_vl,
    "qwen3_vl_moe": lambda vocab: _qwen3_vl(vocab, moe=True),
}
# The tiny models see small images: at most MAX_SIDE² pixels (16 image tokens at patch 14, merge 2).
MAX_SIDE = {"qwen2_vl": 112, "qwen2_5_vl": 112, "qwen3_vl": 128, "qwen3_vl_moe": 128}


def model_config(arch: str, tokenizer, shape: str = "tiny"):
    """The transformers config of a tiny model, or of a released checkpoint's `shape` around the offline tokenizer."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    ids = tokenizer.convert_tokens_to_ids
    real = None if shape == "tiny" else get_shape(arch, shape)
    parts = ARCHS[arch](len(tokenizer))
    if real is not None:  # the real dimensions replace the tiny ones (rope settings included)
        parts["text_config"].update(real.text, vocab_size=real.vocab_size)
        parts["vision_config"].update(real.vision)
    parts["text_config"].update(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                                pad_token_id=ids("<|endoftext|>"))
    return AutoConfig.for_model(
        arch, **parts,
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False if real is None else real.tie_word_embeddings,
        **({} if real is None else real.extra),
    )


def build(arch: str, out: str | Path, seed: int = 0, *, shape: str = "tiny", weights: bool = True) -> Path:
    """Build and save one model folder (tiny, or a released checkpoint's `shape` with random weights; without
    `weights`, everything but the weights). Deterministic: the same seed gives byte-identical files."""
    out = Path(out)
    tokenizer = build_tokenizer(seed)
    ids = tokenizer.convert_tokens_to_ids
    config = model_config(arch, tokenizer, shape)
    if weights:
        torch.manual_seed(seed)
        # A real shape in bf16 (the released checkpoints' dtype; half the disk), built where it is fastest.
        device = "cuda" if shape != "tiny" and torch.cuda.is_available() else "cpu"
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(
                config, dtype=torch.float32 if shape == "tiny" else torch.bfloat16)
        model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
        model.generation_config.pad_token_id = ids("<|endoftext|>")
    patch = config.vision_config.patch_size
    factor = patch * config.vision_config.spatial_merge_size
    side = MAX_SIDE[arch]
    pixels = ((2 * factor) ** 2, side * side) if shape == "tiny" else (get_shape(arch, shape).min_pixels,
                                                                          get_shape(arch, shape).max_pixels)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=config.vision_config.spatial_merge_size,
        temporal_patch_size=config.vision_config.temporal_patch_size,
        size={"shortest_edge": pixels[0], "longest_edge": pixels[1]},
    )
    out.mkdir(parents=True, exist_ok=True)
    if weights:
        model.save_pretrained(out)
    else:
        config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    return out


def tiny_model_dir(arch: str = "qwen2_5_vl", seed: int = 0, cache_root: str | Path | None = None) -> Path:
    """Return a cached tiny model folder, building it once (atomically, so parallel callers never see half a
    folder). The cache key includes this file's source, so editing the recipe rebuilds."""
    root = Path(cache_root or os.environ.get("TINY_MODEL_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "tiny"))
    recipe = (Path(__file__).read_bytes() + Path(__file__).with_name("tiny_tokenizer.py").read_bytes())
    key = hashlib.sha256(recipe).hexdigest()[:10]
    final = root / f"{arch}-seed{seed}-{key}"
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{arch}-"))
    build(arch, tmp, seed)
    try:
        tmp.rename(final)
    except OSError:
        if (final / "config.json").exists():  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:  # a half-written leftover from a crashed build: replace it
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="qwen2_5_vl", choices=sorted(ARCHS))
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", default="tiny",
                        help="tiny, or a released checkpoint's size: " + "; ".join(
                            f"{a}: {', '.join(s)}" for a, s in SHAPES.items()))
    parser.add_argument("--no-weights", action="store_true",
                        help="write config, tokenizer and image processor only (models.load.init_vlm builds the "
                             "model in memory from them)")
    args = parser.parse_args(argv)
    try:
        path = build(args.arch, args.out, args.seed, shape=args.shape, weights=not args.no_weights)
    except ValueError as e:
        parser.error(str(e))
    n = sum(f.stat().st_size for f in path.iterdir())
    print(f"built {args.shape} {args.arch} (seed {args.seed}) in {path} ({n / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
