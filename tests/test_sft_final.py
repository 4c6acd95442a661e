"""sft.final_train / sft.final_steps: the SFT stage's last steps read a second dataset (configs/zoom_tools.toml's
own-cell crops after random ones), in an order of their own that a resume inside that phase replays exactly."""

from pathlib import Path

import pytest

from data.synth import write_dataset
from engine import trainer
from engine.config.settings import Config
from engine.config.parsing import build_config

ROOT = Path(__file__).resolve().parent.parent
REAL_TARGET_TEXT = trainer.target_text


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("final")
    write_dataset("colors", 12, str(root / "first"), seed=1)
    write_dataset("colors", 6, str(root / "last"), seed=2)
    return root / "first" / "data.jsonl", root / "last" / "data.jsonl"


def _cfg(first, last, out_dir, *extra):
    return build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=[
        "--data.train", str(first), "--data.eval", "", "--train.out_dir", str(out_dir), "--train.threads", "1",
        "--train.tensorboard", "false", "--train.stage", "sft", "--sft.steps", "5", "--sft.batch_size", "2",
        "--sft.final_train", str(last), "--sft.final_steps", "3", "--train.sample_every", "0", *extra])


def _recording(monkeypatch, seen: list, crash_at: int | None = None):
    def target_text(example, *args, **kwargs):
        if crash_at is not None and len(seen) == crash_at:
            raise KeyboardInterrupt("simulated crash")
        seen.append(example.origin)
        return REAL_TARGET_TEXT(example, *args, **kwargs)

    monkeypatch.setattr(trainer, "target_text", target_text)


def test_last_steps_read_the_final_set_and_a_resume_replays_its_order(two_sets, tmp_path, monkeypatch):
    first, last = two_sets
    straight = []
    _recording(monkeypatch, straight)
    summary = trainer.run(_cfg(first, last, tmp_path / "straight"))
    assert summary["steps"]["sft"] == 5 and len(straight) == 10
    assert all(o.startswith(f"{first}:") for o in straight[:4])  # steps 1-2: data.train
    assert all(o.startswith(f"{last}:") for o in straight[4:])  # steps 3-5: sft.final_train
    assert len(set(straight[4:])) == 6  # one pass over its 6 examples, each once

    crashed = []
    _recording(monkeypatch, crashed, crash_at=8)  # inside step 5, after step 4's checkpoint
    with pytest.raises(KeyboardInterrupt):
        trainer.run(_cfg(first, last, tmp_path / "crashed", "--train.save_every", "1"))
    resumed = []
    _recording(monkeypatch, resumed)
    trainer.run(_cfg(first, last, tmp_path / "crashed", "--train.save_every", "1", "--train.resume", "true"))
    assert crashed == straight[:8] and resumed == straight[8:]


def test_bad_settings_name_the_keys(two_sets, tmp_path):
    first, last = two_sets
    with pytest.raises(ValueError, match="sft.final_train and sft.final_steps go together"):
        _cfg(first, "", tmp_path / "a")
    with pytest.raises(ValueError, match=r"sft.final_steps = 9 is more than sft.steps = 5"):
        trainer.run(_cfg(first, last, tmp_path / "b", "--sft.final_steps", "9"))
    with pytest.raises(ValueError, match="missing.jsonl"):
        trainer.run(_cfg(first, tmp_path / "missing.jsonl", tmp_path / "c"))
