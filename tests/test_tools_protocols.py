"""Tool-call parsing (tools/protocols.py): good calls become ToolCall, garbage becomes a readable error string.

Run: `python -m pytest -q tests/test_tools_protocols.py`.
"""

import pytest

from tools.protocols import ToolCall, find_last_call, parse_inline_call, parse_multiturn
from tools.registry import TOOLS
from tools.run import listing


@pytest.mark.parametrize(
    "body, call",
    [
        ("[10, 20, 110, 90]", ToolCall("crop", {"box": [10.0, 20.0, 110.0, 90.0]})),
        (" [0.00, 141.43, 79.23, 480.00]\n", ToolCall("crop", {"box": [0.0, 141.43, 79.23, 480.0]})),
        ('{"name": "zoom", "arguments": {"factor": 2}}', ToolCall("zoom", {"factor": 2})),
        ('{"name": "flip", "args": {"direction": "vertical"}}', ToolCall("flip", {"direction": "vertical"})),
        ('{"name": "grayscale"}', ToolCall("grayscale", {})),
        ('{"name": "no_such_tool", "arguments": {}}', ToolCall("no_such_tool", {})),  # call_tool rejects it later
    ],
)
def test_inline_calls_parse(body, call):
    assert parse_inline_call(body) == call


@pytest.mark.parametrize(
    "body, error",
    [
        ("", 'could not parse tool call: expected [x1, y1, x2, y2] or {"name": ..., "arguments": {...}}'),
        ("crop [1, 2, 3, 4]", "could not parse tool call: expected [x1, y1, x2, y2]"),
        ('{"name": "zoom", "arguments": {"factor": 2}', "could not parse tool call: expected"),  # truncated
        ("[10, 20, 30]", "could not parse tool call: a box needs 4 numbers [x1, y1, x2, y2], got [10, 20, 30]"),
        ('["10", 20, 30, 40]', 'a box needs 4 numbers [x1, y1, x2, y2], got ["10", 20, 30, 40]'),
        ("[[1, 2, 3, 4]]", "a box needs 4 numbers"),  # nested junk
        ("[1e999, 0, 10, 10]", "got [inf, 0, 10, 10]"),  # huge float -> inf
        ("[" + "9" * 400 + ", 0, 10, 10]", "a box needs 4 numbers"),  # huge int, no float fits it
        ("[NaN, 0, 10, 10]", "got [nan, 0, 10, 10]"),
        ("[true, 0, 10, 10]", "got [true, 0, 10, 10]"),
        ("[" * 100_000, "could not parse tool call"),  # too deep to parse
        ('"crop"', "could not parse tool call"),
        ('{"arguments": {"factor": 2}}', 'tool call needs a "name" string, got null'),
        ('{"name": 5}', 'tool call needs a "name" string, got 5'),
        ('{"name": "zoom", "arguments": [2]}', 'tool call "arguments" must be a JSON object, got [2]'),
        ('{"name": "zoom", "arguments": "{\\"factor\\": 2}"}', 'tool call "arguments" must be a JSON object'),
        ('{"name": "crop", "box": [1, 2, 3, 4]}', 'unexpected key "box"; put the tool\'s arguments inside "arguments"'),
        ('{"name": "zoom", "args": {}, "arguments": {}}', 'has both "arguments" and "args"'),
    ],
)
def test_inline_garbage_gives_an_error_string(body, error):
    result = parse_inline_call(body)
    assert isinstance(result, str) and error in result


def test_multiturn_call_parses_seed_000_format():
    text = 'It is dark.</think>\n<tool>{"name": "adjust_brightness", "args": {"factor": 1.5}}</tool>'
    assert parse_multiturn(text) == ToolCall("adjust_brightness", {"factor": 1.5})


@pytest.mark.parametrize(
    "text",
    ["<think>easy</think><answer>7</answer>", "no tags at all", '<tool>{"name": "info"}</tool> <answer>7</answer>'],
)
def test_multiturn_without_a_pending_call_is_none(text):
    assert parse_multiturn(text) is None


def test_multiturn_takes_the_last_call_and_tolerates_a_missing_close_tag():
    text = '<tool>{"name": "info"}</tool> <answer>?</answer> <tool>{"name": "flip", "args": {"direction": "vertical"}}'
    assert parse_multiturn(text) == ToolCall("flip", {"direction": "vertical"})


@pytest.mark.parametrize(
    "text, error",
    [
        ('<tool>{"name": "blur", "args": {"radius": 2}</tool>', 'could not parse tool call: expected {"name": ...'),
        ("<tool>[1, 2, 3, 4]</tool>", "could not parse tool call"),  # bare boxes are the inline protocol only
        ('<tool>{"name": "blur", "args": 2}</tool>', 'tool call "args" must be a JSON object, got 2'),
        ('<tool>{"args": {}}</tool>', 'tool call needs a "name" string'),
    ],
)
def test_multiturn_garbage_gives_an_error_string(text, error):
    result = parse_multiturn(text)
    assert isinstance(result, str) and error in result


def test_find_last_call_inline_reads_the_newest_call():
    text = "look <tool_call>[0, 0, 10, 10]</tool_call> hmm, closer: <tool_call>[2, 2, 5, 5]</tool_call>"
    assert find_last_call(text, "inline") == ToolCall("crop", {"box": [2.0, 2.0, 5.0, 5.0]})
    assert find_last_call("no call here", "inline") is None
    # "<tool>" does not match inside "<tool_call>", and the other way round
    assert find_last_call("<tool_call>[0, 0, 1, 1]</tool_call>", "multiturn") is None
    assert find_last_call('<tool>{"name": "info"}</tool>', "inline") is None


def test_find_last_call_rejects_unknown_protocols():
    with pytest.raises(ValueError, match="inline, multiturn"):
        find_last_call("<tool>{}</tool>", "xml")


def test_the_listing_names_exactly_the_registered_tools():
    text = listing()
    assert [line.split("(")[0] for line in text.splitlines()] == TOOLS.names()
    assert "zoom(factor, center=null) (also zoom_image): Zoom by factor" in text
    assert "resize(width=null, height=null, keep_aspect=true) (also resize_image): " in text
