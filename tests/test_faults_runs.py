"""Fault injection, for real, on what a run owns and how it ends: two runs on one folder, stale locks, a fresh start
over an earlier run, resumes that would change the run (settings, data), a signal mid-rollout, a second Ctrl-C,
a judge that trickles its reply. Each case is a real train.py process (tests/fault_harness.py for injected faults);
counts go to tests/fault_tally.py with the rest of the suite (`make test-faults`).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import torch

from tests.fault_helpers import (ENV, ROOT, clean, finish, harness, metric_rows, run, saved_step, start, train_args,
                                 wait_for, weights)
from tests.fault_tally import TALLY
from tests.local_http import local_server

pytestmark = [pytest.mark.faults, pytest.mark.slow]
RL = ["--train.stage", "rl", "--rl.steps", "3", "--rollout.prompts_per_step", "2", "--rollout.group_size", "2",
      "--rollout.max_new_tokens", "12"]


def colors(folder: Path, seed: int) -> Path:
    subprocess.run([sys.executable, "-m", "data.synth", "colors", "--n", "12", "--out", str(folder), "--seed",
                    str(seed)], check=True, cwd=ROOT, env=ENV, capture_output=True)
    return folder / "data.jsonl"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return colors(tmp_path_factory.mktemp("colors"), 3)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A finished 6-step SFT run, copied by each test that changes it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = run(harness("none", train_args(data, out)))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def copy_run(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


# ---------------------------------------------------------------------------------------------- two runs, one folder
def test_a_second_run_on_a_folder_in_use_is_refused_and_leaves_it_alone(data, tmp_path):
    out = tmp_path / "run"
    first = start(harness("slow_save:0.5", train_args(data, out, "--sft.steps", "400", "--train.save_every", "0")))
    wait_for(lambda: len(metric_rows(out)) >= 2, first)
    with TALLY.fault():  # a second start and a second resume, while the first runs: both refused, nothing touched
        for extra in ([], ["--train.resume", "true"]):
            done = run(harness("none", train_args(data, out, "--sft.steps", "3", *extra)))
            assert done.returncode == 2
            assert f"train.out_dir {out} is in use by another run (pid {first.pid} on " in clean(done)
        assert not (out / "FAILED").exists() and not (out / "summary.json").exists()
    first.send_signal(signal.SIGTERM)
    _, err = finish(first)
    assert first.returncode == 143, err[-2000:]
    steps = [r["step"] for r in metric_rows(out)]
    assert steps == list(range(1, len(steps) + 1))  # one run's rows, each step once
    assert not (out / "LOCK").exists()


def test_a_lock_left_by_kill_9_is_taken_over_and_rows_past_the_checkpoint_are_cut(data, tmp_path):
    out = tmp_path / "run"
    proc = start(harness("none", train_args(data, out, "--sft.steps", "400", "--train.save_every", "4")))
    wait_for(lambda: len(metric_rows(out)) >= 6, proc)
    proc.kill()
    finish(proc)
    with TALLY.fault():
        saved, rows = saved_step(out), len(metric_rows(out))
        assert (out / "LOCK").exists() and rows >= saved  # rows after the checkpoint: the killed run's last steps
        done = run(harness("none", train_args(data, out, "--sft.steps", str(saved + 2), "--train.resume", "true",
                                              "--train.resume_changes", "sft.steps")))  # lowered from 400: said so
        assert done.returncode == 0, clean(done)
        assert f"note: {out}/LOCK was left by pid {proc.pid} on " in done.stdout and "which is gone" in done.stdout
        assert [r["step"] for r in metric_rows(out)] == list(range(1, saved + 3)), (saved, rows)


def test_a_fresh_start_over_an_earlier_run_is_refused_unless_overwrite(data, finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    before = (out / "config.toml").read_bytes()
    with TALLY.bad_input():
        done = run(harness("none", train_args(data, out, "--sft.steps", "2")))
        assert done.returncode == 2
        assert (f"train.out_dir {out} holds an earlier run (checkpoints up to step_000006): continue it with "
                f"--resume {out}") in clean(done)
        assert (out / "config.toml").read_bytes() == before and not (out / "FAILED").exists()
    with TALLY.fault():  # overwrite: the earlier run's files go, the new run's rows are the only ones
        done = run(harness("none", train_args(data, out, "--sft.steps", "2", "--train.overwrite", "true")))
        assert done.returncode == 0, clean(done)
        assert [r["step"] for r in metric_rows(out)] == [1, 2]
        assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000001", "step_000002"]


# ---------------------------------------------------------------------------------------------- resume
def test_resume_continues_the_run_as_made_and_refuses_what_would_change_it(data, finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    before = (out / "config.toml").read_bytes()
    refusals = [(["--sft.lr", "2e-4"], "sft.lr: 0.0001 -> 0.0002"),
                (["--model.dtype", "bfloat16"], "model.dtype: 'float32' -> 'bfloat16'"),
                (["--algo.loss", "gspo"], "differ from the run's own ({out}/config.toml): algo.loss: 'ppo_clip' -> 'gspo'."),
                (["--sft.steps", "4"], "sft.steps: 6 -> 4 (a budget may be raised, not lowered)"),
                (["--data.sft_template", "<answer>{answer}</answer>"], "data.sft_template:")]
    for flags, said in refusals:
        with TALLY.bad_input():  # refused before anything loads, listed; the run's own record untouched
            done = run([sys.executable, "train.py", "--resume", str(out), *flags], timeout=120)
            err, said = clean(done), said.format(out=out)
            assert done.returncode == 2 and f"resume of {out} refused" in err and said in err, (flags, err)
            assert "--train.resume_changes" in err and err.count("\n") == 1
            assert (out / "config.toml").read_bytes() == before and not (out / "FAILED").exists()
    other = colors(tmp_path / "other", 4)  # another dataset of the same size
    with TALLY.bad_input():
        done = run([sys.executable, "train.py", "--resume", str(out), "--sft.steps", "7", "--data.train", str(other)])
        assert done.returncode == 2 and "the content of data.train differs from what the run trained on" in clean(done)
        assert (out / "config.toml").read_bytes() == before and saved_step(out) == 6
    with TALLY.fault():  # no overrides repeated: the run's own data, a raised budget, an accepted change
        done = run([sys.executable, "train.py", "--resume", str(out), "--sft.steps", "8", "--sft.lr", "2e-4",
                    "--train.resume_changes", "sft.lr", "--train.threads", "1"])
        assert done.returncode == 0, clean(done)
        assert "resume: accepted change (train.resume_changes): sft.lr: 0.0001 -> 0.0002" in done.stdout
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"]["sft"] == 8 and summary["resume_changes"] == ["sft.lr: 0.0001 -> 0.0002"]
        assert [r["step"] for r in metric_rows(out)] == list(range(1, 9))
        made = (out / "config.toml").read_text()  # the run's record now says how it continues; the data unchanged
        assert "lr = 0.0002" in made and f'train = "{data}"' in made and "resume_changes = []" in made


def test_a_setting_that_cannot_work_is_refused_beside_resume_too(finished, tmp_path, capsys):
    import train

    out = copy_run(finished, tmp_path / "run")
    before = sorted(p.name for p in out.rglob("*"))
    for flags, said in ((["--sft.lr", "inf"], "sft.lr = inf: must be a finite number"),
                        (["--optim.beta1", "1.5"], "optim.beta1 = 1.5 is out of range"),
                        (["--rollout.temperature", "-1"], "rollout.temperature = -1.0 is out of range"),
                        (["--train.keep_checkpoints", "0"], "train.keep_checkpoints = 0 is out of range")):
        with TALLY.bad_input():  # at parse time, on top of the run's own settings: nothing loads, nothing is written
            assert train.main(["--resume", str(out), *flags]) == 2
            err = capsys.readouterr().err
            assert err.startswith("config error: ") and said in err and err.count("\n") == 1, (flags, err)
            assert sorted(p.name for p in out.rglob("*")) == before


# ---------------------------------------------------------------------------------------------- signals
@pytest.fixture(scope="module")
def rl_reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rl_reference") / "run"
    done = run(harness("none", train_args(data, out, *RL)))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_sigterm_mid_rollout_is_acted_on_within_a_decoding_step_and_resume_is_bitwise(data, rl_reference, tmp_path):
    out, report = tmp_path / "run", tmp_path / "report.json"
    with TALLY.fault():  # SIGTERM at decoding step 3 of RL step 2's rollout
        done = run(harness("signal_in_rollout:TERM:2", train_args(data, out, *RL)), env={**ENV,
                                                                                         "FAULT_REPORT": str(report)})
        assert done.returncode == 143, done.stderr[-3000:]
        said = json.loads(report.read_text())
        assert said["draws_after"] <= 1  # the next decoding step saw it: the rest of the rollout never ran
        assert said["exit_at"] - said["signal_at"] < 30  # mostly the checkpoint of step 1, which is already saved
        assert "SIGTERM: stopped during rl step 2 of 3 (abandoned: it runs again on resume)" in clean(done)
        assert saved_step(out) == 1 and [r["step"] for r in metric_rows(out)] == [1]
    done = run(harness("none", train_args(data, out, *RL, "--train.resume", "true")))
    assert done.returncode == 0, clean(done)
    mine, theirs = weights(out), weights(rl_reference)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs), "resumed RL differs from the uninterrupted run"
    assert [r["step"] for r in metric_rows(out)] == [1, 2, 3]


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["plain", "started_with_sigint_ignored"])
def test_a_second_ctrl_c_stops_at_once_with_one_line_and_exit_130(data, tmp_path, sigint_ignored):
    """Also in a process started with SIGINT ignored (nohup, a background job): the first signal is still caught,
    and the second must not fall back to being ignored (it did: the slow save then finished)."""
    out = tmp_path / "run"
    proc = start(harness("slow_save:20", train_args(data, out, "--sft.steps", "400", "--train.save_every", "0")),
                 sigint_ignored=sigint_ignored)
    with TALLY.fault():
        wait_for(lambda: len(metric_rows(out)) >= 1, proc)
        proc.send_signal(signal.SIGINT)  # the first: finish the step, then save (20 s: the harness's slow save)
        wait_for(lambda: (out / "SAVE_STARTED").exists(), proc)  # however long the step takes on a busy machine
        proc.send_signal(signal.SIGINT)  # the second, inside that save: stop now
        _, err = finish(proc, timeout=60)
        assert proc.returncode == 130
        assert "SIGINT: stopped at once, without a checkpoint" in clean((None, err))
        assert not (out / "FAILED").exists() and not (out / "LOCK").exists()
        assert not list(out.glob("checkpoints/step_*"))  # the save it interrupted never completed


# ---------------------------------------------------------------------------------------------- a trickling judge
class Trickle(BaseHTTPRequestHandler):
    """Headers, then one byte every 0.3 s for ever (`/headers`: the status line, then the headers one byte at a time)."""

    stop = threading.Event()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        try:
            if self.path.startswith("/headers"):
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                while not Trickle.stop.wait(0.3):
                    self.wfile.write(b"X")
                    self.wfile.flush()
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            while not Trickle.stop.wait(0.3):
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:  # the client cut it: what it should do
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def trickle_url():
    with local_server(Trickle) as url:
        yield url
        Trickle.stop.set()


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_judge_that_trickles_never_keeps_the_run_alive(data, trickle_url, tmp_path, where):
    out = tmp_path / "run"
    judge = ["--reward.weights", "judge=1.0", "--reward.judge.url", f"{trickle_url}/{where}/v1",
             "--reward.judge.model", "m", "--reward.judge.timeout_s", "1", "--reward.judge.retries", "0"]
    with TALLY.fault():
        started = time.monotonic()
        done = run(harness("judge_asks_all", train_args(data, out, *RL, "--rl.steps", "2", *judge)), timeout=200)
        assert done.returncode == 0, clean(done)
        assert (out / "summary.json").is_file() and time.monotonic() - started < 150
        assert "requests failed (scored 0)" in done.stderr and "Traceback" not in done.stderr
