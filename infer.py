"""Ask a model a question about an image, with tools or without: prints the answer, the tool calls and the crops.

    python infer.py --model runs/demo --image photo.png --question "What color is the square?"
    python infer.py --model runs/zoom-tools --image img.png --question "..." --out answer.json
    python infer.py --model DIR --image img.png --question "..." --tools crop,zoom       # enable tools
    python infer.py --model runs/seed003 --image img.png --question "What color?" --choices red,blue,green
    python infer.py --model DIR --data held_out.jsonl --out answers.jsonl                 # batch over a data file

--model is a model folder, a run folder, a checkpoint folder or a LoRA adapter (engine/setup/model_source.py). A model
from a run is asked as it was trained (the run's config.toml: system prompt, question template, prefill, tools,
limits); --config PRESET and flags (--rollout.max_new_tokens 128) override it, and each setting that then differs from
the run's is printed. A plain model folder is asked with the defaults and --config. --tools NAMES (comma
separated) is --rollout.tools, with the inline protocol when the config has none. Crops are saved under --crops-dir.
Each reply says why it stopped (eos, length: the rollout.max_new_tokens cap, tool, limit). --out writes JSON lines
(question, reference, answer, response, stop, tool calls, crops): one for --image, one per example for --data, which
reads any format data.check reads (--split S: a split of data with splits, default train). The same from Python: engine.infer.Assistant.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from train import split_args


def answer_line(reply, max_new_tokens: int) -> str:
    """The extracted answer, or why there is none (the length cap cut the response before its <answer>)."""
    if reply.answer is not None:
        return reply.answer
    if reply.stop == "length":
        return (f"(none: the response was cut at the length cap, rollout.max_new_tokens {max_new_tokens}, before an "
                "<answer>; raise it)")
    return f"(none: no <answer> tag or JSON \"answer\"; stopped on {reply.stop or 'nothing'})"


def print_reply(reply, max_new_tokens: int, index: int | None = None) -> None:
    head = f"[{index}] " if index is not None else ""
    print(f"{head}question: {reply.question}")
    print(f"{head}answer: {answer_line(reply, max_new_tokens)}")
    print(f"{head}response: {reply.response}")
    print(f"{head}stop: {reply.stop}")
    print(f"{head}tool calls: {len(reply.tool_calls)}")
    crops = iter(reply.crops)
    for k, call in enumerate(reply.tool_calls, 1):
        result = f"-> {next(crops, '(no image)')}" if call["ok"] else f"failed: {call['error']}"
        print(f"{head}  {k}. {call['name']} {json.dumps(call['args'])} {result}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--model", default="", help="model, run, checkpoint or LoRA folder (required)")
    own.add_argument("--image", default="", help="image file to ask about (with --question)")
    own.add_argument("--question", default="", help="the question (with --image)")
    own.add_argument("--choices", default="", help="the options of a multiple-choice question, comma separated "
                                                   "(the template's {options} / {choices}, as in training)")
    own.add_argument("--data", default="", help="batch mode: a data file or folder (any format data.check reads)")
    own.add_argument("--split", default=None, help="batch mode: the split of data with splits (default train)")
    own.add_argument("--out", default="", help="JSONL file for the replies (one line with --image, one per example "
                                               "with --data)")
    own.add_argument("--tools", default=None, help="enable tools, comma separated (= --rollout.tools; inline protocol "
                                                    "when the config has none)")
    own.add_argument("--crops-dir", default="runs/infer", help="where tool output images are saved")
    own.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    args, rest = own.parse_known_args(argv)
    single = bool(args.image or args.question)
    if not args.model or single == bool(args.data) or (single and not (args.image and args.question)):
        print("usage: infer.py --model DIR (--image IMG --question TEXT | --data FILE) [--out FILE] "
              "[--config PRESET] [--tools crop,zoom]  (--help for more)", file=sys.stderr)
        return 2
    from engine.setup.layers import config_for_model

    try:
        cfg, notes, run_cfg = config_for_model(args.model, *split_args(rest, __doc__.split("\n\n")[0], (own,)),
                                               "infer")
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from data import Example, load_examples
    from engine.infer import Assistant

    print(notes[0])  # where the settings come from
    tools = [t for t in args.tools.split(",") if t] if args.tools is not None else None
    try:
        bot = Assistant(args.model, config=cfg, tools=tools, temperature=args.temperature, crops_dir=args.crops_dir,
                        verbose=False)
        for line in bot.notes if run_cfg is not None else ():  # what --config, flags and --tools change
            print(line)
        r = bot.cfg.rollout
        print(f"model: {bot.source.describe()}; protocol {r.protocol or 'none'}, tools "
              f"{', '.join(r.tools) or ('all' if r.protocol else 'none')}")
        examples = load_examples(args.data, image_root=cfg.data.image_root or None, split=args.split).examples \
            if args.data else \
            [Example(question=args.question, answers=[], images=[args.image], origin=args.image,
                     choices=[c.strip() for c in args.choices.split(",") if c.strip()])]
        replies = bot.ask_many(examples)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = open(args.out, "w", encoding="utf-8") if args.out else None
    for i, (example, reply) in enumerate(zip(examples, replies)):
        print_reply(reply, r.max_new_tokens, None if single else i)
        if out:
            out.write(json.dumps({"origin": example.origin, "reference": example.answer, **asdict(reply)},
                                 ensure_ascii=False) + "\n")
    if out:
        out.close()
        print(f"wrote {len(replies)} {'reply' if single else 'replies'} to {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for SIGINT, no traceback
        print("\nSIGINT: stopped", file=sys.stderr)
        sys.exit(130)
