"""The demo (`make demo`): a tiny Qwen2.5-VL learns the `colors` task on a laptop CPU.

Builds the tiny model (cached), writes held-out-separated synthetic data, runs configs/demo.toml (SFT warm-start
then GRPO), and prints held-out greedy accuracy after SFT and after RL. Results: runs/demo/summary.json.

    python scripts/demo.py [--out runs/demo] [extra train.py flags, e.g. --rl.steps 50]
    python scripts/demo.py --data-only      # only the data (make demo-data)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = {"colors-train": (2000, 1), "colors-eval": (200, 2)}  # name -> (examples, seed); different seeds


def make_data() -> None:
    for name, (n, seed) in DATA.items():
        out = ROOT / "runs" / "data" / name
        if (out / "data.jsonl").exists() and sum(1 for _ in open(out / "data.jsonl")) == n:
            continue
        subprocess.run([sys.executable, "-m", "data.synth", "colors", "--n", str(n), "--out", str(out),
                        "--seed", str(seed)], check=True, cwd=ROOT)


def main(argv: list[str]) -> int:
    make_data()
    if argv == ["--data-only"]:  # make demo-data: what `make eval` with configs/demo.toml reads
        return 0
    out_dir = "runs/demo"
    if "--out" in argv:
        i = argv.index("--out")
        out_dir = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    cmd = [sys.executable, "train.py", "--config", "configs/demo.toml", "--train.out_dir", out_dir, *argv]
    print("running:", " ".join(cmd[1:]), flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        return 1
    summary = json.loads((ROOT / out_dir / "summary.json").read_text())
    print(f"\nheld-out accuracy ({summary['num_eval_examples']} examples, greedy):")
    print(f"  after SFT: {summary['accuracy_after_sft']:.3f}")
    print(f"  after RL:  {summary['accuracy_after_rl']:.3f}  (gain {summary['accuracy_after_rl'] - summary['accuracy_after_sft']:+.3f})")
    print(f"  {summary['seconds']:.0f} s; final checkpoint: {summary['final_checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
