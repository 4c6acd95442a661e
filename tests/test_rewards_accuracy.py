"""VQA normalisation, numbers and expressions, answer matching, the VQA consensus rule, and tool_success.
Expected values are worked by hand in the comments."""

import math
from types import SimpleNamespace

import pytest

from data.example import Example
from rewards import REWARDS, RewardContext, answers_match, normalize_answer, vqa_score
from rewards.mathexpr import parse_number


@pytest.mark.parametrize("raw, normalized", [
    ("Two", "2"),  # number word -> digit (manualMap), after lowercasing
    ("a dog", "dog"),  # article removed
    ("dont", "don't"),  # contractions map
    ("yes.", "yes"),  # a period not followed by a digit is removed
    ("3.5", "3.5"),  # ...but one followed by a digit stays
    ("1,000", "1000"),  # comma between digits: every punctuation mark is deleted, not spaced
    ("red/blue", "red blue"),  # "/" touches no space and no digit-comma: becomes a space
    ("red / blue", "red blue"),  # "/" touches a space: deleted (double space collapses on split)
    ("  The  Cat\n", "cat"),
    ("none", "0"),  # the script maps "none" to "0" too
])
def test_vqa_normalization_examples(raw, normalized):
    assert normalize_answer(raw) == normalized


@pytest.mark.parametrize("text, value", [
    ("3.0", 3.0), ("1/2", 0.5), ("5 cm", 5.0), ("5cm", 5.0), ("30°", 30.0), ("30 degrees", 30.0),
    ("30^\\circ", 30.0), ("12 cm^2", 12.0), ("$5", 5.0), ("x = 5", 5.0), ("1,000", 1000.0),
    ("50%", 50.0),  # percent is a unit: 50, not 0.5
    ("2\\sqrt{3}", 2 * math.sqrt(3)), ("4\\sqrt{2}", 4 * math.sqrt(2)), ("\\frac{7}{2}", 3.5),
    ("\\dfrac{\\sqrt{3}}{2}", math.sqrt(3) / 2), ("\\pi", math.pi), ("3\\pi", 3 * math.pi), ("12.5", 12.5),
    ("\\sqrt[3]{8}", 2.0), ("2^{3}", 8.0), ("-(1+2)*3", -9.0),
])
def test_parse_number(text, value):
    assert parse_number(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("text", [
    "blue", "B", "2 3", "1/0", "9^9^9^9", "(-8)^(1/3)", "__import__('os')", "2**", "(" * 60 + "1" + ")" * 60, "",
])
def test_parse_number_refuses_safely(text):
    assert parse_number(text) is None  # not numbers, undefined, overflowing, code, or nested too deep


def test_sqrt_expression_value():
    assert parse_number("2\\sqrt{3}") == pytest.approx(3.4641, abs=1e-4)  # 2 * 1.73205 = 3.46410


@pytest.mark.parametrize("pred, ref, expected", [
    ("3.46", "2\\sqrt{3}", True),  # |3.46 - 3.4641| / 3.4641 = 0.12% < 1%
    ("3.5", "2\\sqrt{3}", False),  # |3.5 - 3.4641| / 3.5 = 1.03% > 1%
    ("12.6", "12.5", True),  # 0.1 / 12.6 = 0.79%
    ("12.7", "12.5", False),  # 0.2 / 12.7 = 1.57%
    ("101", "100", False),  # both integers: must be equal, although within 1%
    ("3.0", "3", True),
    ("1/2", "0.5", True),
    ("\\frac{7}{2}", "3.5", True),
    ("5 cm", "5", True),
    ("30°", "30", True),
    ("30 degrees", "30", True),
    ("50%", "50", True),
    ("50%", "0.5", False),  # decided: % is a unit, never /100
    ("Two", "2", True),
    ("a dog", "dog", True),
    ("yes.", "yes", True),
    ("dog", "cat", False),
    ("", "dog", False),
    (None, "dog", False),
])
def test_answers_match(pred, ref, expected):
    assert answers_match(pred, ref) is expected


CHOICES = ["red", "blue", "green"]


@pytest.mark.parametrize("pred", ["B", "(B)", "B.", "B)", "B. blue", "B: blue", "(B) blue", "blue", "Blue", "b."])
@pytest.mark.parametrize("ref", ["blue", "B"])
def test_multiple_choice_forms_match(pred, ref):
    assert answers_match(pred, ref, CHOICES)


@pytest.mark.parametrize("pred", ["C", "(A)", "green", "B. red", "A or B", "b"])  # "B. red" hedges; bare "b" is a word
def test_multiple_choice_mismatches(pred):
    assert not answers_match(pred, "blue", CHOICES)


def test_vqa_consensus_rule_with_ten_references():
    refs = ["red"] * 2 + ["dark red"] * 5 + ["maroon"] * 3  # 10 annotators
    assert vqa_score("Red.", refs) == pytest.approx(2 / 3)  # 2 matching -> min(2/3, 1)
    assert vqa_score("maroon", refs) == 1.0  # 3 matching -> min(3/3, 1)
    assert vqa_score("dark red", refs) == 1.0  # 5 matching -> capped at 1
    assert vqa_score("blue", refs) == 0.0
    assert vqa_score("pink", ["pink", "red", "rose"]) == pytest.approx(1 / 3)  # 3 refs, 1 match
    assert vqa_score("rose", ["pink", "rose"]) == 1.0  # fewer than 3 refs: alternatives
    assert vqa_score(None, refs) == 0.0 and vqa_score("  ", ["  "]) == 0.0


def _ex(answers, choices=()):
    return Example(question="q", answers=list(answers), images=[], choices=list(choices))


def test_accuracy_reward_reads_the_answer_tag_or_json():
    acc = REWARDS["accuracy"]
    assert acc("<think>x</think><answer>Two</answer>", _ex(["2"]), RewardContext()) == 1.0
    assert acc('{"reasoning_steps": ["x"], "answer": "B. blue"}', _ex(["blue"], CHOICES), RewardContext()) == 1.0
    assert acc("<think>it is 2</think>", _ex(["2"]), RewardContext()) == 0.0  # no answer: never the whole text
    assert acc("<answer></answer>", _ex(["", "2"]), RewardContext()) == 0.0  # empty answer vs any ref
    assert acc("<answer>...</answer>", _ex(["..."]), RewardContext()) == 0.0  # placeholder never earns credit
    with pytest.raises(ValueError, match="no reference answers"):
        acc("<answer>2</answer>", _ex([]), RewardContext())


def test_tool_success_is_paid_only_for_a_correct_answer():
    tool = REWARDS["tool_success"]
    calls = [SimpleNamespace(name="crop", ok=True), SimpleNamespace(name="crop", ok=False),
             SimpleNamespace(name="rotate", error=None)]  # no .ok: success because error is None
    right, wrong = "<answer>2</answer>", "<answer>3</answer>"
    assert tool(right, _ex(["2"]), RewardContext(tool_calls=calls)) == pytest.approx(2 / 3)  # 2 of 3 worked
    assert tool(wrong, _ex(["2"]), RewardContext(tool_calls=calls)) == 0.0  # hacking guard
    assert tool(right, _ex(["2"]), RewardContext()) == 0.0  # no calls
    failed = [SimpleNamespace(name="crop", error="box outside image"), {"name": "zoom", "ok": True}]
    assert tool(right, _ex(["2"]), RewardContext(tool_calls=failed)) == 0.5


def test_plain_tool_reward_pays_for_working_calls_whatever_the_answer():
    tool = REWARDS["tool"]
    calls = [SimpleNamespace(name="crop", ok=True), SimpleNamespace(name="crop", ok=False),
             SimpleNamespace(name="rotate", error=None)]
    right, wrong = "<answer>2</answer>", "<answer>3</answer>"
    assert tool(right, _ex(["2"]), RewardContext(tool_calls=calls)) == pytest.approx(2 / 3)  # 2 of 3 worked
    assert tool(wrong, _ex(["2"]), RewardContext(tool_calls=calls)) == pytest.approx(2 / 3)  # no gate: paid anyway
    assert REWARDS["tool_success"](wrong, _ex(["2"]), RewardContext(tool_calls=calls)) == 0.0  # the gated one: not
    assert tool(wrong, _ex(["2"]), RewardContext()) == 0.0  # no calls


def test_a_sentence_reference_scores_the_words_that_answer_the_question():
    """Seed 001's <answer> is a sentence: the short answer is the reference's words the question lacks."""
    from rewards.accuracy import sentence_match

    q, ref = "What is the visible clothing of the person on the far left?", \
        "The visible clothing of the person on the far left is a dark jacket."
    for pred in ("dark jacket", "a dark jacket", "A dark jacket.", ref, "The person on the far left: a dark jacket"):
        assert sentence_match(pred, ref, q), pred
    for pred in ("jacket", "a red jacket", "dark or light jacket", "", None, "the person"):
        assert not sentence_match(pred, ref, q), pred
    assert sentence_match("blue", "The square is blue.", "What color is the square?")  # the case
    assert not sentence_match("red", "The square is blue.", "What color is the square?")
    assert sentence_match("2", "Two.", "How many?") and not sentence_match("3", "Two.", "How many?")


def test_accuracy_uses_the_sentence_rule_only_for_marked_examples():
    from data import Example
    from rewards.accuracy import accuracy_reward
    from rewards.registry import RewardContext

    plain = Example("What color is the square?", ["The square is blue."], [])
    marked = Example("What color is the square?", ["The square is blue."], [], metadata={"answer_form": "sentence"})
    ctx = RewardContext()
    assert accuracy_reward("<answer>blue</answer>", plain, ctx) == 0.0  # exact match against a sentence
    assert accuracy_reward("<answer>blue</answer>", marked, ctx) == 1.0
    assert accuracy_reward("<answer>red</answer>", marked, ctx) == 0.0
