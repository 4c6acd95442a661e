"""What the fault-injection suite's test files share: the environment, how a train.py (or any CLI) runs as a real
subprocess, through tests/fault_harness.py when a fault is injected inside it, and how its outcome is read.

Every process's stderr is counted in the tally (tests/fault_tally.py: processes seen, tracebacks among them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.runtime.checkpoint import latest_checkpoint, load_checkpoint
from tests.fault_tally import TALLY

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1"}


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data.train", str(data), "--train.out_dir", str(out), "--train.stage", "sft", "--sft.steps", "6",
            "--sft.batch_size", "2", "--train.threads", "1", "--train.tensorboard", "false",
            "--train.sample_every", "0", "--train.save_every", "1", *extra]


def harness(fault: str, args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "tests" / "fault_harness.py"), fault, *args]


def run(cmd: list[str], timeout: float = 240, **options) -> subprocess.CompletedProcess:
    """Run a command to its end; its stderr is counted in the tally (processes, tracebacks)."""
    done = subprocess.run(cmd, cwd=options.pop("cwd", ROOT), env=options.pop("env", ENV), capture_output=True,
                          text=True, timeout=timeout, **options)
    TALLY.saw(done.stderr)
    return done


def start(cmd: list[str], sigint_ignored: bool = False) -> subprocess.Popen:
    """A started process; `sigint_ignored`: it starts with SIGINT ignored, as `nohup` or a shell's background job does."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """(stdout, stderr) of a started process once it ends; its stderr is counted in the tally."""
    out, err = proc.communicate(timeout=timeout)
    TALLY.saw(err)
    return out, err


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


def metric_rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def saved_step(out: Path) -> int:
    """The stage step of the newest complete checkpoint, read as a resume reads it (weights_only)."""
    return load_checkpoint(latest_checkpoint(out), model=None)["stage_step"]


def clean(done: subprocess.CompletedProcess | tuple) -> str:
    """stderr, asserting that no traceback reached the user."""
    err = done.stderr if hasattr(done, "stderr") else done[1]
    assert "Traceback" not in err, err[-3000:]
    return err


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(out) / "model" / "model.safetensors")
