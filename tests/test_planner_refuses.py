"""The memory planner refuses what train.py refuses, with train.py's own message: both parse the config the same way
(Config.validate, the one rule for budgets) and both call engine/setup/run_setup.py check_launch (batches split over
the processes, vLLM's tensor parallelism), so a combination train.py refuses is printed as `refused: <message>`
instead of a plan. The trainer's side of the launch checks runs with a fake process count (no torchrun): only
D.init and the run-folder claim (a collective) are stood in for.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_planner_refuses.py`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import train
from data.synth import write_dataset
from engine import trainer
from engine.runtime import distributed as D
from engine.setup.memory import main as plan

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["--config", str(ROOT / "configs" / "demo.toml")]

# (flags) train.py refuses while parsing; the planner must refuse each with the same words
PARSE_REFUSALS = [
    ["--train.mixed_precision", "bf16", "--model.dtype", "bfloat16"],
    ["--rollout.sampler", "vllm", "--rollout.top_k", "20"],
    ["--rollout.sampler", "vllm", "--data.max_pixels", "200000"],
    ["--rollout.vllm_tp", "2"],  # a vLLM setting without the vLLM sampler
    ["--lora.alpha", "32"],  # LoRA's settings with LoRA off
    ["--model.attn_implementation", "varlen"],  # flash kernels on fp32 weights
    ["--sft.steps", "10", "--sft.epochs", "2"],
    ["--rollout.group_size", "1"],
]


def _said(text: str, prefix: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, text
    return lines[0].removeprefix(prefix)


@pytest.mark.parametrize("flags", PARSE_REFUSALS, ids=lambda f: " ".join(f))
def test_what_train_py_refuses_when_parsing_the_planner_refuses_alike(flags, tmp_path, capsys):
    assert train.main([*DEMO, *flags, "--train.out_dir", str(tmp_path / "run")]) == 2
    trained = _said(capsys.readouterr().err, "config error: ")
    assert plan([*DEMO, *flags]) == 2
    planned = _said(capsys.readouterr().out, "refused: ")
    assert planned == trained and not (tmp_path / "run").exists()


class _Claim:
    """Stands in for the run-folder claim, whose lock is a collective over the (fake) processes."""

    notes: list = []

    @classmethod
    def take(cls, *args):
        return cls()

    def check_data(self, *args):
        pass

    def release(self):
        pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("refuses")
    write_dataset("colors", 16, str(out), seed=1)
    return out / "data.jsonl"


@pytest.mark.parametrize("gpus, flags, said, fits_on", [
    (3, [], "not a multiple of the 3 processes", 4),  # demo's sft.batch_size 16 does not split over 3
    (4, ["--rollout.sampler", "vllm", "--rollout.vllm_tp", "3"], "vllm_tp = 3 does not divide the 4", 6),
], ids=["batch-split", "vllm-tp"])
def test_what_train_py_refuses_at_launch_the_planner_refuses_for_as_many_gpus(gpus, flags, said, fits_on, data,
                                                                             tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainer.D, "init", lambda **kw: D.Dist(world=gpus))
    monkeypatch.setattr(trainer, "Claim", _Claim)
    real = importlib.util.find_spec  # vLLM "installed": its settings are what is checked (the planner never asks)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real(n, *a))
    assert train.main([*DEMO, *flags, "--data.train", str(data), "--data.eval", "",
                       "--train.out_dir", str(tmp_path / "run")]) == 2
    trained = _said(capsys.readouterr().err, "error: ")
    assert plan([*DEMO, *flags, "--gpus", str(gpus)]) == 2
    assert _said(capsys.readouterr().out, "refused: ") == trained
    assert said in trained
    monkeypatch.undo()
    batches = ["--sft.batch_size", "24", "--rollout.prompts_per_step", "12"]  # split over 4 and 6 processes
    assert plan([*DEMO, *flags, *batches, "--gpus", str(fits_on)]) == 0  # where the launch is fine: a plan


def test_the_plan_counts_the_vllm_engine_where_the_native_sampler_has_its_kv_cache(capsys):
    shape = [*DEMO, "--shape", "3b", "--gpu-gib", "80"]
    assert plan(shape) == 0
    native = capsys.readouterr().out
    assert plan([*shape, "--rollout.sampler", "vllm"]) == 0
    vllm = capsys.readouterr().out
    assert "rollout KV cache" in native and "vLLM engine" not in native
    assert "vLLM engine" in vllm and "rollout KV cache" not in vllm
    # each fitting setting says what bounds the rollout: our sampler's prompts, or the engine's trajectories at once
    assert "rollout.prompts_per_step up to" in native and "vLLM holds" in vllm and "vLLM holds" not in native
