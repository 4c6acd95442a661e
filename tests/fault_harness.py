"""Run train.py with one fault injected for real, inside the process: tests/test_faults.py starts it as a subprocess.

    python tests/fault_harness.py FAULT [train.py arguments ...]

FAULT:
- `none`: train.py as it is.
- `kill_in_save:N`: SIGKILL this process during the N-th checkpoint save, after the weights and state are on disk
  and before its COMPLETE marker is written (the worst moment: a folder that looks almost done).
- `nan_sft:S1,S2|all`: SFT steps S1, S2 (1-based) or all of them compute a NaN loss (a poisoned batch).
- `fsize:BYTES`: no file this process writes may grow past BYTES (RLIMIT_FSIZE, with SIGXFSZ ignored so the
  write fails with an OSError as on a full disk).
Nothing here is imported by the engine; it only wraps functions the engine already calls.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def kill_in_save(n: int) -> None:
    import engine.runtime.checkpoint as ckpt

    real, calls = ckpt._write_atomic, {"n": 0}

    def write(path, text):
        if path.name == ckpt.COMPLETE:
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
        real(path, text)

    ckpt._write_atomic = write


def nan_sft(which: str) -> None:
    import engine.algo.sft as sft
    import engine.trainer as trainer

    steps, state = (None if which == "all" else {int(s) for s in which.split(",")}), {"step": 0, "poison": False}
    real_step, real_logps = trainer.sft_step, sft.row_logps

    def step(*args, **kwargs):
        state["step"] += 1
        state["poison"] = steps is None or state["step"] in steps
        return real_step(*args, **kwargs)

    def logps(*args, **kwargs):
        logp, rest = real_logps(*args, **kwargs)
        return (logp * float("nan"), rest) if state["poison"] else (logp, rest)

    trainer.sft_step, sft.row_logps = step, logps


def fsize(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def main() -> int:
    fault, argv = sys.argv[1], sys.argv[2:]
    kind, _, arg = fault.partition(":")
    {"none": lambda a: None, "kill_in_save": lambda a: kill_in_save(int(a)), "nan_sft": nan_sft,
     "fsize": lambda a: fsize(int(a))}[kind](arg)
    import train

    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
