"""What keeps a run from losing work or failing silently: preemption signals, non-finite updates, the run folder.

    with StopSignals() as signals:            # SIGTERM/SIGINT only set a flag ...
        for step in ...:
            ...one step...
            if signals.requested():           # ... checked between steps (the same decision on every rank)
                save a checkpoint; raise RunStopped(..., code=signals.exit_code)

- A cluster scheduler preempts with SIGTERM (then SIGKILL after a grace period); Ctrl-C is SIGINT. The first one
  is acted on within a decoding step in one process (`pending()`, read by the sampler: the step is abandoned and the
  run saved as it was before it) and at the end of the step under torchrun (`requested()`, a collective); then a
  checkpoint is written and the process exits with 128 + the signal number (143, 130), the code a shell reports
  for a process the signal ended, so a job script can tell "preempted" from "done". A second one acts at once (the
  default handlers are back: SIGTERM ends the process, SIGINT raises KeyboardInterrupt, which train.py turns into
  one line and exit 130). A kill -9 is covered by the atomic checkpoints instead (engine/runtime/checkpoint.py):
  the newest complete one is always loadable.
- `NonFinite`: an update whose loss or gradient norm is NaN/inf is skipped by the step functions (no optimizer
  step, weights untouched); this counts them, and after `limit` in a row stops the run with a clear message.
- `stages_left`: resuming a finished stage with a raised step count continues it; with nothing left, says so.
- `check_out_dir`: a run folder that cannot be made is found before any model loads; `mark_failed` leaves a
  FAILED note in a run folder whose run stopped on an error, and `clear_failed` removes it when a run starts.
Tested in tests/test_faults.py (real signals, kills and full disks in subprocesses) and tests/test_guard.py.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from engine.runtime import distributed as D

FAILED = "FAILED"


class RunStopped(Exception):
    """The run stopped on purpose (a signal, too many non-finite updates): the message says why and what is safe;
    `code` is the process exit status train.py returns."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class StopSignals:
    """SIGTERM and SIGINT set a flag instead of killing the process (main thread only; elsewhere: a no-op)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()  # a second signal acts at once
        for s in self.SIGNALS:  # even in a process started with it ignored (`nohup`, a shell's background job)
            if signal.getsignal(s) is signal.SIG_IGN:
                signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
        if os.environ.get("RANK", "0") == "0":  # torchrun signals every rank; one says so
            print(f"\n{signal.Signals(signum).name}: stopping: writing a checkpoint of the last whole step, then "
                  "exiting (send it again to stop at once, without a checkpoint)", flush=True)

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    def stopped(self, where: str, checkpoint) -> RunStopped:
        run = Path(checkpoint).parent.parent  # RUN/checkpoints/step_N
        return RunStopped(f"{self.name}: stopped {where}; checkpoint {checkpoint} is complete: continue with "
                          f"--resume {run}", code=self.exit_code)

    def pending(self) -> bool:
        """Whether this process got a signal (a flag read: no collective, cheap enough for every decoding step)."""
        return self.signum is not None

    def requested(self) -> bool:
        """Whether any rank got a signal (a collective under torchrun: call it at the same points on every rank)."""
        got = int(D.all_reduce_sum(1 if self.signum is not None else 0))  # sync point
        if got and self.signum is None:  # another rank was signalled: stop together, as it would
            self.signum = signal.SIGTERM
        return bool(got)


class NonFinite:
    """Counts skipped non-finite updates; raises RunStopped after `limit` in a row (0: never)."""

    def __init__(self, limit: int):
        self.limit, self.in_row, self.total = limit, 0, 0

    def update(self, skipped: bool, where: str) -> str | None:
        """Record one step; returns a warning for a skipped one, raises RunStopped at the limit."""
        if not skipped:
            self.in_row = 0
            return None
        self.in_row += 1
        self.total += 1
        if self.limit and self.in_row >= self.limit:
            raise RunStopped(f"{where}: {self.in_row} steps in a row had a NaN/inf loss or gradient and were "
                             "skipped (optim.max_skipped_updates); the weights are the last finite ones. Lower the "
                             "learning rate, check the data, or resume from the newest checkpoint", code=3)
        return f"{where}: NaN/inf loss or gradient: update skipped ({self.in_row} in a row, {self.total} in all)"


def stages_left(stages: list[str], summary: dict, saved: dict, wanted: dict[str, int],
                flags: dict[str, str]) -> tuple[list[str], list[str]]:
    """The stages of a resumed run that still have steps, and what to tell the user. A finished stage continues
    when the checkpoint resumed from (`saved`: its stage and stage_step) ended it with fewer steps than `wanted`
    now (it leaves summary["done_stages"]); one a later stage has built on cannot, and that is said."""
    left, said = [], []
    for stage in stages:
        if stage not in summary["done_stages"]:
            left.append(stage)
        elif saved.get("stage") == stage and saved["stage_step"] < wanted[stage]:
            summary["done_stages"].remove(stage)
            left.append(stage)
            said.append(f"resume: {stage} finished at {saved['stage_step']} steps; it continues to "
                        f"{flags[stage]} = {wanted[stage]}")
        elif summary["steps"].get(stage, wanted[stage]) < wanted[stage]:
            said.append(f"resume: {stage} finished at {summary['steps'][stage]} steps and a later stage has "
                        f"started from it: {flags[stage]} = {wanted[stage]} is not applied")
    if not left:
        done = ", ".join(f"{s} {summary['steps'].get(s, '?')} steps" for s in stages)
        last = saved.get("stage", stages[-1])  # only the stage the checkpoint is in can go on
        said.append(f"resume: nothing left to do: the run finished {done}; raise --{flags[last]} to train further")
    return left, said


def check_out_dir(path: str | Path) -> None:
    """Raise ValueError now (before any model loads) if the run folder cannot be made or written."""
    p = Path(path).absolute()
    existing = next(q for q in [p, *p.parents] if q.exists())
    if not existing.is_dir():
        raise ValueError(f"train.out_dir {path}: cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"train.out_dir {path}: {existing} is not writable: choose another train.out_dir")


def mark_failed(folder: Path, error: BaseException) -> None:
    """Leave a note that this run folder's run stopped on an error (best effort: the disk may be the problem)."""
    if not folder.is_dir():
        return
    try:
        (folder / FAILED).write_text(f"this run stopped with an error: {type(error).__name__}: {error}\n"
                                     "checkpoints/latest (if present) names the newest complete checkpoint; "
                                     f"continue with --resume {folder} once the cause is fixed\n")
    except OSError:
        pass


def clear_failed(folder: Path) -> None:
    (folder / FAILED).unlink(missing_ok=True)
