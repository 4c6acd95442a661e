"""Learning signals of an RL step: what says whether GRPO can learn from this batch, above all on tool trajectories.

    traj.token_class = classify_tokens(traj.ids, traj.mask, tokenizer.batch_decode)   # engine/rollout/rollout.py: finish
    metrics |= class_metrics(class_K, adv_K=..., entropy_K=..., loss_metrics=...)     # engine/algo/objective.py, per row
    record = rollout_record(trajs, rewards_B)                                          # engine/algo/step.py, per rank
    m |= reduce_rollout_records(records); finalize_class_metrics(m)                    # engine/algo/step.py, per step

Token classes (TOKEN_CLASSES) come from the text the policy wrote, so they need no knowledge of a task: "tool" is
every sampled token of a tool call (`<tool_call>...</tool_call>` or `<tool>...</tool>`, tags included: the box
numbers, above all), "answer" every token of `<answer>...</answer>` (an unclosed one runs to the end), "text" the
rest (thinking, the end-of-turn token). Per class and step (TensorBoard and metrics.jsonl, as train/tokens/...):
- share: the class's fraction of the step's loss tokens;
- adv_mean, adv_abs: the mean advantage and mean |advantage| its tokens carry into the loss (a class the loss
  mask or the advantage never reaches shows share 0 or adv_abs 0);
- entropy: the policy's mean entropy there (near 0: a group's samples agree, there is nothing to choose between);
- clip_frac, clip_frac_high, clip_frac_low: the loss's own clip fractions (engine/algo/losses.py) over the class's tokens.
  With algo.num_updates = 1 the ratio is exactly 1 and they are 0 by construction: the clip only acts from the
  second update on a rollout.
Per step, from the rollouts (as groups/... and tools/...):
- groups/informative_fraction: groups whose rewards are not all equal (the others get advantage 0 everywhere);
  groups/reward_std: the mean within-group reward std;
- tools/target_hit_rate: trajectories whose best working crop has IoU > 0.5 with the example's metadata
  target_box (rewards/tool_target.py), over the trajectories whose example has one; tools/target_iou: the mean
  best IoU; groups/hit_informative_fraction: groups whose samples do not all hit or all miss (where a
  correctness reward can tell a good crop from a bad one).

Reduction: class metrics leave the row as sums over the class's tokens divided by the row's token count, so the
step's usual token-weighted mean of row metrics (engine/algo/step.py) gives (sum over the class's tokens) / (all loss
tokens) exactly; finalize_class_metrics then divides by the class's share. Shapes: K loss tokens of one row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.rollout.token_classes import TOKEN_CLASSES
from rewards.tool_target import crop_target_iou, is_hit

_PREFIX = "tokens/"


def class_metrics(class_K: torch.Tensor, *, adv_K: torch.Tensor, token_metrics: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """Per token class, detached sums over its tokens divided by the row's token count K (see the reduction note
    above): its share, the advantage it carries, and each per-token metric of the row (the loss's own: clip
    indicators, ratio, KL; and the entropy), reduced from the one loss call."""
    n = max(class_K.numel(), 1)
    out: dict[str, torch.Tensor] = {}
    adv_K = adv_K.detach().float()
    for cls, name in enumerate(TOKEN_CLASSES):
        keep_K = class_K.to(adv_K.device) == cls
        out[f"{_PREFIX}{name}/share"] = keep_K.sum().float() / n
        out[f"{_PREFIX}{name}/adv_mean"] = torch.where(keep_K, adv_K, 0.0).sum() / n
        out[f"{_PREFIX}{name}/adv_abs"] = torch.where(keep_K, adv_K.abs(), 0.0).sum() / n
        for key, value_K in token_metrics.items():
            out[f"{_PREFIX}{name}/{key}"] = torch.where(keep_K, value_K.float(), 0.0).sum() / n
    return out


def finalize_class_metrics(metrics: dict, prefix: str = "train/") -> None:
    """In place: turn the step's class sums over all loss tokens into means over each class's tokens. A class
    with no tokens this step keeps its share (0) and drops its means (they are undefined, not 0)."""
    for name in TOKEN_CLASSES:
        head = f"{prefix}{_PREFIX}{name}/"
        share = metrics.get(f"{head}share")
        if share is None:
            continue
        share = float(share)
        for key in [k for k in metrics if k.startswith(head) and k != f"{head}share"]:
            if share > 0:
                metrics[key] = float(metrics[key]) / share
            else:
                del metrics[key]


def rollout_record(trajs, rewards_B: torch.Tensor) -> dict:
    """This rank's plain counts for the step's group and crop-target metrics (summed over ranks by
    reduce_rollout_records). Groups never span ranks (engine/algo/step.py), so per-rank group counts add up."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(trajs):
        groups.setdefault(t.group, []).append(i)
    ious = [crop_target_iou(t.prompt.example, t.tool_calls) for t in trajs]
    rec = {"groups": len(groups), "informative": 0, "reward_std": 0.0, "targets": 0, "hits": 0, "iou": 0.0,
           "hit_groups": 0, "hit_informative": 0}
    for idx in groups.values():
        r = rewards_B[idx]
        rec["informative"] += int(r.max() > r.min())
        rec["reward_std"] += float(r.std(unbiased=False))
        hits = [is_hit(ious[i]) for i in idx if ious[i] is not None]
        if hits:
            rec["hit_groups"] += 1
            rec["hit_informative"] += int(0 < sum(hits) < len(hits))
    for v in ious:
        if v is not None:
            rec["targets"] += 1
            rec["hits"] += int(is_hit(v))
            rec["iou"] += v
    return rec


def reduce_rollout_records(records: list[dict]) -> dict[str, float]:
    """The step's group and crop-target metrics from every rank's rollout_record."""
    total = {k: sum(r[k] for r in records) for k in records[0]}
    m = {"groups/informative_fraction": total["informative"] / max(total["groups"], 1),
         "groups/reward_std": total["reward_std"] / max(total["groups"], 1)}
    if total["targets"]:  # only data that knows where to look has these
        m["tools/target_hit_rate"] = total["hits"] / total["targets"]
        m["tools/target_iou"] = total["iou"] / total["targets"]
        m["groups/hit_informative_fraction"] = total["hit_informative"] / max(total["hit_groups"], 1)
    return m


# ----------------------------------------------------------------------------------------------- the step's metrics

def rank_record(trajs, rewards, adv_B, kept, update, times: dict[str, float]) -> dict:
    """What this rank contributes to the step's metrics: small, picklable, per trajectory."""
    cpu = lambda t: t.detach().cpu()  # noqa: E731  (sync point, once per step)
    if update is not None:
        update = {**update, "sums": {k: cpu(v) for k, v in update["sums"].items()},
                  **{k: cpu(update[k]) for k in ("loss", "grad_norm", "lr")}}
    return {"reward": list(rewards.total), "parts": rewards.parts, "errors": rewards.errors, "adv": cpu(adv_B),
            "kept": len(kept), "sampled": [t.num_sampled for t in trajs], "length": [len(t.ids) for t in trajs],
            "stop": [t.stop for t in trajs], "calls": [[(c.name, c.ok) for c in t.tool_calls] for t in trajs],
            "update": update, "time": times,
            "signals": rollout_record(trajs, torch.tensor(rewards.total))}  # groups, crops on target


def step_metrics(records: list[dict]) -> dict:
    """The step's metrics from every rank's record (rank order), as one process would compute them over the
    whole batch. Update metrics are token-weighted over all ranks; times are the mean over ranks."""
    cat = lambda key: [x for r in records for x in r[key]]  # noqa: E731
    reward, sampled, stop, calls = cat("reward"), cat("sampled"), cat("stop"), cat("calls")
    adv_B, n = torch.cat([r["adv"] for r in records]), len(reward)
    m = {}
    updates = [r["update"] for r in records if r["update"] is not None]
    if updates:
        sums: dict[str, torch.Tensor] = {}
        for u in updates:
            for k, v in u["sums"].items():
                sums[k] = sums[k] + v if k in sums else v
        total = sum(u["tokens"] for u in updates)
        m = {f"train/{k}": v / max(total, 1) for k, v in sums.items()}  # token-weighted means of per-row metrics
        m["train/loss"] = sum(u["loss"] for u in updates)
        m["train/grad_norm"], m["train/lr"] = updates[0]["grad_norm"], updates[0]["lr"]  # the same on every rank
        finalize_class_metrics(m)  # per token class: sums over all loss tokens -> means over the class's tokens
        m["train/skipped_update"] = float(updates[0]["skipped"])  # decided the same on every rank
    m["reward/total"] = sum(reward) / n
    m["reward/std"] = float(torch.tensor(reward).std()) if n > 1 else 0.0
    for name in records[0]["parts"]:
        m[f"reward/{name}"] = sum(x for r in records for x in r["parts"][name]) / n
    for r in records:
        for name, count in r["errors"].items():
            m[f"reward_errors/{name}"] = m.get(f"reward_errors/{name}", 0) + count
    m["adv/mean"], m["adv/std"] = float(adv_B.mean()), float(adv_B.std()) if n > 1 else 0.0
    m["adv/abs_max"] = float(adv_B.abs().max())
    m["batch/kept_fraction"] = sum(r["kept"] for r in records) / n
    m.update(reduce_rollout_records([r["signals"] for r in records]))
    m["length/response_mean"] = sum(sampled) / n
    m["length/total_mean"] = sum(cat("length")) / n
    m["stop/eos_rate"] = sum(s == "eos" for s in stop) / n
    m["stop/truncated_rate"] = sum(s == "length" for s in stop) / n
    m["tools/call_rate"] = sum(bool(c) for c in calls) / n
    m["tools/calls_per_traj"] = sum(len(c) for c in calls) / n
    flat = [c for cs in calls for c in cs]
    m["tools/success_rate"] = sum(ok for _, ok in flat) / len(flat) if flat else 0.0
    for name, _ in flat:
        m[f"tools/count_{name}"] = m.get(f"tools/count_{name}", 0) + 1
    for key in records[0]["time"]:
        m[key] = sum(r["time"].get(key, 0.0) for r in records) / len(records)
    m["throughput/sampled_tokens_per_s"] = sum(sampled) / max(m.get("time/rollout", 0.0), 1e-9)
    return m
