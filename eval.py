"""Evaluate a model on held-out data and leave a record a person can read: metrics, predictions, an HTML report.

    python eval.py --model.path runs/demo                                    # a run: asked as it was trained
    python eval.py --model.path runs/demo/checkpoints/step_000072 --out runs/ev72      # one of its checkpoints
    python eval.py --config configs/demo.toml --model.path runs/tiny-qwen2_5_vl        # a plain model folder
    make eval ARGS="--model.path runs/demo"

--model.path may be a model folder, a run's checkpoint folder, a LoRA adapter or checkpoint (merged on the fly) or
a run folder (its merged/ export or latest checkpoint; engine/setup/model_source.py). A model from a run is asked
with the run's own resolved config.toml (prompt, tools, limits, rewards, held-out data: the run's final evaluation
again); --config and flags override it, and every setting that then changes how it is asked or scored is printed
(engine/setup/layers.py). A plain model folder uses the defaults and --config. The held-out data is data.eval, or
the part of data.train that data.eval_fraction holds out; when the model's run trained on some of it, the count
is printed and kept as eval_overlaps_train. Writes into --out (default: RUN/eval when the model came from a run,
else runs/eval): metrics.json, predictions.jsonl (question, reference, answer, reward parts, tool calls, boxes,
image paths), images/ (originals and crops) and index.html (plots, the run's training curves, the examples with
their crops and boxes drawn), which opens from disk.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from train import split_args


def training_overlap(run_cfg, examples) -> int | None:
    """How many of `examples` the model's run trained on (None, said in one line, when that cannot be told)."""
    from engine.setup.data_setup import eval_overlap, load_sft_final, load_train

    if run_cfg is None:
        print("eval: the model is not from a run: whether it trained on these examples is not checked")
        return None
    try:
        train = load_train(run_cfg, verbose=False)
        if run_cfg.sft.final_train and "sft" in run_cfg.train.stage.split(","):
            train += load_sft_final(run_cfg, verbose=False)
    except ValueError as exc:
        print(f"eval: the run's training data cannot be read here ({exc}): overlap with it not checked")
        return None
    return eval_overlap(train, examples, who="eval")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--out", default="", help="folder for the report (default RUN/eval, or runs/eval)")
    own.add_argument("--max-shown", type=int, default=50, help="examples drawn in index.html (all are in "
                                                                  "predictions.jsonl)")
    args, rest = own.parse_known_args(argv)
    from engine.setup.layers import config_for_model

    try:
        cfg, notes, run_cfg = config_for_model(None, *split_args(rest, __doc__.split("\n\n")[0], (own,)), "eval")
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    for line in notes:
        print(line)
    import torch

    from engine.setup.data_setup import held_out_fraction, load_eval
    from engine.setup.limits import check_token_limits
    from engine.report.eval_report import write_report
    from engine.report.evaluate import evaluate, headline, metric_caveats
    from engine.setup.model_source import load_any
    from engine.rollout.tool_calls import make_protocol
    from models.tiny import tiny_model_dir
    from rewards.setup import setup_rewards

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if not cfg.data.eval and not held_out_fraction(cfg):
            raise ValueError("no held-out data: set data.eval (python -m data.check PATH tells the format), or "
                             "data.eval_fraction to hold out part of data.train")
        if cfg.data.eval and not Path(cfg.data.eval).exists():
            raise ValueError(f"data.eval {cfg.data.eval} does not exist: write it first (the demo's: make demo-data; "
                             "a synthetic task: python -m data.synth TASK --n N --out DIR)")
        examples = load_eval(cfg)
        overlap = training_overlap(run_cfg, examples)
        path = cfg.model.path or tiny_model_dir(cfg.model.tiny_arch, seed=cfg.train.seed)
        vlm, source = load_any(path, dtype=cfg.model.dtype, device=device,
                               attn_implementation=cfg.model.attn_implementation, box_frame=cfg.model.box_frame or None,
                               min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
        check_token_limits(examples, vlm, cfg, what="held-out", targets=False)
        where = cfg.data.eval or f"data.eval_fraction {held_out_fraction(cfg):g} of {cfg.data.train}"
        print(f"model: {source.describe()}; {len(examples)} held-out examples from {where}")
        # the judge, sentence embedder and model scorer, exactly as training scores them
        scorer = setup_rewards(cfg.reward, vlm, dtype=cfg.model.dtype, device=device)
        protocol = make_protocol(cfg.rollout.protocol, vlm, tools=cfg.rollout.tools)
        result = evaluate(vlm, examples, cfg, protocol, scorer=scorer, keep_trajectories=True)
        summary = headline(result.metrics, cfg.eval.metrics)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if overlap is not None:
        result.metrics["eval_overlaps_train"] = overlap
    out = Path(args.out) if args.out else (source.run_dir / "eval" if source.run_dir else Path("runs/eval"))
    page = write_report(out, result, title=f"evaluation of {source.describe()}",
                        subtitle=f"data {where}, protocol {cfg.rollout.protocol or 'none'}, greedy",
                        box_frame=vlm.family.box_frame, run_dir=source.run_dir, max_examples=args.max_shown,
                        headline=cfg.eval.metrics)
    print(json.dumps(result.metrics, indent=2))
    print(f"held-out: {summary} on {result.metrics['num_examples']} examples")
    for note in metric_caveats(cfg):
        print(note)
    print(f"wrote {out}/metrics.json, {out}/predictions.jsonl and the report {page}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for SIGINT, no traceback
        print("\nSIGINT: stopped", file=sys.stderr)
        sys.exit(130)
