"""Score one completion with one registered reward, and show what the reward parsed: a debugging CLI.

    python -m rewards.explain accuracy --completion "<think>..</think><answer>Two</answer>" --answer 2
    python -m rewards.explain iou --completion "<answer>[100, 100, 500, 500]</answer>" --answer "[10, 10, 50, 50]" \\
        --box-frame norm1000 --image-size 100x100
    python -m rewards.explain reasoning --completion '{"reasoning_steps": ["..."], "answer": "x"}' --answer x \\
        --example '{"reference_steps": ["..."]}'

Prints one JSON object: the value, the extracted answer, its VQA-normalised form and number, the normalised
references, and the predicted box (in --box-frame). `--answer` may repeat (several references); `--example`
takes any Example field as JSON (question, answers, boxes, choices, reference_steps, metadata).
An unknown NAME exits with 2 and lists the registered names; any other bad input (an empty --answer, an unknown
Example field, a malformed size, a reward that needs what was not given) exits 2 with one line saying what.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from data.example import Example
from rewards import REWARDS
from rewards.combine import reward_fn
from rewards.format import extract_answer, response_text
from rewards.grounding import predicted_box
from rewards.mathexpr import parse_number
from rewards.normalize import normalize_answer
from rewards.registry import RewardContext


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rewards.explain", description="Score one completion.")
    p.add_argument("name", help="a registered reward name")
    p.add_argument("--completion", required=True)
    p.add_argument("--answer", action="append", default=[], help="a reference answer (repeat for several)")
    p.add_argument("--example", default="{}", help="JSON object of Example fields")
    p.add_argument("--box-frame", default="pixels", choices=["pixels", "resized", "norm1000"])
    p.add_argument("--image-size", default=None, help="WxH of the original image (for norm1000/resized boxes)")
    p.add_argument("--resized-size", default=None, help="WxH after the processor's resize (for resized boxes)")
    p.add_argument("--prefill", default="", help="text the chat template put before the completion")
    return p


def _size(text: str | None, flag: str = "--image-size") -> list[tuple[int, int]]:
    if not text:
        return []
    try:
        w, h = text.lower().split("x")
        return [(int(w), int(h))]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 640x480") from None


def build_example(answers: list[str], example_json: str) -> Example:
    if any(not a.strip() for a in answers):
        raise ValueError(f"--answer {next(a for a in answers if not a.strip())!r} is empty: give the reference "
                         "answer the completion is compared with (or leave --answer out for rewards that need none)")
    try:
        fields = json.loads(example_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--example is not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError("--example must be a JSON object of Example fields")
    known = {f.name for f in dataclasses.fields(Example)}
    if unknown := sorted(set(fields) - known):
        raise ValueError(f"--example: unknown Example fields {unknown}; known: {', '.join(sorted(known))}")
    fields.setdefault("question", "")
    fields.setdefault("images", [])
    fields["answers"] = answers or fields.get("answers", [])
    return Example(**fields)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.name not in REWARDS:
        print(f"unknown reward {args.name!r}; registered rewards: {', '.join(REWARDS.names())}", file=sys.stderr)
        return 2
    try:
        example = build_example(args.answer, args.example)
        ctx = RewardContext(box_frame=args.box_frame, image_sizes=_size(args.image_size),
                            resized_sizes=_size(args.resized_size, "--resized-size"), prompt_prefill=args.prefill)
        entry = REWARDS.entry(args.name)  # a reward that owns settings is built with its defaults here
        fn = entry.fn if entry.settings is None else reward_fn(args.name, {args.name: entry.settings()})
        value = fn(args.completion, example, ctx)
    except (ValueError, TypeError) as exc:  # bad input to this command: one line, no traceback
        print(f"rewards.explain {args.name}: {exc}", file=sys.stderr)
        return 2
    pred = extract_answer(response_text(args.completion, ctx), "auto")
    print(json.dumps({
        "reward": args.name,
        "value": value,
        "extracted_answer": pred,
        "normalized_answer": None if pred is None else normalize_answer(pred),
        "number": parse_number(pred),
        "normalized_references": [normalize_answer(a) for a in example.answers],
        "box_in_frame": predicted_box(response_text(args.completion, ctx)),  # before conversion to pixels
    }, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
