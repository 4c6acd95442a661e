"""Prompts and SFT targets measured against the token limits before step 1 (engine/setup/limits.py): the counts equal
what the run builds, an SFT target over rollout.max_new_tokens or a prompt without room is refused with the count
and the value to raise the setting to, data.overlong = truncate cuts instead; templates say nothing of options a
row does not have; the seed-003 preset fits the seed's own answer.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_limits.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data import Example
from data.example import format_question
from engine.algo.sft import sft_trajectory
from engine.report.evaluate import prompts_for
from engine.setup.layers import layered_config
from engine.setup.limits import check_token_limits, measure
from engine.setup.run_setup import load_policy
from engine.setup.targets import target_text
from tests.data_fixtures import png_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vlm():
    return load_policy(layered_config(None, []), device="cpu")


def examples() -> list[Example]:
    """A box target ({box}, seed 002), a target with an inline crop (seed 001) and plain rows, images of two sizes."""
    small, wide = png_bytes((40, 30)), png_bytes((200, 100))
    return [Example("Where is the red square?", ["red square"], [small], boxes=[[4.0, 3.0, 20.0, 15.0]]),
            Example("Which pattern?", ["dots"], [wide], boxes=[[0.0, 0.0, 50.0, 50.0]],
                    target="<think>Look.<tool_call>[0, 0, 50, 50]</tool_call></think><answer>dots</answer>"),
            Example("What colour?", ["blue"], [wide], choices=["red", "blue"])]


@pytest.mark.parametrize("flags", [
    ["--data.sft_template", "<answer>{box}</answer>", "--data.prefill", "<think>"],
    ["--data.question_template", "{question} {options} Answer briefly.", "--data.image_short_side", "56",
     "--data.sft_template", "{answer}", "--rollout.protocol", "inline", "--rollout.tools", "crop"]])
def test_the_counts_are_what_the_run_builds(vlm, flags):
    cfg = layered_config(None, ["--data.max_pixels", str(200 * 100)] + flags)
    exs = [e for e in examples() if "{box}" not in cfg.data.sft_template or e.boxes]
    prompts = prompts_for(exs, vlm, cfg)
    for e, p in zip(exs, prompts):
        counted = measure(e, vlm, cfg, target=True)
        trained = sft_trajectory(p, target_text(e, cfg.data.sft_template, p, vlm), vlm)
        assert (counted.prompt, counted.target) == (len(p.ids), sum(trained.mask))


def test_over_the_limits_is_refused_with_the_value_to_raise(vlm, capsys):
    exs = examples()
    cfg = layered_config(None, ["--data.sft_template", "{answer} because it is so, as anyone can see here"])
    longest = max(x.target for x in check_token_limits(exs, vlm, cfg, what="training", targets=True))
    tight = layered_config(None, ["--data.sft_template", cfg.data.sft_template,
                                  "--rollout.max_new_tokens", str(longest - 1)])
    with pytest.raises(ValueError, match=rf"1 of 3 SFT targets are longer than rollout.max_new_tokens {longest - 1} "
                                         rf"\(longest: {longest} tokens, \): raise --rollout.max_new_tokens to "
                                         rf"{longest}. Or accept them cut: --data.overlong truncate"):
        check_token_limits(exs, vlm, tight, what="training", targets=True)
    prompt = max(x.prompt for x in check_token_limits(exs, vlm, cfg, what="held-out", targets=False))
    small = layered_config(None, ["--rollout.max_total_tokens", str(prompt + 23), "--rollout.max_new_tokens", "24"])
    with pytest.raises(ValueError, match=rf"held-out prompts leave less than rollout.max_new_tokens 24 under "
                                         rf"rollout.max_total_tokens {prompt + 23} \(longest: {prompt} tokens"):
        check_token_limits(exs, vlm, small, what="held-out", targets=False)
    cut = layered_config(None, ["--data.sft_template", cfg.data.sft_template, "--rollout.max_new_tokens",
                                str(longest - 1), "--data.overlong", "truncate"])
    check_token_limits(exs, vlm, cut, what="training", targets=True)
    assert "1 of 3 SFT targets are longer" in capsys.readouterr().out


def test_truncate_cuts_the_sft_target_like_a_length_stop(vlm):
    e = examples()[1]  # the crop target: cut before its crop is injected, so the crop never comes
    cfg = layered_config(None, [])
    [p] = prompts_for([e], vlm, cfg)
    whole = sft_trajectory(p, e.target, vlm)
    cut = sft_trajectory(p, e.target, vlm, max_sampled=3)
    assert whole.stop == "eos" and len(whole.images) == 2 and sum(whole.mask) > 3
    assert cut.stop == "length" and sum(cut.mask) == 3 and len(cut.images) == 1
    assert cut.ids[len(p.ids):] == whole.ids[len(p.ids):len(p.ids) + 3]


def test_options_are_said_only_for_rows_that_have_them():
    template = "{question} {options} Reply in JSON."
    assert format_question(Example("Q?", ["a"], [], choices=["x", "y"]), template) == \
        "Q? Options: A. x, B. y. Reply in JSON."
    assert format_question(Example("Q?", ["a"], []), template) == "Q? Reply in JSON."
    assert format_question(Example("Q?", ["a"], []), "{question}\n{options}") == "Q?\n"
    assert format_question(Example("Q?", ["a"], [], choices=["x"]), "{question} ({choices})") == "Q? (A. x)"


def test_the_seed003_preset_fits_the_seeds_own_answer(vlm):
    """The seed's README example: 4 reference steps of at most 14 words (its guideline), a one-word answer."""
    steps = ["Check for visible text related to brands on the mobile phone in the image.",
             "Identify the brand text 'NOKIA' in close proximity to the mobile phone.",
             "Verify there are no other text labels or logos visible on the mobile phone.",
             "Return the exact answer string."]
    example = Example("what is the brand of phone?", ["nokia"], [png_bytes((64, 48))], reference_steps=steps)
    cfg = layered_config(ROOT / "configs" / "seed003.toml", [])
    [lengths] = check_token_limits([example], vlm, cfg, what="training", targets=True)
    assert lengths.target <= cfg.rollout.max_new_tokens
    assert json.loads(target_text(example, cfg.data.sft_template))["reasoning_steps"] == steps
    assert "Options" not in format_question(example, cfg.data.question_template)  # an open question: no options
