"""How a command's config is layered (engine/setup/layers.py): a flag wins over the preset, two ways of saying one
thing in one place are an error naming both, the resolved budget is said at start, and a model from a run is asked
with the run's own config.toml, every differing setting named.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_layers.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.parsing import build_config, to_toml
from engine.config.settings import Config
from engine.setup.data_setup import budget_lines, with_epochs
from engine.setup.layers import ALTERNATIVES, OFF, asking_differences, config_for_model, layered_config

ROOT = Path(__file__).resolve().parents[1]
SEED001 = ROOT / "configs" / "seed001.toml"  # sft.epochs = 3, no sft.steps


def test_a_flag_beats_the_preset_and_switches_its_alternative_off():
    assert (layered_config(SEED001, []).sft.epochs, layered_config(SEED001, []).sft.steps) == (3.0, 0)
    cfg = layered_config(SEED001, ["--sft.steps", "30"])
    assert (cfg.sft.steps, cfg.sft.epochs) == (30, 0.0)  # the run: 30 steps, not 3 epochs
    cfg = layered_config(SEED001, ["--sft.steps=30", "--sft.epochs", "0"])  # naming the other one "off" is fine
    assert (cfg.sft.steps, cfg.sft.epochs) == (30, 0.0)
    cfg = layered_config(SEED001, ["--rl.epochs", "2"])  # the preset's rl.steps = 150 gives way
    assert (cfg.rl.steps, cfg.rl.epochs) == (0, 2.0)


def test_two_ways_in_one_place_is_an_error_naming_both(tmp_path):
    with pytest.raises(ValueError, match=r"the command line sets both sft.steps = 30 and sft.epochs = 2.0"):
        layered_config(SEED001, ["--sft.steps", "30", "--sft.epochs", "2"])
    preset = tmp_path / "p.toml"
    preset.write_text("[rl]\nsteps = 5\nepochs = 1.5\n")
    with pytest.raises(ValueError, match=rf"{preset} sets both rl.steps = 5 and rl.epochs = 1.5"):
        layered_config(preset, [])
    assert layered_config(preset, ["--rl.steps", "7"]).rl == build_config(Config).rl.__class__(steps=7, epochs=0.0)
    # every pair's "off" value is its field's default-free zero: the rule reads it, the tree defines the fields
    fields = set(build_config(Config).__dataclass_fields__)
    assert all(k.split(".")[0] in fields for pair in ALTERNATIVES for k in pair) and set(OFF) == {
        k for pair in ALTERNATIVES for k in pair}


def test_held_out_data_follows_the_same_rule(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('[data]\ntrain = "t.jsonl"\neval_fraction = 0.1\n')
    cfg = layered_config(preset, ["--data.eval", "held.jsonl"])
    assert (cfg.data.eval, cfg.data.eval_fraction) == ("held.jsonl", 0.0)
    with pytest.raises(ValueError, match="sets both data.eval"):
        layered_config(preset, ["--data.eval", "held.jsonl", "--data.eval_fraction", "0.2"])


def test_epochs_become_steps_in_the_resolved_config_and_the_budget_is_said():
    asked = layered_config(SEED001, ["--sft.batch_size", "16", "--rl.steps", "4", "--rollout.prompts_per_step", "8"])
    resolved = with_epochs(asked, 24)
    # by hand: ceil(3 epochs x 24 examples / 16 a step) = ceil(4.5) = 5 steps, i.e. 5 x 16 / 24 = 3.33 passes
    assert (resolved.sft.steps, resolved.sft.epochs) == (5, 0.0)
    assert budget_lines(asked, resolved, 24) == [
        "sft: 5 steps (3.33 epochs of 24 examples, 16 a step; from sft.epochs 3)",
        "rl: 4 steps (1.33 epochs of 24 prompts, 8 a step; from rl.steps)"]
    again = build_config(Config, toml_text=to_toml(resolved))  # the run's config.toml reads back as a preset
    assert layered_config(None, [], base=again).sft.steps == 5
    cli = layered_config(SEED001, ["--sft.steps", "30", "--sft.batch_size", "16"])
    assert budget_lines(cli, with_epochs(cli, 24), 24)[0] == \
        "sft: 30 steps (20 epochs of 24 examples, 16 a step; from sft.steps)"


def fake_run(tmp_path: Path, *flags: str) -> Path:
    """A run folder as eval.py sees one: merged/ (a model folder: config.json is all resolve_model reads) and the
    run's resolved config.toml."""
    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    (run / "merged" / "config.json").write_text("{}")
    (run / "config.toml").write_text(to_toml(layered_config(ROOT / "configs" / "seed003.toml", list(flags))))
    return run


def test_a_model_from_a_run_is_asked_with_the_runs_own_settings(tmp_path):
    run = fake_run(tmp_path, "--rollout.max_new_tokens", "96", "--data.prefill", "{")
    cfg, notes, run_cfg = config_for_model(None, None, ["--model.path", str(run)], "eval")
    assert cfg.rollout.max_new_tokens == 96 and cfg.data.prefill == "{" and run_cfg.rollout.max_new_tokens == 96
    assert cfg.data.question_template == run_cfg.data.question_template and cfg.model.path == str(run)
    assert notes == ["eval: asking as the run was trained (its config.toml, then the flags)"]

    preset = ROOT / "configs" / "seed003.toml"
    cfg, notes, _ = config_for_model(None, preset, ["--model.path", str(run)], "eval")
    assert cfg.rollout.max_new_tokens == build_config(Config, toml_path=preset).rollout.max_new_tokens
    # the preset names max_new_tokens (48) but no prefill: the run's "{" stays, and only the limit is said
    assert cfg.data.prefill == "{"
    assert notes[1:] == [f"eval: rollout.max_new_tokens {cfg.rollout.max_new_tokens} (run trained with 96)"]
    assert notes[0].endswith(f"(its config.toml, then {preset} and the flags); 1 setting(s) differ from the run's:")
    # a flag that changes nothing about the asking says nothing; one that does is named
    assert asking_differences(run_cfg, layered_config(None, ["--train.seed", "3"], base=run_cfg), "eval") == []
    assert asking_differences(run_cfg, layered_config(None, ["--reward.weights", "accuracy=1"], base=run_cfg),
                              "infer") == ['infer: reward.weights {"accuracy": 1.0} (run trained with '
                                           '{"format_json": 1.0, "accuracy": 1.0, "reasoning": 1.0})']


def test_a_plain_model_folder_says_the_defaults_are_used(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg, notes, run_cfg = config_for_model(str(model), None, [], "infer")
    assert run_cfg is None and cfg == build_config(Config)
    assert notes == [f"infer: {model} is not from a run (no config.toml beside it): asking with the defaults "
                     "(no --config given)"]
