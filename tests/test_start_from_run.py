"""train.py --model.path takes what eval.py and infer.py take: a run folder (its latest checkpoint, or a LoRA run's
merged/ export) or a run's checkpoint folder, and says in one line what it picked; the new run's config.toml records
the model folder itself. Refused with what to do: a folder holding no model, a LoRA adapter, and a model inside the
run's own train.out_dir (continuing a run is --resume's job).

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_start_from_run.py`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from data.synth import write_dataset
from engine import trainer
from engine.setup.model_source import start_from
from models.tiny import tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
PARAM = "lm_head.weight"  # one tensor, named alike in a checkpoint's file and in the loaded model
BUDGET = ["--config", str(ROOT / "configs" / "demo.toml"), "--data.eval", "", "--train.threads", "1",
          "--train.tensorboard", "false", "--train.stage", "sft", "--sft.batch_size", "4", "--train.sample_every", "0"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 4-step SFT run on the tiny model with checkpoints at steps 2 and 4, and its data."""
    root = tmp_path_factory.mktemp("start_from")
    write_dataset("colors", 16, str(root / "data"), seed=1)
    data = root / "data" / "data.jsonl"
    run = root / "source"
    assert train.main([*BUDGET, "--data.train", str(data), "--train.out_dir", str(run), "--sft.steps", "4",
                       "--train.save_every", "2"]) == 0
    return run, data


def _start(argv, monkeypatch) -> torch.Tensor:
    """Starts a 1-step SFT run and returns PARAM as the run loaded it, before any step."""
    loaded = {}

    def recording(cfg, *args, **kwargs):
        vlm = real(cfg, *args, **kwargs)
        loaded["param"] = vlm.model.state_dict()[PARAM].detach().clone()
        return vlm

    real = trainer.load_policy
    monkeypatch.setattr(trainer, "load_policy", recording)
    assert train.main([*BUDGET, "--sft.steps", "1", *argv]) == 0
    return loaded["param"]


@pytest.mark.slow
@pytest.mark.parametrize("given, picked, said", [
    ("source", "step_000004", "(the latest checkpoint of run {run})"),
    ("source/checkpoints/step_000002", "step_000002", "(checkpoint step_000002 of run {run})")])
def test_a_run_or_checkpoint_folder_starts_a_new_run_from_its_weights(source, tmp_path, monkeypatch, capsys, given,
                                                                      picked, said):
    run, data = source
    path = run.parent / given
    out = tmp_path / "new"
    param = _start(["--data.train", str(data), "--train.out_dir", str(out), "--model.path", str(path)], monkeypatch)
    folder = run / "checkpoints" / picked / "model"
    saved = load_file(folder / "model.safetensors")[PARAM]  # read from the file, not through the loader
    initial = load_file(tiny_model_dir("qwen2_5_vl") / "model.safetensors")[PARAM]
    assert torch.equal(param, saved) and not torch.equal(saved, initial)  # SFT moved it: the test can tell
    assert f"model: {folder} {said.format(run=run)}" in capsys.readouterr().out.splitlines()
    recorded = tomllib.loads((out / "config.toml").read_text())["model"]["path"]
    assert recorded == str(folder)  # a resume, the KL reference and eval.py reload these weights


@pytest.mark.slow
def test_a_folder_with_no_model_is_refused_naming_it(source, tmp_path, capsys):
    run, data = source
    assert train.main([*BUDGET, "--data.train", str(data), "--train.out_dir", str(tmp_path / "new"),
                       "--model.path", str(data.parent)]) == 2
    err = capsys.readouterr().err
    assert f"error: {data.parent} holds no model: expected config.json (a model folder)" in err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_its_own_run_folder_is_refused_and_resume_named(source, capsys):
    run, data = source
    before = (run / "checkpoints" / "latest").read_text()
    assert train.main([*BUDGET, "--data.train", str(data), "--train.out_dir", str(run), "--model.path", str(run),
                       "--train.overwrite", "true"]) == 2  # overwrite would delete the weights it starts from
    assert (f"error: model.path {run} is inside train.out_dir {run}, the folder this run writes: to continue that "
            f"run use --resume {run} (no --model.path)") in capsys.readouterr().err
    assert train.main(["--resume", str(run), "--model.path", str(run)]) == 2
    assert ("the folder this run writes: --resume continues that run from its newest checkpoint with its own model: "
            "drop --model.path") in capsys.readouterr().err
    assert (run / "checkpoints" / "latest").read_text() == before


def test_a_lora_adapter_is_refused_with_what_to_pass_instead(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    base = tiny_model_dir("qwen2_5_vl")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    with pytest.raises(ValueError, match=r"is a LoRA adapter .*Pass the run folder once its LoRA run has finished"):
        start_from(adapter, tmp_path / "out", resume=False)
    assert start_from(base, tmp_path / "out", resume=False) == (base, None)  # a model folder: as is, nothing said
