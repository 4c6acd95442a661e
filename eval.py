"""Evaluate a model folder (or a run's checkpoint) on held-out data: greedy answers, reward-scored.

    python eval.py --config configs/demo.toml --model.path runs/demo/checkpoints/step_000060/model
    make eval ARGS="--config configs/demo.toml"
"""

from __future__ import annotations

import json
import sys

from train import parse


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse(sys.argv[1:] if argv is None else argv, description=__doc__.split("\n\n")[0])
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from engine.evaluate import evaluate
    from engine.tool_protocols import make_protocol
    from engine.data_setup import load_eval
    from engine.trainer import load_policy
    from rewards.setup import setup_rewards

    try:
        vlm = load_policy(cfg)
        examples = load_eval(cfg)
        # the judge, sentence embedder and model scorer, exactly as training scores them
        scorer = setup_rewards(cfg.reward, vlm, dtype=cfg.model.dtype, device=str(next(vlm.model.parameters()).device))
        result = evaluate(vlm, examples, cfg, make_protocol(cfg.rollout.protocol, vlm, tools=cfg.rollout.tools), scorer=scorer)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
