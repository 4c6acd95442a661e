"""A run remembers how it asks (issue 23's closing test): seed 003's preset trains on a single save_to_disk Dataset in
the seed's own format, with 10 % held out by content and other limits than the preset's (rollout.max_new_tokens
96). Then eval.py on the run with no --config gives exactly the run's own final evaluation; with the preset it names
each setting that differs from the run's; infer.py and engine.infer.Assistant ask as the run was trained; the
viewer opens on the run though it dumped no rollouts while training.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_asked_as_trained.py`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

import eval as eval_cli
import infer as infer_cli
import train
from tests.seed_fixtures import seed003_dataset
from tools import view

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ["--train.threads", "1", "--train.tensorboard", "false", "--sft.steps", "3", "--sft.batch_size", "4",
          "--rl.steps", "1", "--rollout.group_size", "2", "--rollout.prompts_per_step", "2", "--train.sample_every", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("asked")
    data = seed003_dataset(root / "data", 40, seed=3)  # one Dataset, no splits: the seed's own layout
    out = root / "run"
    assert train.main(["--config", str(ROOT / "configs" / "seed003.toml"), "--data.train", str(data),
                       "--train.out_dir", str(out), "--rollout.max_new_tokens", "96", *BUDGET]) == 0
    return out, data


@pytest.mark.slow
def test_eval_without_config_repeats_the_runs_own_final_evaluation(run, tmp_path, capsys):
    out, _ = run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_overlaps_train"] == 0 and summary["num_eval_examples"] > 0  # held out by construction
    capsys.readouterr()
    assert eval_cli.main(["--model.path", str(out), "--out", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert "eval: asking as the run was trained (its config.toml, then the flags)\n" in printed
    metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert metrics.pop("eval_overlaps_train") == 0
    assert metrics == summary["eval_after_rl"]  # the same examples, asked the same way: the same numbers


@pytest.mark.slow
def test_eval_with_the_preset_names_what_differs(run, tmp_path, capsys):
    out, data = run
    capsys.readouterr()
    assert eval_cli.main(["--config", str(ROOT / "configs" / "seed003.toml"), "--model.path", str(out),
                          "--data.train", str(data), "--out", str(tmp_path / "preset")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "eval: rollout.max_new_tokens 256 (run trained with 96)" in printed
    assert not [line for line in printed if line.startswith("eval: data.") or line.startswith("eval: reward.")]
    assert any(line.startswith("eval: asking as the run was trained") and "1 setting(s) differ" in line
               for line in printed)


@pytest.mark.slow
def test_infer_and_the_assistant_ask_as_the_run_was_trained(run, tmp_path, capsys):
    from data import load_examples
    from engine.infer import Assistant

    out, data = run
    example = load_examples(data).examples[0]
    image = tmp_path / "q.png"
    image.write_bytes(example.images[0])
    capsys.readouterr()
    assert infer_cli.main(["--model", str(out), "--image", str(image), "--question", example.question,
                           "--out", str(tmp_path / "reply.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("infer: asking as the run was trained") and "\nstop: " in printed
    [row] = [json.loads(line) for line in open(tmp_path / "reply.jsonl")]  # --out holds the single reply too
    bot = Assistant(out, crops_dir=tmp_path / "crops")
    assert bot.notes == [] and bot.cfg.rollout.max_new_tokens == 96  # the run's own limit, not the default
    assert bot.cfg.data.question_template == tomllib.loads((out / "config.toml").read_text())["data"][
        "question_template"]
    reply = bot.ask(str(image), example.question)
    assert (reply.response, reply.stop) == (row["response"], row["stop"])  # greedy: the same answer both ways
    # a multiple-choice row is asked with its options, as training showed them ({options} in the template)
    assert example.choices
    with_options = bot.ask(str(image), example.question, choices=example.choices)
    assert with_options.response == bot.ask_many([example])[0].response
    capsys.readouterr()
    assert infer_cli.main(["--model", str(out), "--image", str(image), "--question", example.question,
                           "--choices", ",".join(example.choices)]) == 0
    assert f"response: {with_options.response}\n" in capsys.readouterr().out
    other = Assistant(out, config=bot.cfg.__class__(), crops_dir=tmp_path / "crops", verbose=False)
    assert "infer: rollout.max_new_tokens 64 (run trained with 96)" in other.notes


@pytest.mark.slow
def test_the_viewer_opens_on_a_run_that_dumped_nothing_while_training(run, capsys):
    out, _ = run
    dumped = sorted(p.name for p in (out / "rollouts").glob("step_*.jsonl"))
    assert dumped == ["step_000004.jsonl"]  # train.sample_every 0: the last (RL) step's rollouts, written at the end
    assert view.main([str(out)]) == 0
    page = (out / "rollouts" / "index.html").read_text()
    assert page.count('<section class="rollout"') == 4 and "reward <b>" in page
