"""A prompt as the model's chat template writes it: [system], a user turn (images, then text), the assistant's header.

    ids = chat_ids(vlm.tokenizer, system="", text="What color is it?", num_images=1, prefill="<think>")

Each image is one <|image_pad|> here; models.vision.expand_image_pads widens it to the image's placeholder run once
the image is encoded. Used by the rollout's prompts (engine/rollout/trajectory.py), the load-time length check
(engine/setup/limits.py) and the model scorer (rewards/scorer.py), so all three count the same tokens.
"""

from __future__ import annotations


def chat_ids(tokenizer, *, system: str, text: str, num_images: int, prefill: str = "") -> list[int]:
    """Token ids of the chat-templated prompt with `num_images` image slots, ending with the assistant header and
    `prefill` (text already placed at the start of the answer)."""
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
    return tokenizer(rendered, add_special_tokens=False).input_ids
