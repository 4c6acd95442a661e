"""Held-out evaluation: greedy answers (tools as configured), scored with the reward functions.

    result = evaluate(vlm, examples, cfg, protocol)   # result.metrics["accuracy"], result.records
    headline(result.metrics, cfg.eval.metrics)       # "accuracy 0.810" (grounding: "iou 0.412, iou50 0.375")

Under torchrun each rank answers a contiguous share of the examples inside `unsharded` (greedy decoding
stops at different tokens on different ranks); the records and per-example scores are gathered in rank
order, so every rank gets the metrics and records one process would compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from engine.runtime import distributed as D
from engine.rollout.rollout import rollout
from engine.algo.step import reward_context, score
from engine.rollout.trajectory import build_prompt
from engine.setup.limits import system_prompt  # noqa: F401 (the one definition; re-exported)
from models.load import VLM
from rewards.format import extract_answer
from rewards.grounding import box_record


@dataclass
class EvalResult:
    metrics: dict[str, float]  # each of cfg.eval.metrics, each reward of the mix, "tool_call_rate", "num_examples"
    records: list[dict]  # per example: question, reference, answer, response, reward parts, tool calls
    trajectories: list = field(default_factory=list)  # with keep_trajectories (one process): images and calls


def example_record(t, parts: dict[str, float], *, reward: float | None = None, weights: dict | None = None,
                   ctx=None) -> dict:
    """What a person reads about one answered example (JSON-ready; images are the report's business): the
    weighted `reward` and its `weights` beside each part, the prefill the response continues, and, for an example
    with reference boxes, those boxes and the answer's box in original pixels (rewards.grounding.box_record, read
    with the trajectory's reward context `ctx`)."""
    ex = t.prompt.example
    boxes = box_record(t.text, ex, ctx) if ctx is not None else {}
    return {"origin": ex.origin, "question": ex.question, "reference": ex.answer, "answer": extract_answer(t.text),
            "prefill": t.prompt.prefill, "response": t.text, "stop": t.stop,
            **({"reward": reward} if reward is not None else {}), **parts,
            **({"weights": weights} if weights is not None else {}), **boxes, "num_tool_calls": len(t.tool_calls),
            "tool_calls": [{"name": c.name, "args": c.args, "ok": c.ok, "error": c.error,
                            "box_pixels": c.box_pixels} for c in t.tool_calls]}


def prompts_for(examples, vlm: VLM, cfg):
    d = cfg.data
    system = system_prompt(cfg, vlm)
    return [build_prompt(e, vlm, system_prompt=system, question_template=d.question_template,
                         prefill=d.prefill, short_side=d.image_short_side) for e in examples]


@torch.no_grad()
def evaluate(vlm: VLM, examples, cfg, protocol, *, batch_size: int = 32, scorer=None,
             dist: D.Dist | None = None, keep_trajectories: bool = False, should_stop=None) -> EvalResult:
    """Greedy answers to `examples`, scored by the reward mix and by every reward named in cfg.eval.metrics.
    `keep_trajectories` (one process): the result also holds the trajectories (images, crops) for a report.
    `should_stop`: see engine.rollout.rollout.rollout (a signal stops the evaluation with StopRequested)."""
    if not examples:
        raise ValueError("no held-out examples to evaluate: set data.eval")
    dist = dist or D.Dist()
    mine = [examples[i] for i in D.shard_indices(len(examples), dist.rank, dist.world)]
    was_training = vlm.model.training
    vlm.model.eval()
    settings = replace(cfg.rollout, group_size=1, temperature=0.0)  # greedy, one answer per question
    scored = _with_metrics(cfg, cfg.eval.metrics)
    parts: dict[str, list[float]] = {}
    records, tool_rate, kept = [], 0, []
    with D.unsharded(vlm.model):  # no collectives inside: ranks may make different numbers of forwards
        for start in range(0, len(mine), batch_size):
            prompts = prompts_for(mine[start:start + batch_size], vlm, cfg)
            trajs = rollout(vlm, prompts, settings, protocol=protocol, should_stop=should_stop)
            rewards = score(trajs, vlm, scored, scorer)
            for name, values in rewards.parts.items():
                parts.setdefault(name, []).extend(values)
            tool_rate += sum(bool(t.tool_calls) for t in trajs)
            for i, t in enumerate(trajs):
                records.append(example_record(t, {k: v[i] for k, v in rewards.parts.items()}, reward=rewards.total[i],
                                              weights=cfg.reward.weights, ctx=reward_context(t, vlm)))
            kept += trajs if keep_trajectories else []
    vlm.model.train(was_training)
    shares = D.all_gather_objects((parts, records, tool_rate))  # rank order = example order
    names = next((list(p) for p, _, _ in shares if p), [])  # the reward mix: the same on every rank that scored
    parts = {name: [x for p, _, _ in shares for x in p.get(name, [])] for name in names}
    records = [r for _, recs, _ in shares for r in recs]
    n = len(examples)
    metrics = {name: sum(v) / n for name, v in parts.items()}
    metrics["tool_call_rate"] = sum(t for _, _, t in shares) / n
    metrics["num_examples"] = n
    return EvalResult(metrics=metrics, records=records, trajectories=kept if dist.world == 1 else [])


def _with_metrics(cfg, metrics: list[str]):
    """The config with each eval metric missing from the reward mix added at weight 0 (scored, not summed)."""
    missing = {m: 0.0 for m in metrics if m not in cfg.reward.weights}
    if not missing:
        return cfg
    return replace(cfg, reward=replace(cfg.reward, weights={**cfg.reward.weights, **missing}))


def headline(metrics: dict[str, float], names: list[str]) -> str:
    """The named metrics as one phrase, in order: "iou 0.412, iou50 0.375"."""
    return ", ".join(f"{name} {metrics[name]:.3f}" for name in names)


def metric_caveats(cfg) -> list[str]:
    """One line per reported metric whose meaning depends on a default the user may not know, said where the number
    is read (eval.py, the trainer's evaluations): today the reasoning Match-F1 without a sentence encoder."""
    notes = []
    if "reasoning" in cfg.eval.metrics and not cfg.reward.embedder_path:
        notes.append("note: reasoning is Match-F1 with steps matched by word overlap (F1 >= 0.5, rewards/reasoning.py):"
                     " templated steps that differ in a word or two count as matched; for a semantic match set "
                     "--reward.embedder_path to a local sentence encoder")
    return notes

