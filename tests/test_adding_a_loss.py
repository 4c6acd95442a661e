"""docs/ADDING_A_LOSS.md's worked example, run as written: its code block is copied to a file outside engine/,
imported (which registers the loss), checked against values worked out by hand, and trained for two RL steps
with its new setting set on the command line. Nothing in engine/ knows the loss or the setting."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from data.synth import write_dataset
from engine.config.settings import Config
from engine.config.parsing import build_config
from engine.algo.losses import LOSSES, LossInputs

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ADDING_A_LOSS.md"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The doc's first python block as tmp/plugins/entropy_ppo.py, imported; the loss is unregistered after."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    path = tmp_path_factory.mktemp("plugins") / "entropy_ppo.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("entropy_ppo", path)
    module = importlib.util.module_from_spec(spec)
    assert "ppo_clip_entropy" not in LOSSES
    spec.loader.exec_module(module)
    yield module
    LOSSES.pop("ppo_clip_entropy", None)  # other tests list the built-in losses


def test_the_example_loss_is_ppo_clip_minus_the_entropy_bonus(plugin):
    # On-policy (logp = old_logp: ratio 1, no clipping) ppo_clip is -A per token; the bonus subtracts
    # coef x entropy: token 0: -1 - 0.1 x 0.5 = -1.05; token 1: +1 - 0.1 x 2.0 = 0.8; token 2 is padding
    # (NaN entropy) and must stay finite. entropy_bonus = 0.1 x (0.5 + 2.0) / 2 = 0.125.
    logp = torch.tensor([-1.0, -2.0, 0.0])
    x = LossInputs(logp=logp, old_logp=logp.clone(), adv=torch.tensor([1.0, -1.0, 0.0]),
                   mask=torch.tensor([1.0, 1.0, 0.0]), seq_idx=torch.tensor([0, 1, 1]), num_seqs=2,
                   entropy=torch.tensor([0.5, 2.0, float("nan")]))
    cfg = plugin.EntropyAlgoConfig(loss="ppo_clip_entropy", entropy_coef=0.1)
    cfg.validate()  # the name is registered: parse-time validation accepts it
    per_token, metrics = LOSSES["ppo_clip_entropy"](x, cfg)
    torch.testing.assert_close(per_token[:2], torch.tensor([-1.05, 0.8]))
    assert torch.isfinite(per_token).all()
    assert metrics["entropy_bonus"].item() == pytest.approx(0.125)


def test_the_setting_exists_only_in_the_plugins_config(plugin):
    with pytest.raises(ValueError, match="unknown flag --algo.entropy_coef"):
        build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=["--algo.entropy_coef", "0.1"])
    cfg = build_config(plugin.EntropyConfig, toml_path=ROOT / "configs/demo.toml",
                       overrides=["--algo.loss", "ppo_clip_entropy", "--algo.entropy_coef", "0.05"])
    assert (cfg.algo.loss, cfg.algo.entropy_coef) == ("ppo_clip_entropy", 0.05)


@pytest.mark.slow
def test_training_with_the_plugin_loss(plugin, tmp_path):
    from engine import trainer

    write_dataset("colors", 16, str(tmp_path / "data"), seed=3)
    cfg = build_config(plugin.EntropyConfig, toml_path=ROOT / "configs/demo.toml", overrides=[
        "--data.train", str(tmp_path / "data" / "data.jsonl"), "--data.eval", "", "--train.out_dir",
        str(tmp_path / "run"), "--train.threads", "1", "--train.tensorboard", "false", "--train.stage", "rl",
        "--rl.steps", "2", "--rollout.prompts_per_step", "2", "--rollout.group_size", "4",
        "--rollout.max_new_tokens", "8", "--rollout.temperature", "1.0", "--train.sample_every", "0",
        "--algo.loss", "ppo_clip_entropy", "--algo.entropy_coef", "0.05"])
    trainer.run(cfg)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    steps = [r for r in rows if "reward/total" in r]
    assert len(steps) == 2
    # every step ran the plugin's loss: its metric is logged, positive (entropy > 0) and finite, as is the loss
    assert all(0 < r["train/entropy_bonus"] < 10 and abs(r["train/loss"]) < 1e3 for r in steps)
    assert "entropy_coef = 0.05" in (tmp_path / "run" / "config.toml").read_text()
