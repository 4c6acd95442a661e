"""Format rewards, answer extraction and the no-credit guards (rewards/format.py). Each near-miss is one
character-level change from a passing response, so a test fails if the rule it pins is loosened."""

import pytest

from data.example import Example
from rewards import REWARDS, RewardContext, extract_answer
from rewards.format import answer_length_cap, is_placeholder

EX = Example(question="q", answers=["4"], images=[])
CTX = RewardContext()


def score(name, completion, ctx=CTX):
    return REWARDS[name](completion, EX, ctx)


GOOD = "<think>\n2 + 2 is 4\n</think>\n<answer>\n4\n</answer>"


@pytest.mark.parametrize("completion, expected", [
    (GOOD, 1.0),
    ("Sure!  <think>x</think>   <answer> 4 </answer>  \n", 1.0),  # text before <think> and whitespace anywhere
    (GOOD + "<|im_end|>", 1.0),  # end-of-turn token ignored
    ("<think>x</think><answer>4", 0.0),  # missing closing tag
    ("<think>x<answer>4</answer>", 0.0),  # missing </think>
    ("<answer>4</answer><think>x</think>", 0.0),  # tags out of order
    ("<think>x</think><answer></answer>", 0.0),  # empty answer
    ("<think>x</think><answer>  \n </answer>", 0.0),  # whitespace-only answer
    ("<think>x</think><answer>...</answer>", 0.0),  # template placeholder
    ("<think>x</think><answer>answer here</answer>", 0.0),  # template placeholder
    ("<think> </think><answer>4</answer>", 0.0),  # empty think
    ("<think>x</think><answer>4</answer> and more", 0.0),  # text after the answer
    ("<think>x</think>so<answer>4</answer>", 0.0),  # text between the blocks
    ("<think>a <answer>3</answer> b</think><answer>4</answer>", 0.0),  # nested tag inside <think>
])
def test_format_lenient(completion, expected):
    assert score("format", completion) == expected


def test_prefilled_think_counts_as_part_of_the_response():
    completion = "2 + 2 is 4</think><answer>4</answer>"  # the template already wrote "<think>"
    assert score("format", completion) == 0.0
    assert score("format", completion, RewardContext(prompt_prefill="<think>")) == 1.0
    strict = "\n2 + 2 is 4\n</think>\n<answer>\n4\n</answer>"
    assert score("format_strict", strict, RewardContext(prompt_prefill="<think>")) == 1.0


@pytest.mark.parametrize("completion, expected", [
    (GOOD, 1.0),
    ("  \n" + GOOD + "\n\n", 1.0),  # outer whitespace is fine
    ("Sure! " + GOOD, 0.0),  # text outside the tags
    (GOOD + " done", 0.0),
    ("<think>2 + 2 is 4</think>\n<answer>\n4\n</answer>", 0.0),  # no newline inside <think>
    ("<think>\nx\n</think><answer>\n4\n</answer>", 0.0),  # no newline between the blocks
    ("<think>\nx\n</think>\n<think>\ny\n</think>\n<answer>\n4\n</answer>", 0.0),  # <think> twice
    ("<think>\nx\n</think>\n<answer>\n\n</answer>", 0.0),  # empty answer
])
def test_format_strict(completion, expected):
    assert score("format_strict", completion) == expected


TOOL = '<tool>{"name": "crop_image", "args": {"box": [0, 0, 10, 10]}}</tool>'


@pytest.mark.parametrize("completion, expected", [
    ("<think>look closer</think>" + TOOL + "<think>it is red</think><answer>red</answer>", 1.0),
    ("<think>easy</think><answer>red</answer>", 1.0),  # zero tool calls is fine
    ("<think>a</think>" + TOOL + "\n[tool output: image]\n<think>b</think><answer>red</answer>", 1.0),
    ("<think>a</think><tool>{\"name\": \"crop_image\"}</tool><answer>red</answer>", 0.0),  # no "args"
    ("<think>a</think><tool>{name: crop_image, args: {}}</tool><answer>red</answer>", 0.0),  # not JSON
    ("<think>a</think><tool>{\"name\": \"crop\", \"args\": {}}<answer>red</answer>", 0.0),  # unclosed <tool>
    (TOOL + "<think>a</think><answer>red</answer>", 0.0),  # a tool call before any thinking
    ("<think>a</think><answer>red</answer>" + TOOL, 0.0),  # does not end with the answer
    ("<think>a</think><answer>red</answer><answer>blue</answer>", 0.0),  # two answers
    ("<think>a</think><answer> </answer>", 0.0),  # empty answer
])
def test_format_tools(completion, expected):
    assert score("format_tools", completion) == expected


JSON_OK = '{"reasoning_steps": ["the sign is red"], "answer": "red"}'


@pytest.mark.parametrize("completion, expected", [
    (JSON_OK, 1.0),
    ("```json\n" + JSON_OK + "\n```", 1.0),  # fenced
    ("<think>t</think><answer>" + JSON_OK + "</answer>", 1.0),  # the answer part is the JSON
    ('{"reasoning_steps": [], "answer": "red"}', 0.0),  # empty step list
    ('{"reasoning_steps": ["x", 3], "answer": "red"}', 0.0),  # a step that is not a string
    ('{"reasoning_steps": ["x"], "answer": ""}', 0.0),  # empty answer
    ('{"reasoning_steps": ["x"], "answer": 3}', 0.0),  # answer not a string
    ('{"reasoning_steps": ["x"]}', 0.0),  # no answer
    ('{"reasoning_steps": ["x"], "answer": "red"', 0.0),  # missing closing brace
    ("Here you go: " + JSON_OK, 0.0),  # text outside the JSON
])
def test_format_json(completion, expected):
    assert score("format_json", completion) == expected


@pytest.mark.parametrize("completion, expected", [
    ("<scan>a triangle ABC</scan><think>x</think><answer>3</answer>", 1.0),
    ("<scan>a triangle ABC</scan>\n<think>x</think>\n<answer>3</answer>\n", 1.0),
    ("<think>x</think><scan>a triangle</scan><answer>3</answer>", 0.0),  # scan after think
    ("<think>x</think><answer>3</answer>", 0.0),  # no scan
    ("<scan></scan><think>x</think><answer>3</answer>", 0.0),  # empty scan
    ("<scan>s</scan><think>x</think><answer>3", 0.0),  # missing closing tag
])
def test_format_scan(completion, expected):
    assert score("format_scan", completion) == expected


def test_extract_answer_takes_the_last_tag_and_never_the_whole_text():
    assert extract_answer("<answer>1</answer> then <answer> 2 </answer>", "tags") == "2"
    assert extract_answer("the answer is 2", "tags") is None  # no fallback to the text
    assert extract_answer("the answer is 2", "auto") is None
    assert extract_answer("<answer>2", "auto") is None  # unclosed
    assert extract_answer("<answer>answer here</answer>", "auto") is None  # placeholder = no answer
    assert extract_answer(JSON_OK, "json") == "red"
    assert extract_answer(JSON_OK, "auto") == "red"
    assert extract_answer("<answer>" + JSON_OK + "</answer>", "auto") == "red"
    assert extract_answer("<answer>" + JSON_OK + "</answer>", "tags") == JSON_OK
    assert extract_answer('{"answer": ', "json") is None
    with pytest.raises(ValueError, match="protocol"):
        extract_answer("x", "xml")


def test_guards():
    assert is_placeholder("<...>") and is_placeholder(" … ") and is_placeholder("[x1, y1, x2, y2]")
    assert is_placeholder("Your answer here.")
    assert not is_placeholder("0") and not is_placeholder("红色")  # a digit or a non-Latin word is an answer
    assert answer_length_cap("abc", 3) == "abc"
    assert answer_length_cap("abcd", 3) is None
    assert answer_length_cap(None, 3) is None
