"""Fault injection, for real: each fault happens to a real train.py (or data.check) process, and the test asserts
what the user is promised. Kills (-9 mid-checkpoint and at a random moment), SIGTERM and SIGINT, a full disk, an
unusable run folder, poisoned (NaN) batches, a planted pickle, a corpus of broken records and images, and hostile
inputs to the CLIs, tools and the judge. The counts go to tests/fault_tally.py, printed as one line at the end of
`make test`. Faults run through tests/fault_harness.py on the tiny model, SFT only (no sampling), a few steps.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.config.registries import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, LOSSES
from engine.runtime.checkpoint import latest_checkpoint
from rewards.registry import REWARDS
from tests.data_fixtures import save_png, save_truncated_png, write_lines
from tests.fault_helpers import (ENV, ROOT, clean, finish, harness, metric_rows, run, saved_step, start, train_args,
                                 wait_for, weights)
from tests.fault_tally import TALLY

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("colors")
    subprocess.run([sys.executable, "-m", "data.synth", "colors", "--n", "12", "--out", str(out), "--seed", "3"],
                   check=True, cwd=ROOT, env=ENV, capture_output=True)
    return out / "data.jsonl"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted 6-step SFT run: what every interrupted run must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run(harness("none", train_args(data, out)))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_kill_9_mid_checkpoint_and_at_a_random_moment_then_resume_is_bitwise(data, reference, tmp_path):
    out, seed = tmp_path / "run", random.randrange(10**6)
    with TALLY.fault():  # killed after step 3's weights are written, before its COMPLETE marker
        done = run(harness("kill_in_save:3", train_args(data, out)))
        assert done.returncode == -signal.SIGKILL
        assert saved_step(out) == 2 and list((out / "checkpoints").glob(".tmp-step_000003-*"))
    with TALLY.fault():  # killed at a random moment of the resumed run (a step, a save, anything)
        proc = start(harness("none", train_args(data, out, "--train.resume", "true")))
        wait_for(lambda: saved_step(out) >= 3, proc)
        time.sleep(random.Random(seed).uniform(0, 0.8))
        proc.kill()
        finish(proc)
        assert saved_step(out) >= 3, f"seed {seed}"
    left = (out / "LOCK").exists()  # the kill came before the run ended (it may have finished in the 0.8 s)
    with TALLY.fault():  # the kill left its LOCK: stale (its process is gone), taken over; no metrics row twice
        done = run(harness("none", train_args(data, out, "--train.resume", "true")))
        assert done.returncode == 0, clean(done)
        said = f"note: {out}/LOCK was left by pid" in done.stdout and "which is gone (killed or crashed)" in done.stdout
        assert said == left, (left, done.stdout[-2000:])
        assert [r["step"] for r in metric_rows(out)] == [1, 2, 3, 4, 5, 6], f"seed {seed}"
        assert not (out / "LOCK").exists()
    assert json.loads((out / "summary.json").read_text())["steps"]["sft"] == 6
    mine, theirs = weights(out), weights(reference)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), f"resumed SFT differs from the reference (seed {seed})"


def test_sigterm_and_sigint_write_a_checkpoint_and_exit_cleanly(data, tmp_path):
    out = tmp_path / "run"
    args = train_args(data, out, "--sft.steps", "500", "--train.save_every", "0")
    for signum, code, extra in ((signal.SIGTERM, 143, []), (signal.SIGINT, 130, ["--train.resume", "true"])):
        with TALLY.fault():
            before = len(metric_rows(out))
            proc = start(harness("none", args + extra))
            wait_for(lambda: len(metric_rows(out)) > before, proc)
            proc.send_signal(signum)
            _, err = finish(proc)
            assert proc.returncode == code, err[-3000:]
            step = saved_step(out)
            assert step >= before + 1 and f"{signal.Signals(signum).name}: stopped after sft step {step} of 500" in err
            assert f"continue with --resume {out}" in clean((None, err)) and not (out / "FAILED").exists()


def test_full_disk_and_unusable_run_folder_are_clear_errors(data, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    with TALLY.fault():  # no file may grow past 1 MB: the next checkpoint's weights (4.4 MB) cannot be written
        done = run(harness("fsize:1000000", train_args(data, out, "--train.resume", "true", "--sft.steps", "7")))
        assert done.returncode == 2
        err = clean(done)
        assert "error: cannot write the checkpoint step_000007" in err and "File too large" in err
        assert f"The previous checkpoint ({out / 'checkpoints' / 'step_000006'}) is intact" in err
        assert saved_step(out) == 6 and not list((out / "checkpoints").glob(".tmp-*"))
        assert (out / "FAILED").is_file()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with TALLY.fault():  # the run folder cannot be made: said before any model loads, nothing left behind
        done = run(harness("none", train_args(data, blocker / "run")))
        assert done.returncode == 2
        assert f"train.out_dir {blocker / 'run'}: cannot be made: {blocker} is a file" in clean(done)
        assert "Loading weights" not in done.stderr + done.stdout


def test_poisoned_batches_are_skipped_counted_and_a_streak_stops_the_run(data, tmp_path):
    out = tmp_path / "one"
    with TALLY.fault():  # step 2's loss is NaN: skipped, counted, logged; the rest train; weights stay finite
        done = run(harness("nan_sft:2", train_args(data, out, "--sft.steps", "4", "--train.save_every", "0")))
        assert done.returncode == 0, clean(done)
        assert "warning: sft step 2: NaN/inf loss or gradient: update skipped (1 in a row, 1 in all)" in done.stdout
        assert [r["sft/skipped_update"] for r in metric_rows(out)] == [0.0, 1.0, 0.0, 0.0]
        assert json.loads((out / "summary.json").read_text())["skipped_updates"] == 1
        assert all(torch.isfinite(w).all() for w in weights(out).values())
    out = tmp_path / "all"
    with TALLY.fault():  # every batch poisoned: stops after optim.max_skipped_updates in a row, exit 3
        done = run(harness("nan_sft:all", train_args(data, out, "--optim.max_skipped_updates", "2")))
        assert done.returncode == 3
        assert "sft step 2: 2 steps in a row had a NaN/inf loss or gradient and were skipped" in clean(done)
        assert (out / "FAILED").is_file() and len(metric_rows(out)) == 2


class Planted:
    """What a tampered run folder could hold: unpickling it runs a shell command."""

    def __reduce__(self):
        return (os.system, ("touch PLANTED",))


def test_planted_pickle_in_a_run_folder_is_refused_not_run(data, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    torch.save({"stage": "sft", "x": Planted()}, latest_checkpoint(out) / "state.pt")
    with TALLY.fault():
        done = run(harness("none", train_args(data, out, "--train.resume", "true")), cwd=tmp_path,
                   env={**ENV, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 2
        assert "state.pt: refused: it holds Python objects" in clean(done)
        assert not (tmp_path / "PLANTED").exists()


# ---------------------------------------------------------------------------------------------- bad data
def broken_corpus(folder: Path) -> tuple[Path, int, list[int]]:
    """A JSONL of good records and every kind of broken one we know; returns (file, good count, bad lines)."""
    save_png(folder / "ok.png", (32, 32))
    save_png(folder / "big.png", (400, 300))
    save_truncated_png(folder / "cut.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    Image.new("RGB", (8, 8)).save(folder / "real.jpg", format="JPEG")
    (folder / "cut.jpg").write_bytes((folder / "real.jpg").read_bytes()[:60])
    good = {"image": "ok.png", "question": "What colour?", "answer": "red"}
    lines = [
        good,                                                  # 1 good
        {**good, "image": "cut.png"},                          # 2 truncated PNG (header fine)
        {**good, "image": "empty.png"},                        # 3 zero-byte image
        {**good, "image": "text.png"},                         # 4 text named .png
        {**good, "image": "cut.jpg"},                          # 5 truncated JPEG
        {**good, "image": "gone.png"},                         # 6 missing image
        "{not json",                                           # 7 broken JSON
        "[1, 2]",                                              # 8 not an object
        {"image": "ok.png", "answer": "red"},                  # 9 no question
        {**good, "answer": ""},                                # 10 empty answer
        {**good, "answer": []},                                # 11 no answers
        {"image": "ok.png", "question": "q"},                  # 12 missing answer
        {**good, "bbox": [10, 10, 99, 20]},                    # 13 box outside the image
        {**good, "bbox": [20, 10, 10, 20]},                    # 14 x1 >= x2
        {**good, "bbox": [1, 2, 3]},                           # 15 three numbers
        {**good, "question": 7},                               # 16 wrong type
        {**good, "image": "big.png", "bbox": [40, 30, 200, 150]},  # 17 oversized (downsized, or refused)
        {**good, "answer": ["red", "  "]},                     # 18 one empty reference among others
        good,                                                  # 19 good
    ]
    path = write_lines(folder / "corpus.jsonl", lines)
    with open(path, "ab") as f:
        f.write(b'{"image": "ok.png", "question": "\xff\xfe", "answer": "x"}\n')  # 20 not UTF-8
    return path, 2, [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20]


def test_broken_corpus_every_record_named_nothing_lost(tmp_path):
    path, good, bad = broken_corpus(tmp_path)
    check = [sys.executable, "-m", "data.check", str(path), "--max-image-pixels", "30000"]
    with TALLY.bad_input(len(bad)):
        done = run(check + ["--refuse-oversized"], timeout=60)
        assert done.returncode == 2
        named = [line for line in clean(done).splitlines() if line.startswith(f"{path}:")]
        assert [int(line.split(":")[1]) for line in named] == bad  # each bad record once, in file order
        assert all(len(line.split(": ", 1)[1]) > 10 for line in named)  # and a reason with it
        done = run(check + ["--refuse-oversized", "--skip-bad"], timeout=60)
        assert done.returncode == 0 and f"examples: {good} (skipped {len(bad)})" in done.stdout
    TALLY.lost += good - int(done.stdout.split("examples: ")[1].split()[0])
    done = run(check, timeout=60)  # the oversized image is downsized instead, and said
    assert done.returncode == 2 and f"note: {path}:17: image" in done.stdout and "downsized to 200x150" in done.stdout


def test_training_with_skip_bad_never_meets_a_broken_image(tmp_path):
    path, good, bad = broken_corpus(tmp_path)
    out = tmp_path / "run"
    with TALLY.fault():  # skip_bad: every broken image is found at load (decoded in full), none at step N
        done = run(harness("none", train_args(path, out, "--data.skip_bad", "true", "--sft.steps", "2",
                                              "--data.max_image_pixels", "30000")))
        assert done.returncode == 0, clean(done)
        assert f"data: {good + 1} training examples" in done.stdout  # + the downsized one
        assert done.stdout.count("skipped: ") == len(bad) - 1 and f"{path}:2: cannot read image" in done.stdout
    with TALLY.bad_input():  # without skip_bad: the first bad record stops the start, and no run folder is made
        done = run(harness("none", train_args(path, tmp_path / "strict")))
        assert done.returncode == 2 and f"error: {path}:2: cannot read image" in clean(done)
        assert not (tmp_path / "strict").exists()
    with TALLY.bad_input():  # a model folder that is not there: same
        done = run(harness("none", train_args(path, tmp_path / "nomodel", "--model.path", str(tmp_path / "none"),
                                              "--data.skip_bad", "true")))
        assert done.returncode != 0 and not (tmp_path / "nomodel").exists()
        assert str(tmp_path / "none") in done.stderr


# ---------------------------------------------------------------------------------------------- hostile inputs
SCORE_INPUTS = [["accuracy", "--answer", ""], ["accuracy"], ["accuracy", "--answer", "x", "--example", '{"c": 1}'],
                ["accuracy", "--answer", "x", "--example", "["], ["iou", "--answer", "x", "--image-size", "12"]]


def test_rewards_score_bad_input_is_one_line(capsys):
    from rewards.explain import main

    for args in SCORE_INPUTS:
        with TALLY.bad_input():
            assert main([args[0], "--completion", "<answer>x</answer>", *args[1:]]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"rewards.explain {args[0]}: ") and err.count("\n") == 1


TOOL_ARGS = [("crop", {"box": "/etc/passwd"}), ("crop", {"path": "/etc/passwd"}), ("crop", {"box": [0, 0, 9, 9],
             "image": "/etc/passwd"}), ("crop", {"box": [-50, -50, 500, 500]}), ("zoom", {"factor": 2,
             "center": [1e9, 1e9]}), ("resize", {"width": 10**5, "height": 10**5}), ("../../etc/passwd", {}),
             ("info", {"file": "/etc/passwd"}), ("crop", {"box": [float("nan"), 0, 9, 9]}), ("crop", ["box"])]


def test_tool_arguments_cannot_name_files_or_leave_the_image(monkeypatch):
    from tools.registry import call_tool

    image = Image.new("RGB", (100, 80))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    for name, args in TOOL_ARGS:
        with TALLY.bad_input():
            result = call_tool(name, args, image)
            assert result.image is None and result.error and "failed (" not in result.error, (name, args, result)
    assert opened == []


def test_judge_reply_is_capped_and_parsed_never_evaluated(tmp_path, monkeypatch):
    from data.example import Example
    from rewards.judge import make_judge_reward
    from rewards.registry import RewardContext
    from tests.local_http import local_server
    from tests.test_rewards_judge import TEMPLATE, FakeJudge

    monkeypatch.chdir(tmp_path)
    with local_server(FakeJudge) as url:
        judge = make_judge_reward(f"{url}/v1", "judge-model", TEMPLATE, timeout_s=5, retries=0)
        with TALLY.bad_input(2):
            scores = judge.batch(["<answer>huge-me</answer>", "<answer>code-me</answer>"],
                                 [Example(question="q", answers=["x"], images=[])] * 2, [RewardContext()] * 2)
            assert scores == [None, None] and judge.stats["failed"] == 2
            assert not (tmp_path / "JUDGE_RAN_CODE").exists()


CONFIG_INPUTS = [(["--algo.loss", "gpg"], "choose one of " + ", ".join(LOSSES.names())),
                 (["--algo.advantage", "nope"], ", ".join(ADVANTAGES.names())),
                 (["--algo.aggregation", "x"], ", ".join(AGGREGATIONS.names())),
                 (["--algo.kl_estimator", "k9"], ", ".join(KL_ESTIMATORS.names())),
                 (["--rollout.protocol", "x"], "inline, multiturn"), (["--rollout.sampler", "x"], "'native', 'vllm'"),
                 (["--reward.weights", '{"gpg": 1.0}'], "unknown reward(s) 'gpg'; choose from " +
                  ", ".join(REWARDS.names())),
                 (["--train.steps", "4"], "moved to rl.steps"), (["--data.oversized_images", "crop"], "downsize"),
                 (["--optim.max_skipped_updates", "-1"], "optim.max_skipped_updates = -1 is out of range"),
                 (["--rl.lr", "nan"], "rl.lr = nan: must be a finite number"),
                 (["--rollout.temperature", "0"], "rollout.temperature = 0.0 is out of range: must be > 0"),
                 (["--train.keep_checkpoints", "0"], "train.keep_checkpoints = 0 is out of range: must be >= 1"),
                 (["--algo.ppo_clip.dual_clip_c", "0.5"], "algo.ppo_clip.dual_clip_c = 0.5 is out of range")]


def test_bad_config_names_are_refused_before_any_model_loads(tmp_path, capsys):
    import train

    with TALLY.bad_input():  # one for real, as a user types it
        done = run([sys.executable, "train.py", "--data.train", "x.jsonl", "--algo.loss", "gpg"], timeout=60)
        assert done.returncode == 2 and clean(done).startswith("config error: algo.loss = 'gpg' is unknown; choose")
    for args, choices in CONFIG_INPUTS:  # the same entry point in this process (a subprocess each costs ~5 s)
        with TALLY.bad_input():
            assert train.main(["--data.train", "x.jsonl", "--train.out_dir", str(tmp_path / "r"), *args]) == 2
            err = capsys.readouterr().err
            assert err.startswith("config error: ") and choices in err and err.count("\n") == 1, (args, err)
            assert not (tmp_path / "r").exists()
