"""Real sizes of released Qwen-VL checkpoints, so a randomly initialised model of the real size needs no download:

    python -m models.tiny --arch qwen2_5_vl --shape 3b --out DIR     # models/tiny.py builds it

Each shape holds the text and vision dimensions of the checkpoint's config.json on the Hugging Face hub
(Qwen/Qwen2-VL-2B-Instruct, Qwen2-VL-7B-Instruct, Qwen2.5-VL-3B-Instruct, Qwen2.5-VL-7B-Instruct,
Qwen3-VL-2B-Instruct, Qwen3-VL-8B-Instruct), its embedding rows (the family's padded vocabulary: 151,936 or
152,064, more than any tokenizer names), whether the LM head shares the input embedding, the image processor's
pixel range (`min_pixels`, `max_pixels`) and the parameter count its model card states (a check on the numbers).
The tokenizer stays the project's offline one (models/tiny_tokenizer.py): ids past it name no token and are never
sampled (models.family.Family.num_token_ids), as the padded rows of a real checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Shape:
    text: dict  # text_config fields (rope settings in rope_parameters)
    vision: dict  # vision_config fields
    vocab_size: int  # embedding rows
    tie_word_embeddings: bool
    published_params: float  # the model card's count, in billions
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 16384
    extra: dict = field(default_factory=dict)  # top-level config fields


def _qwen2_text(hidden, intermediate, layers, heads, kv, theta=1e6, max_pos=32768) -> dict:
    # Qwen2 / 2.5 text: max_window_layers must name a real layer count (the sliding window is off either way):
    # transformers derives layer_types from it (docs/PLATFORM.md: a mismatch breaks the config).
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=max_pos,
                max_window_layers=layers, rope_parameters=dict(rope_type="default", rope_theta=theta,
                                                               mrope_section=[16, 24, 24]))


def _qwen2_5_vision(out_hidden) -> dict:
    return dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=out_hidden,
                window_size=112, fullatt_block_indexes=[7, 15, 23, 31], patch_size=14, spatial_merge_size=2,
                temporal_patch_size=2)


def _qwen2_vision(hidden) -> dict:
    return dict(depth=32, embed_dim=1280, hidden_size=hidden, num_heads=16, mlp_ratio=4, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2)


def _qwen3_text(hidden, intermediate, layers, heads, kv) -> dict:
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=128, max_position_embeddings=262144,
                rope_parameters=dict(rope_type="default", rope_theta=5e6, mrope_section=[24, 20, 20],
                                     mrope_interleaved=True))


def _qwen3_vision(depth, hidden, intermediate, out_hidden, deepstack) -> dict:
    return dict(depth=depth, hidden_size=hidden, intermediate_size=intermediate, num_heads=16,
                out_hidden_size=out_hidden, num_position_embeddings=2304, deepstack_visual_indexes=deepstack,
                patch_size=16, spatial_merge_size=2, temporal_patch_size=2, hidden_act="gelu_pytorch_tanh")


SHAPES: dict[str, dict[str, Shape]] = {
    "qwen2_vl": {
        "2b": Shape(_qwen2_text(1536, 8960, 28, 12, 2), _qwen2_vision(1536), 151936, True, 2.21),
        "7b": Shape(_qwen2_text(3584, 18944, 28, 28, 4), _qwen2_vision(3584), 152064, False, 8.29),
    },
    "qwen2_5_vl": {
        "3b": Shape(_qwen2_text(2048, 11008, 36, 16, 2, max_pos=128000), _qwen2_5_vision(2048), 151936, True, 3.75),
        "7b": Shape(_qwen2_text(3584, 18944, 28, 28, 4, max_pos=128000), _qwen2_5_vision(3584), 152064, False, 8.29),
    },
    "qwen3_vl": {
        "2b": Shape(_qwen3_text(2048, 6144, 28, 16, 8), _qwen3_vision(24, 1024, 4096, 2048, [5, 11, 17]), 151936,
                    True, 2.13, min_pixels=65536, max_pixels=16777216),
        "8b": Shape(_qwen3_text(4096, 12288, 36, 32, 8), _qwen3_vision(27, 1152, 4304, 4096, [8, 16, 24]), 151936,
                    False, 8.77, min_pixels=65536, max_pixels=16777216),
    },
}


def get_shape(arch: str, shape: str) -> Shape:
    if shape not in SHAPES.get(arch, {}):
        known = ", ".join(f"{a}: {', '.join(s)}" for a, s in SHAPES.items())
        raise ValueError(f"--shape {shape!r} is not known for {arch}; known shapes: {known} (or tiny)")
    return SHAPES[arch][shape]
