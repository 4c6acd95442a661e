"""Format rewards (1.0 / 0.0, no partial credit), answer extraction, and the no-credit guards.

Try one: `python -m rewards.explain format --completion "<think>x</think><answer>4</answer>" --answer 4`.

The response a format reward sees is `ctx.prompt_prefill + completion`: a chat template that already opened
`<think>` in the prompt must still score. Trailing end-of-turn tokens (`<|im_end|>`, `<|endoftext|>`) are ignored.
A required tag that is empty, whitespace-only or a template placeholder (`<answer>...</answer>`,
`<answer>answer here</answer>`, the `[x1, y1, x2, y2]` of seed 002's prompt) scores 0 everywhere.

Sources of the rules:
- "format": seed 002's `<think>.*?</think>\\s*<answer>.*?</answer>` (R1 style), anything before `<think>` allowed.
- "format_strict": the whole response is `<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>` (DeepSeek-R1's
  template), modulo outer whitespace; each tag once, no text outside.
- "format_tools": seed 000's XML protocol: `<think>` blocks, `<tool>{"name": ..., "args": {...}}</tool>` calls,
  a final `<answer>`. Text between blocks is allowed (a rollout may interleave tool output there).
- "format_json": seed 003's `{"reasoning_steps": [str, ...], "answer": str}`, as the `<answer>` part or the
  whole response, optionally inside a ```json fence.
- "format_scan": seed 004's Vision-SR1 layout `<scan>...</scan>` then `<think>...</think>` then `<answer>...</answer>`.
"""

from __future__ import annotations

import functools
import json
import re

from data.example import Example
from rewards.registry import RewardContext, register

_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
# One character that does not start any of our tags: block contents may not hold another tag. Tempered tokens
# (not `.*?`) also keep every pattern linear-time on adversarial text such as "<think>" * 20000.
_C = r"(?:(?!</?(?:think|answer|scan|tool)>).)"
_LENIENT = re.compile(rf"<think>({_C}*)</think>\s*<answer>({_C}*)</answer>\s*\Z", re.DOTALL)
_STRICT = re.compile(rf"\A\s*<think>\n({_C}*)\n</think>\n<answer>\n({_C}*)\n</answer>\s*\Z", re.DOTALL)
_SCAN = re.compile(rf"<scan>({_C}*)</scan>\s*<think>({_C}*)</think>\s*<answer>({_C}*)</answer>\s*\Z", re.DOTALL)
_BLOCK = re.compile(rf"<(think|tool|answer)>({_C}*)</\1>", re.DOTALL)

# Normalised (lowercase, word characters only) texts that are a prompt's template, not an answer.
_PLACEHOLDERS = {
    "", "answer", "answer here", "your answer", "your answer here", "final answer", "your final answer",
    "the answer", "insert answer here", "x1 y1 x2 y2", "thinking process", "reasoning process",
    "your reasoning", "reasoning here", "your reasoning here", "think here", "step by step reasoning",
}


def response_text(completion: str, ctx: RewardContext) -> str:
    """The assistant turn as the model produced it: prefill + completion, trailing end-of-turn tokens and
    whitespace dropped."""
    text = (ctx.prompt_prefill + completion).rstrip()
    while text.endswith(_END_TOKENS):
        text = text[: -len(next(t for t in _END_TOKENS if text.endswith(t)))].rstrip()
    return text


@functools.lru_cache(maxsize=None)
def _block_pattern(tag: str) -> re.Pattern:
    return re.compile(rf"<{tag}>((?:(?!</?{tag}>).)*)</{tag}>", re.DOTALL)


def tag_blocks(text: str, tag: str) -> list[str]:
    """Contents of every closed `<tag>...</tag>`, in order (an unclosed tag yields nothing)."""
    return _block_pattern(tag).findall(text)


def _strip_fence(text: str) -> str:
    """The inside of a ```json ... ``` fence; string slicing, since a regex here backtracks badly on whitespace."""
    if len(text) >= 6 and text.startswith("```") and text.endswith("```"):
        inner = text[3:-3]
        return (inner[4:] if inner[:4].lower() == "json" else inner).strip()
    return text


def is_placeholder(text: str | None) -> bool:
    """True for None, blank, dots/ellipses, or a known template string: none of these earns credit."""
    if text is None:
        return True
    words = re.sub(r"[\W_]+", " ", text.lower()).split()  # Unicode-aware: a Chinese answer is not blank
    return " ".join(words) in _PLACEHOLDERS


def answer_length_cap(answer: str | None, max_chars: int) -> str | None:
    """The answer, or None when it is longer than `max_chars`.

    Judged answers use this: an over-long answer earns nothing rather than being truncated, because a
    truncated dump of many candidate answers could still hold the right one.
    """
    if answer is None or len(answer) > max_chars:
        return None
    return answer


def parse_json_response(text: str) -> dict | None:
    """The JSON object held by the last `<answer>` part, or else by the whole text (a ```json fence allowed)."""
    tags = tag_blocks(text, "answer")
    candidate = _strip_fence((tags[-1] if tags else text).strip())
    try:
        obj = json.loads(candidate)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; "[" * 10000 recurses too deep
        return None
    return obj if isinstance(obj, dict) else None


def extract_answer(text: str, protocol: str = "auto") -> str | None:
    """The final answer, or None. Never falls back to the whole text.

    protocol "tags": the content of the LAST `<answer>...</answer>`. "json": the "answer" string of the JSON
    response (see `parse_json_response`). "auto": tags when there is a tag (unwrapping a JSON "answer" inside
    it), else json. A blank or placeholder answer counts as no answer (None).
    """
    if protocol not in ("tags", "json", "auto"):
        raise ValueError(f"unknown answer protocol {protocol!r}; use 'tags', 'json' or 'auto'")
    answer = None
    tags = tag_blocks(text, "answer")
    if protocol in ("tags", "auto") and tags:
        answer = tags[-1].strip()
        if protocol == "auto":
            obj = parse_json_response(answer)
            if obj is not None and isinstance(obj.get("answer"), str):
                answer = obj["answer"].strip()
    elif protocol == "json" or (protocol == "auto" and not tags):
        obj = parse_json_response(text)
        if obj is not None and isinstance(obj.get("answer"), str):
            answer = obj["answer"].strip()
    return None if is_placeholder(answer) else answer


def _all_filled(*parts: str) -> bool:
    return all(not is_placeholder(p) for p in parts)


@register("format")
def format_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    """1 when the response ends with `<think>X</think> <answer>Y</answer>` (X, Y filled, no nested tags)."""
    m = _LENIENT.search(response_text(completion, ctx))
    return 1.0 if m and _all_filled(*m.groups()) else 0.0


@register("format_strict")
def format_strict_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    """1 when the whole response is exactly `<think>\\nX\\n</think>\\n<answer>\\nY\\n</answer>`."""
    m = _STRICT.match(response_text(completion, ctx))
    return 1.0 if m and _all_filled(*m.groups()) else 0.0


@register("format_scan")
def format_scan_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    """1 when the response ends with `<scan>S</scan> <think>T</think> <answer>A</answer>`, all filled."""
    m = _SCAN.search(response_text(completion, ctx))
    return 1.0 if m and _all_filled(*m.groups()) else 0.0


def _is_tool_call(body: str) -> bool:
    try:
        call = json.loads(body)
    except ValueError:
        return False
    return (isinstance(call, dict) and isinstance(call.get("name"), str) and bool(call["name"].strip())
            and isinstance(call.get("args"), dict))


@register("format_tools")
def format_tools_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    """1 for seed 000's protocol: starts with a `<think>` block, any `<tool>{json}</tool>` calls, ends with the
    only `<answer>`. Every tag is closed and none nests (opening count == closing count == block count)."""
    text = response_text(completion, ctx)
    blocks = list(_BLOCK.finditer(text))
    for tag in ("think", "tool", "answer"):
        found = sum(1 for b in blocks if b.group(1) == tag)
        if not text.count(f"<{tag}>") == text.count(f"</{tag}>") == found:
            return 0.0
    kinds = [b.group(1) for b in blocks]
    if not kinds or kinds[0] != "think" or kinds[-1] != "answer" or kinds.count("answer") != 1:
        return 0.0
    if text[blocks[-1].end():].strip():
        return 0.0
    for b in blocks:
        if b.group(1) == "tool" and not _is_tool_call(b.group(2)):
            return 0.0
        if b.group(1) != "tool" and is_placeholder(b.group(2)):
            return 0.0
    return 1.0


@register("format_json")
def format_json_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    """1 when the response (or its `<answer>` part) is `{"reasoning_steps": [non-empty str, ...], "answer": str}`."""
    obj = parse_json_response(response_text(completion, ctx))
    if obj is None:
        return 0.0
    steps, answer = obj.get("reasoning_steps"), obj.get("answer")
    if not isinstance(steps, list) or not steps or not isinstance(answer, str) or is_placeholder(answer):
        return 0.0
    return 1.0 if all(isinstance(s, str) and not is_placeholder(s) for s in steps) else 0.0
