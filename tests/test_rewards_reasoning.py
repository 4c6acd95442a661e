"""Match-F1 reasoning reward (rewards/reasoning.py) and the visual-grounding bonus (rewards/visual.py)."""

import json

import numpy as np
import pytest

from data.example import Example
from rewards import REWARDS, RewardContext
from rewards.reasoning import match_f1, predicted_steps, token_f1

REF_STEPS = ["The sign is red", "The car is parked near the sign", "Return the answer"]


def _ex(question="q", steps=REF_STEPS):
    return Example(question=question, answers=["red"], images=[], reference_steps=list(steps))


def test_token_f1_by_hand():
    # words after dropping "the": [sign, is, red, and, round] vs [sign, is, red]: common 3,
    # precision 3/5, recall 3/3, F1 = 2 * 0.6 * 1 / 1.6 = 0.75
    assert token_f1("The sign is red and round.", "the sign is RED") == pytest.approx(0.75)
    assert token_f1("a dog", "the cat") == 0.0


def test_reasoning_f1_by_hand_from_json_steps():
    completion = json.dumps({"reasoning_steps": ["The sign is red and round", "A dog is sleeping"], "answer": "red"})
    # step 1 matches REF 1 (F1 0.75 >= 0.5). Step 2 "[dog, is, sleeping]" vs REF 1 "[sign, is, red]": 1/3;
    # vs REF 2 [car, is, parked, near, sign]: p 1/3, r 1/5 -> 0.25; vs REF 3: 0. So 1 match:
    # precision 1/2, recall 1/3, F1 = 2 * (1/6) / (5/6) = 0.4
    assert REWARDS["reasoning"](completion, _ex(), RewardContext()) == pytest.approx(0.4)


def test_reasoning_steps_from_think_lines_and_sentences():
    completion = ("<think>1. The sign is red.\n- A dog is sleeping. The car is parked near the sign.</think>"
                  "<answer>red</answer>")
    steps = predicted_steps(completion)
    assert steps == ["The sign is red.", "A dog is sleeping.", "The car is parked near the sign."]
    # 2 of 3 predicted match 2 of 3 references: precision 2/3, recall 2/3, F1 2/3
    assert REWARDS["reasoning"](completion, _ex(), RewardContext()) == pytest.approx(2 / 3)
    # a prefilled "<think>" is part of the response
    prefilled = RewardContext(prompt_prefill="<think>")
    assert REWARDS["reasoning"](completion[len("<think>"):], _ex(), prefilled) == pytest.approx(2 / 3)


def test_matching_is_one_to_one():
    # two copies of one correct step match only one reference: precision 1/2, recall 1/1, F1 2/3 (not 1.0)
    assert match_f1(["the sign is red", "the sign is red"], ["The sign is red"]) == pytest.approx(2 / 3)


def test_no_steps_and_missing_references():
    assert REWARDS["reasoning"]("<answer>red</answer>", _ex(), RewardContext()) == 0.0
    with pytest.raises(ValueError, match="reference_steps"):
        REWARDS["reasoning"]("<think>x</think>", _ex(steps=[]), RewardContext())


class FakeEmbedder:
    """Colour words share one direction, everything else another; vectors deliberately not unit length."""

    def __init__(self):
        self.seen = []

    def embed(self, texts):
        self.seen.append(list(texts))
        return np.array([[2.0, 0.0] if ("red" in t or "crimson" in t) else [0.0, 3.0] for t in texts])


def test_embedding_hook_switches_to_cosine():
    completion = json.dumps({"reasoning_steps": ["the hue is crimson"], "answer": "red"})
    ex = _ex(steps=["The sign is red"])
    # lexically [hue, is, crimson] vs [sign, is, red]: F1 1/3 < 0.5, no match
    assert REWARDS["reasoning"](completion, ex, RewardContext()) == 0.0
    fake = FakeEmbedder()
    # cosine of [2, 0] and [2, 0] after normalising = 1.0: one match of one, F1 1.0
    assert REWARDS["reasoning"](completion, ex, RewardContext(scorer=fake)) == 1.0
    assert fake.seen == [["the hue is crimson", "The sign is red"]]  # predicted steps first, then references
    other = json.dumps({"reasoning_steps": ["a dog sleeps"], "answer": "red"})
    assert REWARDS["reasoning"](other, ex, RewardContext(scorer=fake)) == 0.0  # orthogonal: cosine 0


GEOMETRY_Q = "In triangle ABC, AB = 5 and angle C is a right angle. Find BC."


@pytest.mark.parametrize("completion, question, expected", [
    ("<think>Since AB = 5 and AC = 3, we get 4.</think><answer>4</answer>", GEOMETRY_Q, 1.0),  # side labels
    ("<think>angle ABC is 30 so x = 60</think><answer>60</answer>", "Find x.", 1.0),
    ("<think>∠ABC = 30 so x = 60</think><answer>60</answer>", "Find x.", 1.0),
    ("<think>m\\angle B = 30</think><answer>60</answer>", "Find x.", 1.0),
    ("<think>The circle has radius 2.</think><answer>4</answer>", "Find x.", 1.0),  # shape word
    ("<scan>two lines meet at point P</scan><think>so PQ is 3</think><answer>3</answer>",
     "Point P and point Q lie on the line. Find x.", 1.0),  # labels from "point P", "point Q"
    ("<think>5 + 3 = 8, so the answer is 8.</think><answer>8</answer>", GEOMETRY_Q, 0.0),  # no visual element
    ("<think>Since XY = 5 we get 4.</think><answer>4</answer>", GEOMETRY_Q, 0.0),  # XY is not in the figure
    ("<think>5 + 3 = 8</think><answer>triangle ABC</answer>", GEOMETRY_Q, 0.0),  # the answer never counts
    ("In triangle ABC the answer is 4. <answer>4</answer>", GEOMETRY_Q, 0.0),  # no <think>/<scan>
])
def test_visual_grounding(completion, question, expected):
    assert REWARDS["visual_grounding"](completion, _ex(question=question), RewardContext()) == expected


def test_the_word_overlap_match_is_said_where_the_metric_is_read():
    """Seed 003's Match-F1 scores templated steps differing in one word as a full match: eval.py and the trainer say
    so beside the number unless a sentence encoder is set (and say nothing when reasoning is not reported)."""
    from pathlib import Path

    from engine.config.parsing import build_config
    from engine.config.settings import Config
    from engine.report.evaluate import metric_caveats
    from rewards.reasoning import match_f1

    root = Path(__file__).resolve().parent.parent
    assert match_f1(["The square in the image is blue."], ["The square in the image is purple."]) == 1.0
    seed003 = build_config(Config, toml_path=root / "configs" / "seed003.toml", overrides=[])
    [note] = metric_caveats(seed003)
    assert "word overlap" in note and "--reward.embedder_path" in note
    encoded = build_config(Config, toml_path=root / "configs" / "seed003.toml",
                           overrides=["--reward.embedder_path", "/models/encoder"])
    assert metric_caveats(encoded) == []
    assert metric_caveats(build_config(Config, toml_path=root / "configs" / "demo.toml", overrides=[])) == []
