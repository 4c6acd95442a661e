"""Each seed's preset (configs/seed00N.toml) on a small dataset in that seed's OWN format (tests/seed_fixtures.py):
data.check reads it, train.py runs SFT then RL on it and evaluates, and the summary names the task's headline
metric (IoU / IoU>=0.5 for grounding, accuracy and Match-F1 for VQA reasoning, accuracy otherwise).
Budgets are cut to seconds; what is checked is that every joint holds, not that the tiny model learns (the
grounding test below checks that SFT moves held-out IoU)."""

import json
from pathlib import Path

import pytest

import eval as eval_cli
import infer as infer_cli
import train
from data.check import main as check_main
from tests.seed_fixtures import seed_fixture

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = {"seed000": ["accuracy"], "seed001": ["accuracy"], "seed002": ["iou", "iou50"],
            "seed003": ["accuracy", "reasoning"], "seed004": ["accuracy"]}
FORMAT = {"seed000": "jsonl", "seed001": "seed001", "seed002": "hf_disk", "seed003": "hf_disk",
          "seed004": "geometry3k"}
SMALL = ["--train.threads", "1", "--train.tensorboard", "false", "--sft.steps", "2", "--sft.epochs", "0",
         "--sft.batch_size", "4", "--rl.steps", "1", "--rollout.group_size", "2", "--rollout.prompts_per_step",
         "2", "--rollout.max_new_tokens", "16", "--data.overlong", "truncate", "--train.sample_every", "0",
         "--train.stage", "sft,rl"]


def summary_config(run: Path) -> dict:
    import tomllib

    return tomllib.loads((run / "config.toml").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("seed", sorted(HEADLINE))
def test_preset_trains_and_evaluates_on_the_seeds_own_format(seed, tmp_path, capsys):
    from engine.infer import Assistant

    data, held_out = seed_fixture(seed, tmp_path / "data", n_train=6, n_eval=3)
    assert check_main([str(data)]) == 0
    assert f"format: {FORMAT[seed]}" in capsys.readouterr().out
    out = tmp_path / "run"
    argv = ["--config", str(ROOT / "configs" / f"{seed}.toml"), "--data.train", str(data), "--data.eval",
            str(held_out), "--train.out_dir", str(out), *SMALL]
    assert train.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done_stages"] == ["sft", "rl"] and summary["num_eval_examples"] == 3
    line = next(x for x in printed.splitlines() if x.startswith("summary: "))
    for metric in HEADLINE[seed]:
        for stage in ("after_sft", "after_rl"):
            assert 0.0 <= summary[f"{metric}_{stage}"] <= 1.0
            assert f"{metric}_{stage}=" in line
    if seed == "seed002":  # the text label is no metric of a grounding task
        assert not any(k.startswith("accuracy_") for k in summary)
    # then the run is asked as it was trained: eval.py with no --config repeats its final evaluation, infer.py and
    # the Assistant answer with its own settings (no line says a setting differs)
    assert eval_cli.main(["--model.path", str(out), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics.pop("eval_overlaps_train") == summary["eval_overlaps_train"] == 0
    assert metrics == summary["eval_after_rl"]
    split = ["--split", "test"] if seed == "seed004" else []  # Geometry3K: one folder, its test split held out
    assert infer_cli.main(["--model", str(out), "--data", str(held_out), *split, "--out",
                           str(tmp_path / "answers.jsonl")]) == 0
    answers = [json.loads(line) for line in open(tmp_path / "answers.jsonl")]
    assert len(answers) == 3 and all("stop" in a for a in answers)
    bot = Assistant(out, crops_dir=tmp_path / "crops")
    assert bot.notes == [] and bot.cfg.data.question_template == summary_config(out)["data"]["question_template"]


@pytest.mark.parametrize("seed", sorted(HEADLINE))
def test_sft_target_scores_full_marks_on_the_headline_metrics(seed, tmp_path):
    """The SFT target each preset writes from a reference (the box for grounding, one JSON step per reference
    step for VQA reasoning) is what its headline metrics call perfect: SFT teaches the answer RL is paid for."""
    from dataclasses import replace

    from engine.config.settings import Config
    from engine.config.parsing import build_config
    from engine.setup.data_setup import load_train
    from engine.report.evaluate import prompts_for
    from engine.algo.sft import sft_trajectory, target_text
    from engine.algo.step import score
    from engine.trainer import load_policy

    data, _ = seed_fixture(seed, tmp_path, n_train=3, n_eval=1)
    cfg = build_config(Config, toml_path=ROOT / "configs" / f"{seed}.toml", overrides=["--data.train", str(data)])
    cfg = replace(cfg, reward=replace(cfg.reward, weights={m: 1.0 for m in cfg.eval.metrics}))
    vlm = load_policy(cfg, device="cpu")
    examples = load_train(cfg, verbose=False)
    prompts = prompts_for(examples, vlm, cfg)
    trajs = [sft_trajectory(p, target_text(e, cfg.data.sft_template, p, vlm), vlm) for p, e in zip(prompts, examples)]
    rewards = score(trajs, vlm, cfg)
    assert {name: min(values) for name, values in rewards.parts.items()} == {m: 1.0 for m in HEADLINE[seed]}
    if seed == "seed003":  # one step per reference step, in order
        assert json.loads(trajs[0].text)["reasoning_steps"] == examples[0].reference_steps


def test_the_summary_line_names_each_headline_metric_or_says_there_is_none():
    from engine.config.settings import Config
    from engine.config.parsing import build_config

    cfg = build_config(Config, toml_path=ROOT / "configs" / "seed003.toml", overrides=["--train.out_dir", "runs/x"])
    line = train.summary_line({"accuracy_after_sft": 0.25, "reasoning_after_sft": 0.5, "accuracy_after_rl": 0.75,
                               "other": 1.0}, cfg)
    assert line == ("summary: accuracy_after_sft=0.250, reasoning_after_sft=0.500, accuracy_after_rl=0.750 "
                    "(runs/x/summary.json)")
    assert train.summary_line({"steps": {"sft": 2}}, cfg) == (
        "summary: no held-out metrics (no data.eval, or no stage finished) (runs/x/summary.json)")
