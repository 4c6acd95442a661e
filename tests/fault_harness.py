"""Run train.py with one fault injected for real, inside the process: tests/test_faults.py starts it as a subprocess.

    python tests/fault_harness.py FAULT [train.py arguments ...]

FAULT:
- `none`: train.py as it is.
- `kill_in_save:N`: SIGKILL this process during the N-th checkpoint save, after the weights and state are on disk
  and before its COMPLETE marker is written (the worst moment: a folder that looks almost done).
- `nan_sft:S1,S2|all`: SFT steps S1, S2 (1-based) or all of them compute a NaN loss (a poisoned batch).
- `fsize:BYTES`: no file this process writes may grow past BYTES (RLIMIT_FSIZE, with SIGXFSZ ignored so the
  write fails with an OSError as on a full disk).
- `signal_in_rollout:SIG:K`: in the K-th call of the sampler (`models.generation.generate`), at its 3rd decoding
  step, this process sends itself SIG (TERM or INT), and every later decoding step takes 0.2 s more. The time of
  the signal and the number of decoding steps drawn after it go to the file $FAULT_REPORT (JSON) at exit.
- `slow_save:SECONDS`: every checkpoint save touches RUN/SAVE_STARTED, then waits SECONDS (so a second signal
  lands inside one).
- `judge_asks_all`: the judge sends every sample (its answer extraction returns the whole completion), so a run
  of the untrained tiny model really talks to the judge.
Faults combine with `+` (`slow_save:5+judge_asks_all`). Nothing here is imported by the engine; it only wraps
functions the engine already calls.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import signal
import sys
import time
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


def signal_in_rollout(arg: str) -> None:
    import models.generation as generation

    name, k = arg.split(":")
    real_generate, real_draw = generation.generate, generation._draw
    state = {"calls": 0, "draws": 0, "sent": None, "after": 0}

    def generate(*args, **kwargs):
        state["calls"], state["draws"] = state["calls"] + 1, 0
        return real_generate(*args, **kwargs)

    def draw(*args, **kwargs):
        state["draws"] += 1
        if state["sent"] is not None:
            state["after"] += 1
            time.sleep(0.2)  # an engine that ignored the signal would sit here for the rest of the rollout
        elif state["calls"] == int(k) and state["draws"] == 3:
            state["sent"] = time.time()
            os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
        return real_draw(*args, **kwargs)

    def report():
        with open(os.environ["FAULT_REPORT"], "w") as f:
            json.dump({"signal_at": state["sent"], "draws_after": state["after"], "exit_at": time.time()}, f)

    generation.generate, generation._draw = generate, draw
    import engine.rollout.rollout as rollout  # it imported generate by name

    rollout.generate = generate
    atexit.register(report)


def slow_save(seconds: float) -> None:
    import engine.run_checkpoints as checkpoints  # the run's saves go through its save_checkpoint

    real = checkpoints.save_checkpoint

    def save(run_dir, *args, **kwargs):
        (Path(run_dir) / "SAVE_STARTED").touch()  # a test waits for this before it signals "inside a save"
        time.sleep(seconds)
        return real(run_dir, *args, **kwargs)

    checkpoints.save_checkpoint = save


def judge_asks_all() -> None:
    import rewards.judge as judge

    judge.extract_answer = lambda text, protocol="auto": text.strip()[:40] or "x"


FAULTS = {"none": lambda a: None, "kill_in_save": lambda a: kill_in_save(int(a)), "nan_sft": nan_sft,
          "fsize": lambda a: fsize(int(a)), "signal_in_rollout": signal_in_rollout,
          "slow_save": lambda a: slow_save(float(a)), "judge_asks_all": lambda a: judge_asks_all()}


def main() -> int:
    faults, argv = sys.argv[1], sys.argv[2:]
    for fault in faults.split("+"):
        kind, _, arg = fault.partition(":")
        FAULTS[kind](arg)
    import train

    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
