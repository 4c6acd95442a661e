"""docs/METRICS.md defines every number a run logs: a short SFT + RL run on zoom data (an inline crop tool, a KL
reference, two updates per rollout, truncated IS, a periodic evaluation) logs its metrics.jsonl and summary.json,
and each key must match a row of the page (`<...>` stands for one name, `<metric>` for a loss metric)."""

import json
import re
from pathlib import Path

import pytest

from data.synth import write_dataset
from engine.config import Config, build_config

ROOT = Path(__file__).resolve().parent.parent


def documented() -> list[re.Pattern]:
    """The page's keys as patterns: each backticked key in a table's first column; plugin rows are not built-ins."""
    keys = re.findall(r"^\| `([^`]+)`", (ROOT / "docs" / "METRICS.md").read_text(encoding="utf-8"), re.M)
    out = []
    for key in keys:
        if "plugin" in key:
            continue
        pattern = re.escape(key).replace(re.escape("<metric>"), r"[a-z_]+(?:/[a-z_]+)?")
        out.append(re.compile("^" + re.sub(r"<[a-z]+>", r"[a-z0-9_]+", pattern.replace("\\<", "<").replace("\\>", ">"))
                              + "$"))
    return out


def test_the_patterns_read_the_page():
    pats = documented()
    assert any(p.match("train/tokens/tool/clip_frac") for p in pats)
    assert any(p.match("train/tokens/text/tis/mismatch_abs") for p in pats)
    assert not any(p.match("train/nonsense_metric") for p in pats)  # a new built-in metric must be written down


@pytest.mark.slow
def test_every_logged_metric_is_defined(tmp_path):
    from engine import trainer

    write_dataset("zoom", 12, str(tmp_path / "data"), seed=3)
    data = str(tmp_path / "data" / "data.jsonl")
    cfg = build_config(Config, toml_path=ROOT / "configs" / "zoom_tools.toml", overrides=[
        "--data.train", data, "--data.eval", data, "--data.num_eval_examples", "4", "--train.out_dir",
        str(tmp_path / "run"), "--train.threads", "1", "--train.tensorboard", "false", "--train.stage", "sft,rl",
        "--sft.steps", "2", "--sft.final_steps", "0", "--sft.final_train", "", "--rl.steps", "2",
        "--rollout.prompts_per_step", "2", "--rollout.group_size", "2", "--algo.kl_beta", "0.04",
        "--algo.num_updates", "2", "--algo.tis_cap", "2", "--train.eval_every", "1", "--train.sample_every", "1",
        "--data.overlong", "truncate"])
    trainer.run(cfg)
    run = tmp_path / "run"
    keys = {k for line in open(run / "metrics.jsonl") for k in json.loads(line) if k != "step"}
    keys |= set(json.loads((run / "summary.json").read_text()))
    assert {"tools/target_hit_rate", "train/kl", "train/tis/mismatch_abs", "eval/accuracy"} <= keys
    pats = documented()
    missing = sorted(k for k in keys if not any(p.match(k) for p in pats))
    assert not missing, f"docs/METRICS.md does not define: {', '.join(missing)}"
