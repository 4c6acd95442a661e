"""Run logging: phase timers, one logger for TensorBoard + JSONL, and the progress bar.

    timer = PhaseTimer()
    logger = MetricsLogger(run_dir, tensorboard=cfg.train.tensorboard)
    bar = progress(total=cfg.rl.steps, initial=start_step, desc="rl")
    for step in ...:
        with timer.phase("rollout"):
            ...
        scalars = {**metrics, **timer.pop()}              # {"time/rollout": 1.93, ...}
        logger.log(step, scalars)                         # tensors are fine: one host sync here
        bar.set_postfix(reward=f"{float(scalars['reward/mean']):.3f}")
        bar.update(1)
    logger.close()

Files in run_dir: `metrics.jsonl` (one {"step": k, name: value, ...} line per log call; non-finite values are
written as NaN/Infinity, which Python's json reads), `samples.jsonl` ({"step", "tag", "text"} per log_text
call), and TensorBoard event files under `run_dir/tb/` (`tensorboard --logdir runs/`).
`MetricsLogger(run_dir, start_step=k)` continues a run from step k (a resume from the checkpoint of step k; 0 for a
fresh start; None appends to what is there): rows of later steps, written after that checkpoint by a run that was then killed, are cut from both
JSONL files first (and TensorBoard purges its events past k), so no step appears twice.

Sync points (GPU): PhaseTimer calls torch.cuda.synchronize() when a phase starts and when it ends, if CUDA is
available, so a phase is charged for the kernels it launched rather than for the next phase that waits on them.
MetricsLogger.log moves all tensor values to the host with one .cpu() per device: call it once per step, with
metrics kept as detached tensors until then.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm



class PhaseTimer:
    """Accumulates wall seconds per named phase until pop()."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._cuda = torch.cuda.is_available()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._cuda:
            torch.cuda.synchronize()  # sync point: earlier phases' queued kernels are not ours
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._cuda:
                torch.cuda.synchronize()  # sync point: wait for this phase's kernels
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        """{"time/<phase>": seconds} since the last pop, then reset."""
        out = {f"time/{name}": s for name, s in self._seconds.items()}
        self._seconds = {}
        return out


def _to_floats(scalars: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Python floats for every value; all tensors on one device cross to the host in one copy."""
    by_device: dict[torch.device, list[str]] = {}
    for name, v in scalars.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(f"metric {name!r} has shape {tuple(v.shape)}: log one number per name")
            by_device.setdefault(v.device, []).append(name)
    out = {name: float(v) for name, v in scalars.items() if not isinstance(v, torch.Tensor)}
    for names in by_device.values():
        stacked = torch.stack([scalars[n].detach().reshape(()).to(torch.float64) for n in names])
        out.update(zip(names, stacked.cpu().tolist()))  # sync point: once per device per step
    return {name: out[name] for name in scalars}


class MetricsLogger:
    """Writes scalars to TensorBoard and run_dir/metrics.jsonl, texts to TensorBoard and run_dir/samples.jsonl."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, start_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._writer = None
        if start_step is not None:  # None: append to whatever is there
            for name in ("metrics.jsonl", "samples.jsonl"):
                cut_after(self.run_dir / name, start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if start_step is None else start_step + 1
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), flush_secs=10, purge_step=purge)
        self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._samples = open(self.run_dir / "samples.jsonl", "a", encoding="utf-8")

    def log(self, step: int, scalars: dict[str, float | torch.Tensor]) -> dict[str, float]:
        """Write one step's scalars; returns them as floats (e.g. for the progress bar)."""
        values = _to_floats(scalars)
        if self._writer is not None:
            for name, v in values.items():
                self._writer.add_scalar(name, v, step)
        self._metrics.write(json.dumps({"step": step, **values}) + "\n")
        self._metrics.flush()
        return values

    def log_text(self, step: int, tag: str, text: str) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, step)
        self._samples.write(json.dumps({"step": step, "tag": tag, "text": text}, ensure_ascii=False) + "\n")
        self._samples.flush()

    def close(self) -> None:
        """Flush and close everything (its TensorBoard writer thread ends); calling it again does nothing."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._metrics.close()
        self._samples.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cut_after(path: Path, step: int) -> int:
    """Keep the lines of a JSONL log whose "step" is at most `step` (and drop a torn last line); rewritten
    atomically, only when something goes. Returns how many lines went."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row_step = json.loads(line).get("step")
            except (ValueError, AttributeError):  # a line cut by a kill mid-write
                row_step = None
            if isinstance(row_step, int) and row_step <= step and line.endswith("\n"):
                kept.append(line)
            else:
                dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


def progress(total: int, initial: int = 0, desc: str = "train") -> tqdm:
    """A tqdm bar on stderr with ETA; redraws at most once a second (so logs stay small when not a TTY)."""
    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
