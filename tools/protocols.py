"""Tool-call protocols: parse a model's text into `ToolCall(name, args)` or an error string the model can read.

- "inline" (seed 001, Qwen's own tokens): `<tool_call>[x1, y1, x2, y2]</tool_call>` crops a box (in the model
  family's box frame), and `<tool_call>{"name": "zoom", "arguments": {"factor": 2}}</tool_call>` calls any tool.
- "multiturn" (seed 000): `<tool>{"name": "adjust_brightness", "args": {"factor": 1.5}}</tool>` ends the turn and
  the result comes back in the next message; `<answer>...</answer>` ends the episode.
Both accept "arguments" or "args". Parsing checks only the shape (a name, an object of arguments, 4 finite numbers
for a bare box); whether the tool exists and its arguments make sense is `tools.registry.call_tool`'s job.
What the model is TOLD about the tools is tools/schema.py's (`tools_section`), from the registry.

    from tools.protocols import find_last_call
    find_last_call('look <tool_call>[10, 20, 110, 90]</tool_call>', "inline")  # ToolCall("crop", {"box": [...]})

Run the tests: `python -m pytest -q tests/test_tools_protocols.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from tools.boxes import box_numbers, show


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


PROTOCOLS = {
    "inline": Protocol(
        "<tool_call>",
        "</tool_call>",
        parse_inline_call,
    ),
    "multiturn": Protocol(
        "<tool>",
        "</tool>",
        parse_multiturn_call,
    ),
}


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
