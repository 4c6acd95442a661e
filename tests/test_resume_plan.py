"""engine/setup/resume.py without a model: which differences a resume refuses, which it lets through, and the data
fingerprint that catches another dataset of the same size."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from data.example import Example
from engine.config.parsing import build_config
from engine.config.settings import Config
from engine.setup.resume import ResumePlan, fingerprint

BASE = ["--data.train", "d.jsonl", "--train.stage", "sft", "--sft.steps", "6", "--train.out_dir", "r"]


def plan(*flags: str, state: dict | None = None) -> ResumePlan:
    return ResumePlan(run_dir=Path("r"), run_cfg=build_config(Config, overrides=[*BASE, *flags]),
                      checkpoint=Path("r/checkpoints/step_000006"), state=state or {})


def now(*flags: str) -> Config:
    return build_config(Config, overrides=[*BASE, "--train.resume", "true", *flags])


def test_changes_are_refused_budgets_raised_and_run_mechanics_free():
    p = plan()
    assert p.changes(now()) == ([], [])
    free = ["--train.save_every", "3", "--train.threads", "2", "--model.gradient_checkpointing", "true",
            "--optim.micro_batch_tokens", "4096", "--data.eval", "e.jsonl", "--eval.metrics", "accuracy,format",
            "--data.train", "moved/d.jsonl"]  # a moved dataset: judged by its content, not its path
    assert p.changes(now(*free)) == ([], [])
    assert p.changes(now("--sft.steps", "9", "--train.stage", "sft,rl")) == ([], [])  # raised, grown at the end
    refused, accepted = p.changes(now("--sft.steps", "4", "--sft.lr", "3e-4", "--train.seed", "1",
                                      "--train.resume_changes", "train.seed"))
    assert refused == ["sft.lr: 0.0001 -> 0.0003", "sft.steps: 6 -> 4 (a budget may be raised, not lowered)"]
    assert accepted == ["train.seed: 0 -> 1"]


def test_check_config_lists_refusals_in_one_line_and_refuses_idle_names():
    with pytest.raises(ValueError) as err:
        plan().check_config(now("--sft.lr", "3e-4", "--optim.beta1", "0.8"))
    text = str(err.value)
    assert "optim.beta1: 0.9 -> 0.8; sft.lr: 0.0001 -> 0.0003" in text and "\n" not in text
    assert text.endswith("--train.resume_changes optim.beta1,sft.lr")
    with pytest.raises(ValueError, match="names rl.lr, which the flags do not change"):
        plan().check_config(now("--train.resume_changes", "rl.lr"))
    assert plan().check_config(now("--train.resume_changes", "data.train")) == []  # content may change: allowed


def test_steps_that_follow_from_epochs_are_not_compared():
    p = plan("--sft.epochs", "2", "--sft.steps", "12")  # the run wrote the steps its epochs and data size gave
    assert p.changes(now("--sft.epochs", "2")) == ([], [])  # recomputed from the same epochs (the data: fingerprint)
    assert p.changes(now("--sft.epochs", "3")) == ([], [])  # more epochs: a raised budget
    assert p.changes(now("--sft.steps", "20")) == ([], [])  # from epochs to steps: 12 steps ran, 20 is more
    assert p.changes(now("--sft.steps", "8"))[0] == ["sft.steps: 12 -> 8 (a budget may be raised, not lowered)"]
    assert p.changes(now("--sft.epochs", "1"))[0] == ["sft.epochs: 2.0 -> 1.0 (a budget may be raised, not lowered)"]


def example(image: str, question: str = "What colour?") -> Example:
    return Example(question=question, answers=["red"], images=[image], origin="x")


def test_fingerprint_follows_content_not_paths(tmp_path):
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
    shutil.copy(tmp_path / "a.png", tmp_path / "a-copy.png")
    a = fingerprint([example(str(tmp_path / "a.png"))])
    assert a == fingerprint([example(str(tmp_path / "a-copy.png"))])  # the same bytes elsewhere
    assert a != fingerprint([example(str(tmp_path / "b.png"))])  # other pixels, same size and name shape
    assert a != fingerprint([example(str(tmp_path / "a.png"), "Which colour?")])
    assert len({fingerprint([example(str(tmp_path / n)) for n in order]) for order in
                (("a.png", "b.png"), ("b.png", "a.png"))}) == 2  # order is part of the data


def test_check_data_refuses_other_content_unless_named():
    p = plan(state={"data_fingerprint": {"data.train": "aaaa"}})
    assert p.check_data({"data.train": "aaaa"}, []) == []
    with pytest.raises(ValueError, match="the content of data.train differs .*fingerprint aaaa then, bbbb now"):
        p.check_data({"data.train": "bbbb"}, [])
    assert p.check_data({"data.train": "bbbb"}, ["data.train"]) == ["the content of data.train (fingerprint aaaa -> "
                                                                     "bbbb)"]


def test_a_components_own_section_changes_with_its_selection():
    """[algo.ppo_clip] exists while ppo_clip is the loss: switching to gspo is one difference, algo.loss."""
    assert plan().changes(now("--algo.loss", "gspo")) == (["algo.loss: 'ppo_clip' -> 'gspo'"], [])
    refused, _ = plan().changes(now("--algo.ppo_clip.clip_high", "0.3"))  # the same loss, another clip: listed
    assert refused == ["algo.ppo_clip.clip_high: 0.28 -> 0.3"]
