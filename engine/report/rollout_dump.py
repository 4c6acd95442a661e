"""Write a sample of a step's rollouts to the run folder for inspection (`python -m tools.view RUN_DIR`).

    run_dir/rollouts/step_000010.jsonl   one JSON object per trajectory:
        {"step", "index", "question", "answer", "response", "reward", "parts": {name: value}, "advantage",
         "stop", "images": ["images/step_000010_0_0.png", ...] (relative to rollouts/; original first, then tool
         outputs), "box_frame": the frame of the calls' "args" boxes (pixels | resized | norm1000),
         "tool_calls": [{"name", "args" (model frame), "ok", "error", "box_pixels" (original pixels)}],
         "target_box"?: where a crop should look (original pixels, from the example's metadata),
         "crop_target_iou"?: the best working crop's IoU with it (rewards/tool_target.py),
         "prefill": the text the response continues (data.prefill), "weights"?: the reward mix,
         "reference_boxes"?, "predicted_box"?, "box_iou"?: an example with reference boxes, in original pixels
         (rewards.grounding.box_record)}

`rewards` and `adv_B` may be None (an SFT stage's targets, dumped so that every run has rollouts to view): the
records then carry no reward, parts or advantage.
"""

from __future__ import annotations

import json
from pathlib import Path

from rewards.grounding import box_record
from rewards.tool_target import crop_target_iou, target_box


def dump_rollouts(run_dir: str | Path, step: int, trajs, rewards=None, adv_B=None, *, box_frame: str = "",
                  max_items: int = 8, weights: dict | None = None, contexts: list | None = None) -> Path:
    """`contexts`: each trajectory's reward context (engine.algo.step.reward_context), for its boxes in pixels."""
    out = Path(run_dir) / "rollouts"
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / f"step_{step:06d}.jsonl"
    with open(path, "w") as f:
        for i, t in enumerate(trajs[:max_items]):
            images = []
            for k, image in enumerate(t.images):
                name = f"images/step_{step:06d}_{i}_{k}.png"
                image.save(out / name)
                images.append(name)
            scored = {} if rewards is None else {
                "reward": rewards.total[i], "parts": {name: values[i] for name, values in rewards.parts.items()}}
            record = {
                "step": step, "index": i, "question": t.prompt.example.question, "answer": t.prompt.example.answer,
                "prefill": t.prompt.prefill, "response": t.text, **scored,
                **({"advantage": float(adv_B[i])} if adv_B is not None else {}), "stop": t.stop,
                **({"weights": weights} if weights is not None else {}), "images": images,
                **({"box_frame": box_frame} if box_frame else {}),
                "tool_calls": [{"name": c.name, "args": c.args, "ok": c.ok, "error": c.error,
                                "box_pixels": c.box_pixels} for c in t.tool_calls],
                **(box_record(t.text, t.prompt.example, contexts[i]) if contexts is not None else {}),
            }
            target = target_box(t.prompt.example)
            if target is not None:
                record.update(target_box=target, crop_target_iou=crop_target_iou(t.prompt.example, t.tool_calls))
            f.write(json.dumps(record) + "\n")
    return path
