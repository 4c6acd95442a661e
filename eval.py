"""Evaluate a model on held-out data and leave a record a person can read: metrics, predictions, an HTML report.

    python eval.py --config configs/demo.toml --model.path runs/demo                            # a run folder
    python eval.py --config configs/demo.toml --model.path runs/demo/checkpoints/step_000072     # a checkpoint
    python eval.py --config configs/demo.toml --model.path runs/tiny-qwen2_5_vl --out runs/eval  # a model folder
    make eval ARGS="--config configs/demo.toml --model.path DIR"

--model.path may be a model folder, a run's checkpoint folder, a LoRA adapter or checkpoint (merged into its base on
the fly) or a run folder (its merged/ export or latest checkpoint; engine/setup/model_source.py). Only data.eval is read
(no training data). Writes into --out (default: RUN/eval when the model came from a run, else runs/eval):
metrics.json, predictions.jsonl (question, reference, answer, reward parts, tool calls, image paths), images/
(originals and crops) and index.html (plots, the run's training curves, the examples with their crops drawn),
which opens from disk.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from train import parse


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--out", default="", help="folder for the report (default RUN/eval, or runs/eval)")
    own.add_argument("--max-shown", type=int, default=50, help="examples drawn in index.html (all are in "
                                                                  "predictions.jsonl)")
    args, rest = own.parse_known_args(argv)
    try:
        cfg = parse(rest, description=__doc__.split("\n\n")[0], parents=(own,))
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    import torch

    from engine.setup.data_setup import load_eval
    from engine.report.eval_report import write_report
    from engine.report.evaluate import evaluate, headline
    from engine.setup.model_source import load_any
    from engine.rollout.tool_calls import make_protocol
    from models.tiny import tiny_model_dir
    from rewards.setup import setup_rewards

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if not cfg.data.eval:
            raise ValueError("data.eval is empty: point it at held-out data (python -m data.check PATH tells the "
                             "format)")
        if not Path(cfg.data.eval).exists():
            raise ValueError(f"data.eval {cfg.data.eval} does not exist: write it first (the demo's: make demo-data; "
                             "a synthetic task: python -m data.synth TASK --n N --out DIR)")
        examples = load_eval(cfg)
        path = cfg.model.path or tiny_model_dir(cfg.model.tiny_arch, seed=cfg.train.seed)
        vlm, source = load_any(path, dtype=cfg.model.dtype, device=device,
                               attn_implementation=cfg.model.attn_implementation, box_frame=cfg.model.box_frame or None,
                               min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
        print(f"model: {source.describe()}; {len(examples)} held-out examples from {cfg.data.eval}")
        # the judge, sentence embedder and model scorer, exactly as training scores them
        scorer = setup_rewards(cfg.reward, vlm, dtype=cfg.model.dtype, device=device)
        protocol = make_protocol(cfg.rollout.protocol, vlm, tools=cfg.rollout.tools)
        result = evaluate(vlm, examples, cfg, protocol, scorer=scorer, keep_trajectories=True)
        summary = headline(result.metrics, cfg.eval.metrics)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (source.run_dir / "eval" if source.run_dir else Path("runs/eval"))
    page = write_report(out, result, title=f"evaluation of {source.describe()}",
                        subtitle=f"data {cfg.data.eval}, protocol {cfg.rollout.protocol or 'none'}, greedy",
                        box_frame=vlm.family.box_frame, run_dir=source.run_dir, max_examples=args.max_shown)
    print(json.dumps(result.metrics, indent=2))
    print(f"held-out: {summary} on {result.metrics['num_examples']} examples")
    print(f"wrote {out}/metrics.json, {out}/predictions.jsonl and the report {page}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for SIGINT, no traceback
        print("\nSIGINT: stopped", file=sys.stderr)
        sys.exit(130)
