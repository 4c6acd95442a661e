"""The RL-is-a-no-op warning (engine/report/no_signal.py): a streak of steps with no informative group, or a zero
gradient, is said once with what to do; signal resets it; and a real run whose rewards are all equal warns."""

import json

import pytest

from data.synth import write_dataset
from engine.config import Config, build_config
from engine.report.no_signal import NoSignalMonitor


def _step(informative, grad=0.5, reward=0.0):
    return {"groups/informative_fraction": informative, "train/grad_norm": grad, "reward/total": reward}


def test_a_streak_warns_once_and_signal_resets_it():
    m = NoSignalMonitor(patience=3)
    assert [m.update(_step(0.0)) for _ in range(2)] == [None, None]
    warning = m.update(_step(0.0, reward=0.1))
    assert "RL has learned nothing for 3 steps" in warning and "0.000-0.100" in warning and "--sft.steps" in warning
    assert m.update(_step(0.0)) is None  # once per streak
    assert m.update(_step(0.5)) is None and m.streak == 0  # signal resets
    assert [m.update(_step(0.0)) for _ in range(3)][-1] is not None  # a later streak warns again


def test_a_zero_gradient_is_no_signal_too():
    m = NoSignalMonitor(patience=1)
    assert "the gradient norm was 0" in m.update(_step(0.5, grad=0.0))
    with pytest.raises(ValueError, match="patience"):
        NoSignalMonitor(patience=0)


@pytest.mark.slow
def test_a_run_whose_rewards_are_all_equal_warns(tmp_path):
    """An untrained tiny model never writes the answer format: with accuracy alone every reward is 0."""
    from engine import trainer

    write_dataset("colors", 8, str(tmp_path / "data"), seed=3)
    cfg = build_config(Config, overrides=[
        "--data.train", str(tmp_path / "data" / "data.jsonl"), "--train.out_dir", str(tmp_path / "run"),
        "--train.threads", "1", "--train.tensorboard", "false", "--train.stage", "rl", "--rl.steps", "5",
        "--rollout.prompts_per_step", "2", "--rollout.group_size", "2", "--rollout.max_new_tokens", "4",
        "--reward.weights", '{"accuracy": 1.0}', "--train.sample_every", "0"])
    trainer.run(cfg)
    texts = [json.loads(line) for line in open(tmp_path / "run" / "samples.jsonl")]
    warned = [t for t in texts if t["tag"] == "warnings/no_signal"]
    assert len(warned) == 1 and "RL has learned nothing for 5 steps" in warned[0]["text"]
