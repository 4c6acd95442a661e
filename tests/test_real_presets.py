"""The presets for real checkpoints (configs/qwen*.toml): each parses as a config for its model family, and the
memory planner's estimate its header quotes is what the planner prints for it today (the header names the command).
"""

import re
import shlex
from pathlib import Path

import pytest

from engine.config import Config, build_config
from engine.setup.memory import main as planner

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "configs").glob("qwen*.toml"))


def test_there_are_presets_for_real_checkpoints():
    assert {p.stem for p in PRESETS} >= {"qwen2_5_vl_3b", "qwen2_5_vl_7b", "qwen3_vl_8b"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_the_headers_planner_estimate_is_the_planners(preset, capsys):
    cfg = build_config(Config, toml_path=preset)
    assert cfg.train.mixed_precision == "bf16" and cfg.model.path.startswith("/models/") and cfg.rl.lr <= 1e-5
    header = preset.read_text(encoding="utf-8").split("\n[")[0]
    command = re.search(r"\(python -m engine\.setup\.memory ([^)]*)\)", header.replace("\n# ", " "))
    quoted = float(re.search(r"([\d.]+) GiB per GPU", header).group(1))
    assert planner(shlex.split(command.group(1))) == 0
    printed = float(re.search(r"estimated peak\s+([\d.]+) GiB", capsys.readouterr().out).group(1))
    assert printed == pytest.approx(quoted, abs=0.051), f"{preset.name}: the header says {quoted} GiB, the planner {printed}"


@pytest.mark.slow
def test_the_gpu_install_resolves_every_dependency_around_the_installed_torch(tmp_path):
    """scripts/install_gpu.sh, as far as a CPU allows: pip resolves requirements.txt from scratch (--ignore-installed,
    --dry-run) with torch held at the version this Python has; every pin and what it needs at run time is in the
    plan (unlike --no-deps), and torch is the installed one, never another."""
    import json
    import subprocess
    import sys

    import torch

    report = tmp_path / "report.json"
    done = subprocess.run(["bash", "scripts/install_gpu.sh", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(report)], cwd=ROOT, env={"GPU_PY": sys.executable, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert plan["torch"] == torch.__version__
    pins = [line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")]
    assert all(plan.get(name.lower()) == version for name, version in pins if name != "torch"), plan
    assert len(plan) > len(pins) + 10  # their own dependencies come too (huggingface_hub, regex, ...)
