"""A small byte-level BPE tokenizer trained offline, carrying Qwen's special tokens in Qwen's order.

Used only by the tiny test/demo models (`models/tiny.py`). Byte-level, so any text round-trips; the vocabulary
(~1,000) is trained on generated text that covers our prompts, answers, tags and numbers.
`<tool_call>`/`</tool_call>` (and the reasoning tags) are single, NON-special ids: they survive
`skip_special_tokens` and can be used as stop ids, as in the real Qwen tokenizers.
"""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Qwen2-VL's special tokens, in Qwen's order.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Single ids that are ordinary text to the tokenizer (not stripped by skip_special_tokens).
PLAIN_ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>", "<answer>", "</answer>",
                      "<tool>", "</tool>", "<scan>", "</scan>"]
BPE_VOCAB_SIZE = 1000  # byte alphabet (256) + merges + SPECIAL_TOKENS

# The Qwen2-VL chat template (images become <|vision_start|><|image_pad|><|vision_end|>; the engine expands
# the single pad to the image's token count).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "what color is the square where circle triangle pattern inside bold box measure of angle marked in degrees "
    "red green blue yellow purple orange black white gray horizontal vertical checker dots stripes "
    "a an the of to and is it this that image picture look closer crop zoom rotate flip brightness contrast "
    "blur sharpen grayscale resize info answer think tool call let me see region detail top left right bottom "
    "center small large number how many which one yes no because so therefore first then find locate "
    "you are helpful assistant system user question reason step by carefully output final choice option "
    "name args arguments factor angle direction radius width height keep aspect box bbox x y"
).split()


def _corpus(seed: int, n_lines: int = 6000) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        nums = [str(rng.randint(0, 999)) for _ in range(4)]
        kind = rng.randrange(5)
        if kind == 0:
            lines.append(" ".join(words).capitalize() + "?")
        elif kind == 1:
            lines.append(f"<think>{' '.join(words)}</think><answer>{rng.choice(_WORDS)}</answer>")
        elif kind == 2:
            lines.append(f"<tool_call>[{', '.join(nums)}]</tool_call> {' '.join(words)}")
        elif kind == 3:
            lines.append('{"name": "%s", "arguments": {"box": [%s]}}' % (rng.choice(_WORDS), ", ".join(nums)))
        else:
            lines.append(f"{' '.join(words)}. {rng.randint(0, 180)} degrees, {rng.random():.2f}")
    return lines


def build_tokenizer(seed: int = 0) -> PreTrainedTokenizerFast:
    """Train the tokenizer; deterministic for a given seed."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    # The trainer silently gives fewer merges than asked when the corpus is too small.
    assert tok.get_vocab_size() == BPE_VOCAB_SIZE, f"BPE trained {tok.get_vocab_size()} != {BPE_VOCAB_SIZE}"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    fast.add_tokens(PLAIN_ADDED_TOKENS, special_tokens=False)
    fast.eos_token = "<|im_end|>"
    fast.pad_token = "<|endoftext|>"
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 32768
    assert fast.convert_tokens_to_ids("<|endoftext|>") == 0, "Qwen's order: <|endoftext|> first"
    return fast
