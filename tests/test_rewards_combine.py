"""score_batch (rewards/combine.py): weighted totals, contained failures, debug JSONL; and the rewards.explain CLI."""

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.example import Example
from rewards import REWARDS, RewardContext, score_batch
from rewards.explain import main

EXAMPLES = [Example(question="q", answers=["2"], images=[], origin=f"t.jsonl:{i}") for i in range(3)]
CTXS = [RewardContext() for _ in range(3)]
COMPLETIONS = ["<think>x</think><answer>2</answer>", "<answer>2</answer>", "<think>x</think><answer>3</answer>"]


def test_weighted_total_by_hand():
    out = score_batch(COMPLETIONS, EXAMPLES, CTXS, {"format": 0.5, "accuracy": 1.0, "iou": 0.0})
    assert out.parts["format"] == [1.0, 0.0, 1.0]
    assert out.parts["accuracy"] == [1.0, 1.0, 0.0]
    # 0.5 * format + 1.0 * accuracy: [0.5 + 1, 0 + 1, 0.5 + 0]; iou (weight 0) has no reference box: all errors
    assert out.total == [1.5, 1.0, 0.5]
    assert out.errors == {"format": 0, "accuracy": 0, "iou": 3}


def test_unknown_name_lists_the_registered_rewards():
    with pytest.raises(ValueError, match=r"unknown reward.*'nope'.*accuracy"):
        score_batch(COMPLETIONS, EXAMPLES, CTXS, {"nope": 1.0})
    with pytest.raises(ValueError, match="one example and one context"):
        score_batch(COMPLETIONS, EXAMPLES[:2], CTXS, {"format": 1.0})


def test_raising_and_non_finite_rewards_score_zero_and_are_counted(registered, caplog):
    def flaky(completion, example, ctx):
        if example.origin.endswith(":1"):
            return 0.25
        raise RuntimeError("boom")

    registered(REWARDS, "flaky", flaky)
    registered(REWARDS, "nan", lambda c, e, x: float("nan"))
    with caplog.at_level(logging.WARNING, logger="rewards.combine"):
        out = score_batch(COMPLETIONS, EXAMPLES, CTXS, {"flaky": 2.0, "nan": 1.0, "accuracy": 1.0})
    assert out.parts["flaky"] == [0.0, 0.25, 0.0]
    assert out.parts["nan"] == [0.0, 0.0, 0.0]
    assert out.errors == {"flaky": 2, "nan": 3, "accuracy": 0}
    assert out.total == [1.0, 1.5, 0.0]  # 2 * flaky + nan(0) + accuracy
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # once per failing reward name, not once per sample
    assert "'flaky' failed on 2/3" in warnings[0] and "boom" in warnings[0] and "t.jsonl:0" in warnings[0]


def test_batch_rewards_are_called_once_and_none_is_an_error(registered):
    calls = []

    def batched(c, e, x):
        raise AssertionError("score_batch must use .batch")

    batched.batch = lambda cs, es, xs: calls.append(len(cs)) or [1.0, None, 0.5]
    registered(REWARDS, "batched", batched)
    out = score_batch(COMPLETIONS, EXAMPLES, CTXS, {"batched": 1.0})
    assert calls == [3]
    assert out.parts["batched"] == [1.0, 0.0, 0.5] and out.errors["batched"] == 1


def test_debug_jsonl_appends_one_line_per_sample(tmp_path):
    path = tmp_path / "debug" / "rewards.jsonl"
    score_batch(COMPLETIONS, EXAMPLES, CTXS, {"accuracy": 1.0}, debug_path=path)
    score_batch(COMPLETIONS[:1], EXAMPLES[:1], CTXS[:1], {"accuracy": 1.0}, debug_path=path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 4  # 3 then 1, appended
    assert rows[2] == {"origin": "t.jsonl:2", "completion": COMPLETIONS[2], "answer": "2",
                       "parts": {"accuracy": 0.0}, "total": 0.0}


def test_cli_prints_value_and_parsed_parts(capsys):
    assert main(["accuracy", "--completion", "<think>x</think><answer>Two</answer>", "--answer", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["value"] == 1.0 and out["extracted_answer"] == "Two" and out["normalized_answer"] == "2"
    assert out["normalized_references"] == ["2"]
    assert main(["iou", "--completion", "<answer>[250, 500, 750, 1000]</answer>", "--answer", "[50, 50, 150, 100]",
                 "--box-frame", "norm1000", "--image-size", "200x100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["value"] == pytest.approx(1.0) and out["box_in_frame"] == [250, 500, 750, 1000]


def test_cli_unknown_name_exits_2_listing_names():
    proc = subprocess.run([sys.executable, "-m", "rewards.explain", "nope", "--completion", "x"],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])  # the repository root
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "accuracy" in proc.stderr and "format_json" in proc.stderr


@pytest.mark.parametrize("args, said", [
    (["accuracy", "--answer", ""], "--answer '' is empty: give the reference answer"),
    (["accuracy"], "no reference answers; 'accuracy' needs example.answers"),
    (["accuracy", "--answer", "x", "--example", '{"colour": 1}'], "unknown Example fields ['colour']"),
    (["accuracy", "--answer", "x", "--example", "{"], "--example is not JSON"),
    (["iou", "--answer", "x", "--image-size", "12"], "--image-size '12': expected WIDTHxHEIGHT"),
])
def test_cli_bad_input_is_one_line_not_a_traceback(args, said, capsys):
    assert main([args[0], "--completion", "<answer>x</answer>", *args[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rewards.explain {args[0]}: ") and said in err and err.count("\n") == 1


# the model-free rewards of this package: built-ins that need no scorer and own no settings (the judge is HTTP)
TEXT_REWARDS = [e.name for e in REWARDS.entries() if e.origin.startswith("rewards.") and e.settings is None
                and not getattr(e.fn, "scorer_needs", None) and not getattr(e.fn, "computed_by_step", False)]
ADVERSARIAL = {
    "no tags": "a" * 100_000,
    "many opening tags": "<think>" * 20_000 + "<answer>" * 20_000,
    "long whitespace in a fence": "```" + " " * 100_000,
    "long whitespace before the end": " " * 100_000 + "x",
    "deep JSON": "```json\n" + "[" * 10_000 + "\n```",
    "many box starts": "[1" * 50_000,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_every_reward_is_fast_and_contained_on_adversarial_text(name):
    # A backtracking `.*?` pattern took ~20 s on "many opening tags"; linear patterns take milliseconds.
    ex = Example(question="In triangle ABC find AB", answers=["2"], images=[], boxes=[[0, 0, 1, 1]],
                 reference_steps=["AB is a side"], metadata={"target_box": [0, 0, 1, 1]})
    start = time.monotonic()
    out = score_batch([ADVERSARIAL[name]], [ex], [RewardContext()], {n: 1.0 for n in TEXT_REWARDS})
    assert time.monotonic() - start < 2.0
    assert out.errors == {n: 0 for n in TEXT_REWARDS} and out.total == [0.0]
