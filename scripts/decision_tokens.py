"""Where an RL step's update goes on a crop-then-answer task: the decision tokens (the crop box's first x and y
digits, which pick the quadrant) against every other loss token. No weight changes: rollouts of the run's RL
setting from a checkpoint, then one backward per token class of the run's own policy loss.

    python scripts/decision_tokens.py --config configs/zoom_tools.toml --model.path SFT/model --steps 4 \
        --train.out_dir /tmp/dt [any train.py flag]

Prints, over `--steps` batches of rollout.prompts_per_step prompts × group_size samples: the classes' share of the
loss tokens, their entropy (nats, at the rollout temperature), mean |advantage|, sign balance; how often a group
mixes on- and off-target crops; accuracy given a hit / a miss; the advantage the decision tokens get when the crop
missed but the answer was right (right by guessing); and each class's share of the gradient (its projection on the
full gradient, g_c·g / |g|², shares sum to 1) and its own gradient norm.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict

import torch

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__file__)))

from engine.algo.step import score, step_advantages  # noqa: E402
from engine.forward.packing import pack, row_logps  # noqa: E402
from engine.report.evaluate import prompts_for  # noqa: E402
from engine.rollout.rollout import rollout  # noqa: E402
from engine.setup.layers import layered_config  # noqa: E402
from engine.trainer import Run  # noqa: E402
from rewards.tool_target import crop_target_iou, is_hit  # noqa: E402

CLASSES = ("decision", "tool_other", "answer", "text")
_BOX = re.compile(r"<tool_call>.*?\[\s*(\d+)\s*,\s*(\d+)", re.DOTALL)


def decision_offsets(traj, decode) -> set[int]:
    """Positions (in the trajectory) of the sampled tokens holding the first digit of the first call's x1 and y1."""
    sampled = [k for k, m in enumerate(traj.mask) if m]
    pieces = decode([[traj.ids[k]] for k in sampled])
    text = "".join(pieces)
    match = _BOX.search(text)
    if match is None:
        return set()
    starts, out, at = {match.start(1), match.start(2)}, set(), 0
    for k, piece in zip(sampled, pieces):
        if any(at <= s < at + len(piece) for s in starts):
            out.add(k)
        at += len(piece)
    return out


def token_classes(row, trajs, decision) -> torch.Tensor:
    """CLASSES index of each kept token of a packed row (the engine's tool class split into decision / other)."""
    engine_cls = row.class_K.tolist()  # 0 tool, 1 answer, 2 text
    out = []
    for c, s, o in zip(engine_cls, row.seq_K.tolist(), row.offset_K.tolist()):
        if o in decision[s]:
            out.append(0)
        else:
            out.append({0: 1, 1: 2}.get(c, 3))
    return torch.tensor(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=4)
    args, flags = ap.parse_known_args(argv)
    cfg = layered_config(args.config, flags + ["--train.stage", "rl", "--train.overwrite", "true"])
    run = Run(cfg)
    cfg, vlm = run.cfg, run.vlm
    model = vlm.model
    decode = vlm.tokenizer.batch_decode
    gen = torch.Generator().manual_seed(cfg.train.seed + 7)
    n = cfg.rollout.prompts_per_step
    tot = defaultdict(float)
    ent = defaultdict(list)
    adv_c = defaultdict(list)
    grad_share = defaultdict(list)
    grad_norm = defaultdict(list)
    guess_adv, hit_adv = [], []
    groups_mixed = groups = 0
    right_hit = hits = right_miss = misses = 0
    p_target = []
    for step in range(args.steps):
        idx = torch.randperm(len(run.train_set), generator=gen)[:n].tolist()
        examples = [run.train_set[i] for i in idx]
        model.eval()
        with torch.no_grad():
            trajs = rollout(vlm, prompts_for(examples, vlm, cfg), cfg.rollout, protocol=run.protocol, generator=gen)
        model.train()
        rewards = score(trajs, vlm, cfg)
        rewards_B = torch.tensor(rewards.total, dtype=torch.float32)
        group_B = torch.tensor([t.group for t in trajs])
        adv_B = step_advantages(rewards_B, group_B, cfg.algo)
        acc = rewards.parts.get("accuracy", [0.0] * len(trajs))
        hit = [is_hit(crop_target_iou(t.prompt.example, t.tool_calls) or 0.0) for t in trajs]
        for g in set(group_B.tolist()):
            members = [i for i in range(len(trajs)) if trajs[i].group == g]
            groups += 1
            groups_mixed += int(0 < sum(hit[i] for i in members) < len(members))
        decision = [decision_offsets(t, decode) for t in trajs]
        for i in range(len(trajs)):
            right = acc[i] > 0.5
            if hit[i]:
                hits += 1
                right_hit += right
                if right:
                    hit_adv.append(float(adv_B[i]))
            else:
                misses += 1
                right_miss += right
                if right and decision[i]:
                    guess_adv.append(float(adv_B[i]))
        rows = pack(trajs, cfg.optim.micro_batch_tokens)
        num_tokens = sum(t.num_sampled for t in trajs)
        cls_rows = [token_classes(r, trajs, decision) for r in rows]
        with torch.no_grad():
            for r, cls in zip(rows, cls_rows):
                logp, entropy = row_logps(model, r, temperature=cfg.rollout.temperature, with_entropy=True)
                a = adv_B[r.seq_K]
                for c, name in enumerate(CLASSES):
                    keep = cls == c
                    tot[name] += int(keep.sum())
                    ent[name] += entropy[keep].tolist()
                    adv_c[name] += a[keep].tolist()
        # the policy gradient at ratio 1 (the run's loss at num_updates 1, token_mean), whole and per class
        params = [p for p in model.parameters() if p.requires_grad]
        grads = {name: None for name in ("all",) + CLASSES}
        for r, cls in zip(rows, cls_rows):
            logp, _ = row_logps(model, r, temperature=cfg.rollout.temperature)
            a = adv_B[r.seq_K]
            for c, name in [(-1, "all")] + list(enumerate(CLASSES)):
                keep = torch.ones_like(cls, dtype=torch.bool) if c < 0 else cls == c
                loss = -(torch.where(keep, a * logp, 0.0)).sum() / num_tokens
                gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                flat = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(gs, params)])
                grads[name] = flat if grads[name] is None else grads[name] + flat
        model.zero_grad(set_to_none=True)
        g = grads["all"]
        for name in CLASSES:
            grad_share[name].append(float(grads[name] @ g / (g @ g)))
            grad_norm[name].append(float(grads[name].norm()))
        grad_norm["all"].append(float(g.norm()))
        print(f"batch {step + 1}/{args.steps}: hit rate {sum(hit) / len(hit):.3f}", flush=True)
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    total = sum(tot.values())
    print(f"\n{args.steps} batches of {n} prompts x {cfg.rollout.group_size} samples at T {cfg.rollout.temperature}")
    print("class        share   entropy(mean/median)  |adv|   adv>0 / adv<0   grad share   grad norm")
    for name in CLASSES:
        e = torch.tensor(ent[name] or [0.0])
        a = torch.tensor(adv_c[name] or [0.0])
        print(f"{name:11s} {tot[name] / total:6.3f}   {float(e.mean()):.3f} / {float(e.median()):.3f}"
              f"          {float(a.abs().mean()):.3f}   {float((a > 0).float().mean()):.2f} / "
              f"{float((a < 0).float().mean()):.2f}      {mean(grad_share[name]):+.3f}      {mean(grad_norm[name]):.4f}")
    print(f"full gradient norm {mean(grad_norm['all']):.4f}")
    allent = torch.tensor([x for name in CLASSES for x in ent[name]])
    thr = float(torch.quantile(allent, 0.8))
    top = {name: sum(x >= thr for x in ent[name]) for name in CLASSES}
    print(f"top-20% entropy threshold {thr:.3f}; of those tokens: "
          + ", ".join(f"{k} {v / max(sum(top.values()), 1):.2f}" for k, v in top.items())
          + f"; decision tokens above it: {top['decision'] / max(tot['decision'], 1):.2f}")
    print(f"groups mixing on- and off-target crops: {groups_mixed / groups:.3f}")
    print(f"accuracy given a hit {right_hit / max(hits, 1):.3f} ({hits}), given a miss {right_miss / max(misses, 1):.3f}"
          f" ({misses})")
    print(f"advantage of right answers: after a hit {mean(hit_adv):+.3f} ({len(hit_adv)}), after a miss (guessed) "
          f"{mean(guess_adv):+.3f} ({len(guess_adv)})")
    run.claim.release()


if __name__ == "__main__":
    main()
