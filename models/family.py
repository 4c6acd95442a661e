"""Facts about each supported model family that the engine must not guess: token ids, patch geometry, the
coordinate frame its boxes are written in, and the chat format's turn markers (ChatML for every family here), which
the engine writes when it closes or opens a turn itself (SFT targets, multi-turn tool results).

Box frames (see docs/DESIGN.md): Qwen2-VL and Qwen3-VL write boxes in 0..1000 of the image ("norm1000");
Qwen2.5-VL writes absolute pixels of the image *after* the processor's resize ("resized"). Override with
`--model.box_frame` when a checkpoint was fine-tuned otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

# model_type -> (box frame, human name). InternVL / GLM-4V will join when their processors are wired.
SUPPORTED = {
    "qwen2_vl": "norm1000",
    "qwen2_5_vl": "resized",
    "qwen3_vl": "norm1000",
    "qwen3_vl_moe": "norm1000",
}


@dataclass(frozen=True)
class Family:
    model_type: str
    box_frame: str  # "pixels" | "resized" | "norm1000"
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    image_token_id: int  # <|image_pad|>
    video_token_id: int  # <|video_pad|>
    vision_start_id: int  # <|vision_start|>
    vision_end_id: int  # <|vision_end|>
    eos_ids: tuple[int, ...]  # ids that end a turn (<|im_end|>, <|endoftext|>)
    pad_id: int
    tool_call_start_id: int | None  # <tool_call>, when the tokenizer has it as one id
    tool_call_end_id: int | None  # </tool_call>
    # Ids from here on name no token: real checkpoints pad the embedding (151,936 rows for Qwen2.5-VL's 151,665
    # tokens) and never sample them. 0: unknown (every row is a token).
    num_token_ids: int = 0
    turn_end: str = "<|im_end|>"  # closes a turn (ChatML); the rollout stops on its id (eos_ids)
    turn_start: str = "<|im_start|>"  # opens a turn, followed by the role and a newline

    def turn(self, role: str) -> str:
        """The text that opens a turn of `role` ("user", "assistant")."""
        return f"{self.turn_start}{role}\n"

    @property
    def vision_ids(self) -> frozenset[int]:
        """Placeholder tokens only the engine may write: a sampled one would break the image layout."""
        return frozenset({self.image_token_id, self.video_token_id, self.vision_start_id, self.vision_end_id})

    @property
    def pixel_factor(self) -> int:
        """Image sides are multiples of this many pixels (patch × merge)."""
        return self.patch_size * self.merge_size


def family_from(config, tokenizer, *, box_frame: str | None = None) -> Family:
    """Read the family facts from a loaded config and tokenizer. Raises ValueError for unsupported models."""
    model_type = config.model_type
    if box_frame not in (None, "pixels", "resized", "norm1000"):
        raise ValueError(f"box_frame {box_frame!r} is unknown: choose pixels, resized or norm1000")
    if model_type not in SUPPORTED:
        raise ValueError(
            f"model_type {model_type!r} is not supported yet; supported: {sorted(SUPPORTED)}. "
            "Other HF VLMs need their image-token layout added in models/family.py."
        )
    vision = config.vision_config
    vocab = tokenizer.get_vocab()

    def token_id(text: str) -> int | None:
        return vocab.get(text)

    eos = [i for i in (token_id("<|im_end|>"), token_id("<|endoftext|>")) if i is not None]
    if not eos:
        raise ValueError("tokenizer has neither <|im_end|> nor <|endoftext|>: not a Qwen-style chat tokenizer")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[-1]
    return Family(
        model_type=model_type,
        box_frame=box_frame or SUPPORTED[model_type],
        patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size,
        temporal_patch_size=vision.temporal_patch_size,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        vision_start_id=config.vision_start_token_id,
        vision_end_id=config.vision_end_token_id,
        eos_ids=tuple(eos),
        pad_id=pad,
        tool_call_start_id=token_id("<tool_call>"),
        tool_call_end_id=token_id("</tool_call>"),
        num_token_ids=max(vocab.values()) + 1,
    )
