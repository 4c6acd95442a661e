"""Tests for engine/runtime/log.py: PhaseTimer accumulation, metrics.jsonl / samples.jsonl contents, TensorBoard
events read back with tensorboard's EventAccumulator, and the progress bar's output."""

from __future__ import annotations

import json
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.runtime.log import MetricsLogger, PhaseTimer, progress


def test_phase_timer_accumulates_and_resets():
    timer = PhaseTimer()
    with timer.phase("rollout"):
        time.sleep(0.05)
    with timer.phase("loss"):
        time.sleep(0.01)
    with timer.phase("rollout"):
        time.sleep(0.05)
    out = timer.pop()
    assert list(out) == ["time/rollout", "time/loss"]
    assert 0.1 <= out["time/rollout"] < 0.5  # two sleeps of 0.05 s, generous upper bound for a busy machine
    assert 0.01 <= out["time/loss"] < out["time/rollout"]
    assert timer.pop() == {}


def test_phase_timer_counts_a_phase_that_raises():
    timer = PhaseTimer()
    with pytest.raises(RuntimeError):
        with timer.phase("reward"):
            time.sleep(0.02)
            raise RuntimeError("boom")
    assert timer.pop()["time/reward"] >= 0.02


def test_metrics_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        # 0.5 and 0.25 are exact in float32, so the tensor values round-trip to these JSON numbers exactly.
        floats = logger.log(1, {"loss": torch.tensor(0.5), "reward/mean": 1, "time/rollout": 2.0})
        logger.log(2, {"loss": torch.tensor([0.25], dtype=torch.bfloat16), "reward/mean": torch.tensor(3)})
    assert floats == {"loss": 0.5, "reward/mean": 1.0, "time/rollout": 2.0}
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines == ['{"step": 1, "loss": 0.5, "reward/mean": 1.0, "time/rollout": 2.0}',
                     '{"step": 2, "loss": 0.25, "reward/mean": 3.0}']
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"loss", "reward/mean", "time/rollout"} <= set(acc.Tags()["scalars"])
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 0.5), (2, 0.25)]


def test_log_appends_across_loggers_and_text(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"a": 1.0})
        logger.log_text(1, "samples", "<answer>4</answer> ✓")
    with MetricsLogger(tmp_path, tensorboard=False) as logger:  # a resumed run appends, never truncates
        logger.log(2, {"a": 2.0})
        logger.log_text(2, "samples", "second")
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n'
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples == [{"step": 1, "tag": "samples", "text": "<answer>4</answer> ✓"},
                       {"step": 2, "tag": "samples", "text": "second"}]
    assert not (tmp_path / "tb").exists()


def test_log_text_reaches_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log_text(3, "rollout", "hello")
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "rollout/text_summary" in acc.Tags()["tensors"]
    event = acc.Tensors("rollout/text_summary")[0]
    assert event.step == 3 and event.tensor_proto.string_val == [b"hello"]


def test_non_scalar_tensor_is_refused(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(ValueError, match=r"metric 'x' has shape \(2,\)"):
            logger.log(1, {"x": torch.ones(2)})


def test_progress_bar_writes_to_stderr(capsys):
    bar = progress(total=5, initial=2, desc="rl")
    bar.set_postfix(reward="0.500")
    bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "rl" in err and "3/5" in err and "reward=0.500" in err
    assert bar.mininterval == 1.0
