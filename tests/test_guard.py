"""engine/runtime/guard.py without processes: which stages a resumed run still has, the NaN streak, the run folder check.
The real signals, kills and full disks are in tests/test_faults.py."""

import pytest

from engine.runtime.guard import NonFinite, RunStopped, check_out_dir, stages_left

FLAGS = {"sft": "sft.steps", "rl": "rl.steps"}


def _summary(**steps):
    return {"done_stages": list(steps), "steps": dict(steps)}


def test_a_raised_step_count_continues_the_stage_the_checkpoint_ended():
    summary = _summary(sft=2, rl=2)
    left, said = stages_left(["sft", "rl"], summary, {"stage": "rl", "stage_step": 2}, {"sft": 2, "rl": 4}, FLAGS)
    assert left == ["rl"] and summary["done_stages"] == ["sft"]
    assert said == ["resume: rl finished at 2 steps; it continues to rl.steps = 4"]


def test_nothing_left_is_said_and_a_stage_built_upon_is_not_reopened():
    summary = _summary(sft=2, rl=2)
    left, said = stages_left(["sft", "rl"], summary, {"stage": "rl", "stage_step": 2}, {"sft": 5, "rl": 2}, FLAGS)
    assert left == [] and summary["done_stages"] == ["sft", "rl"]
    assert said == ["resume: sft finished at 2 steps and a later stage has started from it: sft.steps = 5 is not "
                    "applied", "resume: nothing left to do: the run finished sft 2 steps, rl 2 steps; raise "
                    "--rl.steps to train further"]
    assert stages_left(["sft"], {"done_stages": [], "steps": {}}, {}, {"sft": 3}, FLAGS) == (["sft"], [])


def test_nonfinite_streak_stops_and_a_finite_step_resets_it():
    guard = NonFinite(limit=2)
    warning = guard.update(True, "rl step 1")
    assert warning == "rl step 1: NaN/inf loss or gradient: update skipped (1 in a row, 1 in all)"
    assert guard.update(False, "rl step 2") is None and guard.in_row == 0
    guard.update(True, "rl step 3")
    with pytest.raises(RunStopped, match="rl step 4: 2 steps in a row") as stop:
        guard.update(True, "rl step 4")
    assert stop.value.code == 3 and guard.total == 3
    assert NonFinite(limit=0).update(True, "x") is not None  # 0: never stops


def test_out_dir_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="cannot be made: .*/f is a file"):
        check_out_dir(tmp_path / "f" / "run" / "deeper")
    check_out_dir(tmp_path / "new" / "run")  # not there yet: fine, and not made
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_resume_with_more_steps_continues_and_with_none_left_says_so(tmp_path, capsys):
    import json

    from data.synth import main as synth
    from engine import trainer
    from engine.config.settings import Config
    from engine.config.parsing import build_config

    synth(["colors", "--n", "8", "--out", str(tmp_path / "data"), "--seed", "1"])
    out = tmp_path / "run"

    def cfg(*extra):
        return build_config(Config, overrides=[
            "--data.train", str(tmp_path / "data" / "data.jsonl"), "--train.out_dir", str(out), "--train.stage", "sft",
            "--sft.batch_size", "2", "--train.threads", "1", "--train.tensorboard", "false", *extra])

    first = trainer.run(cfg("--sft.steps", "2"))
    assert first["steps"] == {"sft": 2, "rl": 0} and "resumed_from" not in first
    more = trainer.run(cfg("--sft.steps", "3", "--train.resume", "true"))
    assert "resume: sft finished at 2 steps; it continues to sft.steps = 3" in capsys.readouterr().out
    saved = json.loads((out / "summary.json").read_text())
    assert saved["steps"]["sft"] == 3 and saved["final_checkpoint"] == more["final_checkpoint"]
    assert saved["final_checkpoint"].endswith("step_000003")
    assert (out / "checkpoints" / "step_000003" / "COMPLETE").is_file()
    assert saved["resumed_from"].endswith("step_000002")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3  # one more step, not a new run
    again = trainer.run(cfg("--sft.steps", "3", "--train.resume", "true"))
    assert "resume: nothing left to do: the run finished sft 3 steps" in capsys.readouterr().out
    assert again["final_checkpoint"] == saved["final_checkpoint"]
    assert json.loads((out / "summary.json").read_text()) == saved  # untouched


@pytest.mark.slow
def test_rl_update_with_a_nan_loss_is_skipped_and_the_weights_stay(tmp_path, monkeypatch):
    import json

    import torch

    from data.synth import main as synth
    from engine import trainer
    from engine.algo import step
    from engine.config.settings import Config
    from engine.config.parsing import build_config

    synth(["colors", "--n", "8", "--out", str(tmp_path / "data"), "--seed", "1"])
    real, calls = step.policy_loss, {"n": 0}

    def poisoned_first_step(*args, **kwargs):  # every row of the first RL step has a NaN loss
        loss, metrics, n = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), metrics, n) if calls["n"] == 1 else (loss, metrics, n)

    monkeypatch.setattr(step, "policy_loss", poisoned_first_step)
    out = tmp_path / "run"
    summary = trainer.run(build_config(Config, overrides=[
        "--data.train", str(tmp_path / "data" / "data.jsonl"), "--train.out_dir", str(out), "--train.stage", "rl",
        "--rl.steps", "2", "--rollout.prompts_per_step", "2", "--rollout.group_size", "2",
        "--rollout.max_new_tokens", "6", "--train.threads", "1", "--train.tensorboard", "false",
        "--train.sample_every", "0", "--optim.micro_batch_tokens", "100000"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_update"] for r in rows] == [1.0, 0.0] and summary["skipped_updates"] == 1
    from safetensors.torch import load_file
    weights = load_file(out / "checkpoints" / "step_000002" / "model" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
