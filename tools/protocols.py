"""Tool-call protocols: parse a model's text into `ToolCall(name, args)` or an error string the model can read.

- "inline" (seed 001, Qwen's own tokens): `<tool_call>[x1, y1, x2, y2]</tool_call>` crops a box (in the model
  family's box frame), and `<tool_call>{"name": "zoom", "arguments": {"factor": 2}}</tool_call>` calls any tool.
- "multiturn" (seed 000): `<tool>{"name": "adjust_brightness", "args": {"factor": 1.5}}</tool>` ends the turn and
  the result comes back in the next message; `<answer>...</answer>` ends the episode.
Both accept "arguments" or "args". Parsing checks only the shape (a name, an object of arguments, 4 finite numbers
for a bare box); whether the tool exists and its arguments make sense is `tools.registry.call_tool`'s job.
`describe_tools` writes the system-prompt text from the registry, so prompts list exactly the registered tools.

    from tools.protocols import find_last_call
    find_last_call('look <tool_call>[10, 20, 110, 90]</tool_call>', "inline")  # ToolCall("crop", {"box": [...]})

Run the tests: `python -m pytest -q tests/test_tools_protocols.py`.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Callable

from tools.boxes import box_numbers, show
from tools.registry import CANONICAL, TOOLS


@dataclass
class ToolCall:
    name: str
    args: dict


INLINE_EXPECTED = 'expected [x1, y1, x2, y2] or {"name": ..., "arguments": {...}}'
MULTITURN_EXPECTED = 'expected {"name": ..., "args": {...}}'
_UNPARSABLE = object()


def _load_json(body: str):
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; "[[[[..." can recurse too deep
        return _UNPARSABLE


def _call_from_object(obj: dict) -> ToolCall | str:
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return f'tool call needs a "name" string, got {show(name)}'
    keys = [key for key in ("arguments", "args") if key in obj]
    if len(keys) > 1:
        return 'tool call has both "arguments" and "args"; give one'
    stray = [key for key in obj if key not in ("name", *keys)]
    if stray:
        return f'tool call has an unexpected key {show(stray[0])}; put the tool\'s arguments inside "arguments"'
    args = obj[keys[0]] if keys else {}
    if not isinstance(args, dict):
        return f'tool call "{keys[0]}" must be a JSON object, got {show(args)}'
    return ToolCall(name, args)


def parse_inline_call(body: str) -> ToolCall | str:
    """The text between <tool_call> and </tool_call>: a bare box (-> crop) or Qwen's {"name", "arguments"} JSON."""
    value = _load_json(body)
    if isinstance(value, list):
        box = box_numbers(value)
        if box is None:
            return f"could not parse tool call: a box needs 4 numbers [x1, y1, x2, y2], got {show(value)}"
        return ToolCall("crop", {"box": box})
    if isinstance(value, dict):
        return _call_from_object(value)
    return f"could not parse tool call: {INLINE_EXPECTED}"


def parse_multiturn_call(body: str) -> ToolCall | str:
    """The text between <tool> and </tool>: {"name": ..., "args": {...}}."""
    value = _load_json(body)
    if isinstance(value, dict):
        return _call_from_object(value)
    return f"could not parse tool call: {MULTITURN_EXPECTED}"


@dataclass
class Protocol:
    open_tag: str
    close_tag: str
    parse_body: Callable[[str], ToolCall | str]
    prompt: str  # how the system prompt tells the model to call tools


PROTOCOLS = {
    "inline": Protocol(
        "<tool_call>",
        "</tool_call>",
        parse_inline_call,
        "To look closer at a region, write <tool_call>[x1, y1, x2, y2]</tool_call>; the crop is shown to you next. "
        'Call another tool with <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>.',
    ),
    "multiturn": Protocol(
        "<tool>",
        "</tool>",
        parse_multiturn_call,
        'Call a tool with <tool>{"name": "<tool>", "args": {...}}</tool>; its result comes in the next message. '
        "Give your final answer as <answer>...</answer>.",
    ),
}
TOOL_CALL_FORMATS = {name: protocol.prompt for name, protocol in PROTOCOLS.items()}


def _protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown tool-call protocol {name!r}; protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def find_last_call(text: str, protocol: str) -> ToolCall | str | None:
    """The last tool call in `text`: a ToolCall, an error string for the model, or None when there is no call
    (or an <answer> follows the last one). The closing tag may be missing: generation often stops on it."""
    spec = _protocol(protocol)
    start = text.rfind(spec.open_tag)
    if start < 0 or "<answer>" in text[start:]:
        return None
    body = text[start + len(spec.open_tag) :]
    end = body.find(spec.close_tag)
    return spec.parse_body(body if end < 0 else body[:end])


def parse_multiturn(text: str) -> ToolCall | str | None:
    """Seed 000's turn: the call in its last <tool>...</tool>, an error string, or None (no call, or an answer)."""
    return find_last_call(text, "multiturn")


FRAME_WORDS = {
    "pixels": "pixels of the image",
    "resized": "pixels of the image as you see it",
    "norm1000": "numbers from 0 to 1000 across the image's width and height",
}


def describe_tools(protocol: str | None = None, names: list[str] | None = None, frame: str = "pixels") -> str:
    """System-prompt text: how to call tools (if `protocol`), then one line per tool (default: all canonical ones)."""
    if frame not in FRAME_WORDS:
        raise ValueError(f"unknown box frame {frame!r}; frames: {', '.join(FRAME_WORDS)}")
    unknown = [name for name in names or [] if name not in TOOLS]
    if unknown:
        raise ValueError(f"unknown tool {unknown[0]!r}; tools: {', '.join(CANONICAL)}")
    lines = [_protocol(protocol).prompt] if protocol else []
    lines.append(f"Coordinates (box, center) are {FRAME_WORDS[frame]}. Tools:")
    for name in names or list(CANONICAL):
        fn = TOOLS[name]
        params = list(inspect.signature(fn).parameters.values())[1:]  # [0] is the image
        shown = [p.name if p.default is p.empty else f"{p.name}={json.dumps(p.default)}" for p in params]
        lines.append(f"- {name}({', '.join(shown)}): {inspect.getdoc(fn).splitlines()[0]}")
    return "\n".join(lines)
