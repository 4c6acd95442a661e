"""Model-based rewards (rewards/image_rewards.py, rewards/blind.py) with scripted fake scorers (exact values
worked out by hand), their failure accounting through score_batch, and one run of all of them on the REAL tiny
model scorer.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_rewards_model_rewards.py`.
"""

from __future__ import annotations

import math

import pytest
from PIL import Image

from data.example import Example
from rewards import blind, image_rewards  # noqa: F401  (register the rewards)
from rewards.combine import score_batch
from rewards.image_rewards import JUDGE_TEMPLATE
from rewards.registry import REWARDS, RewardContext
from rewards.scorer import ClipEmbedder, ModelScorer, build_tiny_clip
from tests.engine_helpers import load_tiny, noise_image

IMAGE_REWARDS = ["image_self", "image_teacher", "image_attention", "image_embedding"]


def example(question="What is the measure of the angle marked ? in degrees?", answers=("40",), choices=()):
    return Example(question=question, answers=list(answers), images=[], choices=list(choices), origin="test")


def solid(colour) -> Image.Image:
    return Image.new("RGB", (28, 28), colour)


class FakeScorer:
    """Scripted answers; records every call so tests can check what a reward asked and how often."""

    def __init__(self, replies=(), probs=(), shares=(), texts=None, images=None, teacher=None):
        self.replies, self.probs, self.shares = list(replies), list(probs), list(shares)
        self.texts, self.images, self.teacher = texts or {}, images or {}, teacher
        self.calls = []

    def answer(self, images_per_item, questions, max_new_tokens=None):
        self.calls.append(("answer", images_per_item, questions))
        return [self.replies.pop(0) for _ in questions]

    def prob_yes(self, images_per_item, questions):
        self.calls.append(("prob_yes", images_per_item, questions))
        return [self.probs.pop(0) for _ in questions]

    def attention_share(self, images_per_item, questions, answers, first_processed):
        self.calls.append(("attention_share", images_per_item, questions, answers, first_processed))
        return [self.shares.pop(0) for _ in questions]

    def embed_text(self, texts):
        self.calls.append(("embed_text", texts))
        return [self.texts[t] for t in texts]

    def embed_image(self, images):
        self.calls.append(("embed_image", images))
        return [self.images[id(im)] for im in images]


# -- blind ---------------------------------------------------------------------------------------------------------
def test_blind_scores_plus_one_and_minus_half_exactly():
    scan = "<scan>a triangle with angles 60 and 80</scan><think>180 - 140</think><answer>40</answer>"
    completions = [scan, scan, "<think>no scan here</think><answer>40</answer>", "<scan>...</scan><answer>40</answer>",
                   scan]
    examples = [example(), example(), example(), example(), example(answers=("B",), choices=("10", "40"))]
    # Scripted blind replies, by hand: "40.0" == "40" numerically -> +1; "50" != "40" -> -0.5; the last one
    # answers option B of a multiple-choice question -> +1. The two scan-less samples make no call.
    fake = FakeScorer(replies=["<think>x</think><answer>40.0</answer>", "<answer>50</answer>", "<answer>B</answer>"])
    contexts = [RewardContext(scorer=fake) for _ in completions]
    batch = score_batch(completions, examples, contexts, {"blind": 1.0, "format_scan": 0.1})
    assert batch.parts["blind"] == [1.0, -0.5, -0.5, -0.5, 1.0]
    assert batch.errors["blind"] == 0
    assert batch.total == pytest.approx([1.1, -0.4, -0.5, -0.5, 1.1])  # format_scan: 1, 1, 0, 0 (no <think>), 1
    assert len(fake.calls) == 1  # one batched call for the whole batch
    _, images, questions = fake.calls[0]
    assert images == [[], [], []]  # blindfolded: no image at all
    q = "What is the measure of the angle marked ? in degrees?"
    assert questions[0] == f"{q}\nImage description: a triangle with angles 60 and 80\nAnswer in <answer></answer>."
    assert questions[2].endswith("Answer in <answer></answer>.\nChoices: A. 10, B. 40")


def test_blind_no_answer_tag_is_wrong_and_prefill_counts():
    fake = FakeScorer(replies=["40"])  # a bare reply is no <answer>: wrong
    ctx = RewardContext(scorer=fake, prompt_prefill="<scan>")
    assert REWARDS["blind"]("two angles 60 and 80</scan><think>t</think><answer>40</answer>", example(), ctx) == -0.5
    assert fake.calls[0][2][0].split("\n")[1] == "Image description: two angles 60 and 80"


def test_blind_without_scorer_or_reference_is_counted_as_error():
    completions = ["<scan>s</scan><answer>4</answer>"] * 3
    batch = score_batch(completions, [example()] * 3, [RewardContext() for _ in range(3)], {"blind": 1.0})
    assert batch.parts["blind"] == [0.0, 0.0, 0.0] and batch.errors["blind"] == 3
    fake = FakeScorer(replies=["<answer>4</answer>", "<answer>4</answer>"])
    batch = score_batch(completions[:2], [example(answers=()), example(answers=("4",))],
                        [RewardContext(scorer=fake)] * 2, {"blind": 1.0})
    assert batch.parts["blind"] == [0.0, 1.0] and batch.errors["blind"] == 1


# -- image rewards with fakes --------------------------------------------------------------------------------------
def contexts_with_tools(scorer):
    """Sample 0: original + one crop; sample 1: no tool image; sample 2: original + two crops."""
    orig, crop1, crop2 = solid("red"), solid("green"), solid("blue")
    return [RewardContext(images=[orig, crop1], image_sizes=[orig.size], scorer=scorer),
            RewardContext(images=[orig], image_sizes=[orig.size], scorer=scorer),
            RewardContext(images=[orig, crop1, crop2], image_sizes=[orig.size], scorer=scorer)], (orig, crop1, crop2)


def test_image_self_asks_once_with_processed_images_only():
    fake = FakeScorer(probs=[0.8, 0.25])
    contexts, (orig, crop1, crop2) = contexts_with_tools(fake)
    examples = [example("Q0?"), example("Q1?"), example("Q2?")]
    batch = score_batch(["a", "b", "c"], examples, contexts, {"image_self": 1.0})
    assert batch.parts["image_self"] == [0.8, 0.0, 0.25] and batch.errors["image_self"] == 0
    assert fake.calls == [("prob_yes", [[crop1], [crop1, crop2]],
                           [JUDGE_TEMPLATE.format(question="Q0?"), JUDGE_TEMPLATE.format(question="Q2?")])]


def test_image_self_without_tool_images_is_zero_without_a_call():
    fake = FakeScorer()
    ctx = RewardContext(images=[solid("red")], image_sizes=[(28, 28)], scorer=fake)
    assert REWARDS["image_self"]("<answer>red</answer>", example(), ctx) == 0.0
    assert fake.calls == []


def test_processed_images_follow_all_original_images():
    # Two prompt images (image_sizes has 2 entries): only images[2:] are tool outputs. Without image_sizes the
    # context is taken to have one original.
    a, b, crop = solid("red"), solid("green"), solid("blue")
    fake = FakeScorer(probs=[0.5, 0.75])
    contexts = [RewardContext(images=[a, b, crop], image_sizes=[a.size, b.size], scorer=fake),
                RewardContext(images=[a, b], image_sizes=[a.size, b.size], scorer=fake),
                RewardContext(images=[a, b], scorer=fake)]
    batch = score_batch(["x"] * 3, [example()] * 3, contexts, {"image_self": 1.0})
    assert batch.parts["image_self"] == [0.5, 0.0, 0.75]
    assert fake.calls[0][1] == [[crop], [b]]


def test_image_teacher_uses_the_teacher():
    teacher = FakeScorer(probs=[0.9, 0.1])
    policy = FakeScorer(teacher=teacher)
    contexts, _ = contexts_with_tools(policy)
    batch = score_batch(["a", "b", "c"], [example()] * 3, contexts, {"image_teacher": 1.0})
    assert batch.parts["image_teacher"] == [0.9, 0.0, 0.1]
    assert policy.calls == [] and len(teacher.calls) == 1
    no_teacher, _ = contexts_with_tools(FakeScorer())
    batch = score_batch(["a", "b", "c"], [example()] * 3, no_teacher, {"image_teacher": 1.0})
    assert batch.parts["image_teacher"] == [0.0] * 3 and batch.errors["image_teacher"] == 3


def test_image_attention_sends_all_images_and_the_answer():
    fake = FakeScorer(shares=[0.4, 0.7])
    contexts, (orig, crop1, crop2) = contexts_with_tools(fake)
    completions = ["<think>t</think><answer>blue</answer>", "x", "no answer tag"]
    batch = score_batch(completions, [example("Q0?"), example("Q1?"), example("Q2?")], contexts,
                        {"image_attention": 1.0})
    assert batch.parts["image_attention"] == [0.4, 0.0, 0.7]
    assert fake.calls == [("attention_share", [[orig, crop1], [orig, crop1, crop2]], ["Q0?", "Q2?"],
                           ["blue", "no answer tag"], [1, 1])]


def test_image_embedding_hand_computed():
    orig_a, crop_a, orig_b, crop_b = solid("red"), solid("green"), solid("blue"), solid("white")
    # Question vector (1, 0). Sample a: original (0, 1) has cosine 0, crop (3, 4) has cosine 3/5 -> 0.6 - 0 = 0.6.
    # Sample b: original (2, 0) has cosine 1, crop (0.6, 0.8) has cosine 0.6 -> 0.6 - 1 < 0, clipped to 0.
    fake = FakeScorer(texts={"Qa": [1.0, 0.0], "Qb": [1.0, 0.0]},
                      images={id(orig_a): [0.0, 1.0], id(crop_a): [3.0, 4.0], id(orig_b): [2.0, 0.0],
                              id(crop_b): [0.6, 0.8]})
    contexts = [RewardContext(images=[orig_a, crop_a], image_sizes=[(28, 28)], scorer=fake),
                RewardContext(images=[orig_b, crop_b], image_sizes=[(28, 28)], scorer=fake)]
    batch = score_batch(["a", "b"], [example("Qa"), example("Qb")], contexts, {"image_embedding": 1.0})
    assert batch.parts["image_embedding"] == pytest.approx([0.6, 0.0], abs=1e-12)
    assert [c[0] for c in fake.calls] == ["embed_text", "embed_image"]  # one call each for the batch


@pytest.mark.parametrize("name", IMAGE_REWARDS)
def test_scorerless_context_is_an_error_for_every_sample(name):
    contexts, _ = contexts_with_tools(None)
    batch = score_batch(["a", "b", "c"], [example()] * 3, contexts, {name: 1.0, "format": 0.0})
    assert batch.parts[name] == [0.0, 0.0, 0.0] and batch.errors[name] == 3
    assert batch.errors["format"] == 0


def test_scorer_lacking_a_method_is_an_error():
    class OnlyAnswers:
        def answer(self, images_per_item, questions, max_new_tokens=None):
            return ["<answer>1</answer>"] * len(questions)

    contexts, _ = contexts_with_tools(OnlyAnswers())
    batch = score_batch(["a", "b", "c"], [example()] * 3, contexts, {"image_self": 1.0, "image_embedding": 1.0})
    assert batch.errors == {"image_self": 3, "image_embedding": 3}
    with pytest.raises(ValueError, match="prob_yes"):
        REWARDS["image_self"]("a", example(), contexts[0])


# -- the real tiny model -------------------------------------------------------------------------------------------
def test_all_model_rewards_run_on_the_tiny_model(tmp_path):
    vlm = load_tiny()
    clip = ClipEmbedder.load(build_tiny_clip(tmp_path / "clip"))
    scorer = ModelScorer(vlm, teacher=ModelScorer(vlm), clip=clip, max_new_tokens=8)
    orig = noise_image((112, 112), 7)
    crop = orig.crop((0, 0, 56, 56))
    contexts = [RewardContext(images=[orig, crop], image_sizes=[orig.size], scorer=scorer),
                RewardContext(images=[orig], image_sizes=[orig.size], scorer=scorer),
                RewardContext(images=[orig, crop, orig.crop((56, 56, 112, 112))], image_sizes=[orig.size],
                              scorer=scorer)]
    completions = ["<scan>a noisy square</scan><think>look</think><answer>red</answer>",
                   "<think>no tools</think><answer>blue</answer>", "<answer>green</answer>"]
    examples = [example("What color is the square?", ("red",))] * 3
    weights = {name: 1.0 for name in IMAGE_REWARDS + ["blind"]}
    batch = score_batch(completions, examples, contexts, weights)
    assert all(count == 0 for count in batch.errors.values()), batch.errors
    assert all(math.isfinite(v) for values in batch.parts.values() for v in values)
    for name in IMAGE_REWARDS:
        assert batch.parts[name][1] == 0.0  # no tool image
        assert all(0.0 <= v <= 1.0 for v in batch.parts[name])
    assert 0.0 < batch.parts["image_self"][0] < 1.0 and 0.0 < batch.parts["image_attention"][0] < 1.0
    # The reward is the scorer's P(yes) for that question and image, asked directly.
    direct = scorer.prob_yes([[crop]], [JUDGE_TEMPLATE.format(question="What color is the square?")])[0]
    assert batch.parts["image_self"][0] == pytest.approx(direct, abs=1e-6)
    assert batch.parts["image_teacher"] == pytest.approx(batch.parts["image_self"], abs=1e-6)  # same weights
    assert batch.parts["blind"][1:] == [-0.5, -0.5]  # no <scan>
    assert batch.parts["blind"][0] in (1.0, -0.5)
