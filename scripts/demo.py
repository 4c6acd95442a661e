"""The demo (`make demo`): a tiny Qwen2.5-VL learns the `colors` task on a laptop CPU.

Builds the tiny model (cached), writes held-out-separated synthetic data, runs configs/demo.toml (SFT warm-start
then GRPO), and prints held-out greedy accuracy after SFT and after RL. Results: runs/demo/summary.json.

    python scripts/demo.py [--out runs/demo] [extra train.py flags, e.g. --rl.steps 50]
    python scripts/demo.py --data-only      # only the data (make demo-data)
"""

from __future__ import annotations

import argparse
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
    parser = argparse.ArgumentParser(
        prog="python scripts/demo.py", description=__doc__.split("\n\n")[0],
        epilog="Any other flag goes to train.py (python train.py --help-config lists them), e.g. --rl.steps 50.")
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--data-only", action="store_true", help="only write the data (make demo-data) and exit")
    args, rest = parser.parse_known_args(argv)  # --help exits here, before anything is written
    make_data()
    if args.data_only:  # make demo-data: what `make eval` with configs/demo.toml reads
        return 0
    # The demo is made to be run again: a new run replaces the last one in its folder (train.overwrite), unless the
    # flags continue it (--resume / --train.resume) or say otherwise.
    again = [] if any(f.startswith(("--resume", "--train.resume", "--train.overwrite")) for f in rest) else [
        "--train.overwrite", "true"]
    cmd = [sys.executable, "train.py", "--config", "configs/demo.toml", "--train.out_dir", args.out, *again, *rest]
    print("running:", " ".join(cmd[1:]), flush=True)
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code != 0:
        return code  # train.py said why (2: a bad setting or data; 3: NaN updates; 130/143: stopped by a signal)
    summary = json.loads((ROOT / args.out / "summary.json").read_text())
    print(f"\nheld-out accuracy ({summary['num_eval_examples']} examples, greedy):")
    print(f"  after SFT: {summary['accuracy_after_sft']:.3f}")
    print(f"  after RL:  {summary['accuracy_after_rl']:.3f}  (gain {summary['accuracy_after_rl'] - summary['accuracy_after_sft']:+.3f})")
    print(f"  {summary['seconds']:.0f} s; final checkpoint: {summary['final_checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
