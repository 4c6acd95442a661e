"""Check a dataset before training on it: detect its format, load it with every image decoded, summarise.

    python -m data.check PATH [--image-root DIR] [--split S] [--skip-bad] [--max-image-pixels N] [--refuse-oversized]
    python -m data.check PATH --model DIR [--image-short-side N] [--min-pixels N] [--max-pixels N]

Prints the format, the number of examples (and of each split: data with splits, a DatasetDict or a Geometry3K
folder, has every split checked unless --split names one) and one example in short. Every image is decoded in full,
upright (its EXIF orientation applied: boxes are read in the displayed frame). Every bad record is printed to stderr
as `file:line: reason`, all of them in one pass, then it exits 2; with --skip-bad they are printed as skipped, the
rest load, and it exits 0. An image over the pixel cap is downsized (said per record) or, with --refuse-oversized,
a bad record. With --model, the model folder's tokenizer, chat template and weights headers are checked and every
record is also held to what its image processor takes (models/admit.py: the check training runs at load, with the
same data.image_short_side / min_pixels / max_pixels given here as flags), so --skip-bad drops exactly what training
would. A missing path, an unknown format, an unusable model folder or a dataset with no examples at all also exit
2. Tested in tests/test_data_check.py. (--model reaches up to models/ for the processor, lazily: data/ itself
stands on nothing of ours.)
"""

from __future__ import annotations

import argparse
import sys

from data.example import Example
from data.loaders import load_examples, split_names
from data.records import image_size

TARGET_CHARS = 200  # how much of an SFT target the summary shows
MAX_IMAGE_PIXELS = 4096 * 4096  # the default of data.max_image_pixels (engine/config/settings.py); data/ imports no engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.check", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a .jsonl file or a dataset folder (save_to_disk, parquet)")
    parser.add_argument("--image-root", default=None, help="folder that relative image paths are under")
    parser.add_argument("--split", default=None, help="one split of a folder dataset (default: every split)")
    parser.add_argument("--skip-bad", action="store_true", help="report bad records and load the rest")
    parser.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS,
                        help=f"pixel cap per image, as data.max_image_pixels (default {MAX_IMAGE_PIXELS}; 0: none)")
    parser.add_argument("--refuse-oversized", action="store_true",
                        help="an image over the cap is a bad record (data.oversized_images = refuse), not downsized")
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="also check every record against this model folder's image processor (and its "
                             "tokenizer and chat template), as training does at load")
    parser.add_argument("--image-short-side", type=int, default=0, help="as data.image_short_side (with --model)")
    parser.add_argument("--min-pixels", type=int, default=0, help="as data.min_pixels (with --model)")
    parser.add_argument("--max-pixels", type=int, default=0, help="as data.max_pixels (with --model)")
    args = parser.parse_args(argv)
    try:  # always collect every bad record: a user fixing a dataset wants all of them in one pass
        check = model_check(args)
        splits = [args.split] if args.split else (split_names(args.path) or [None])
        results = {split: load_examples(args.path, image_root=args.image_root, split=split, skip_bad=True,
                                        verify_images=True, max_image_pixels=args.max_image_pixels,
                                        oversized="refuse" if args.refuse_oversized else "downsize",
                                        model_check=check)
                   for split in splits}
    except ValueError as exc:  # a whole-file problem (no such path, unknown format, missing column, model folder)
        print(exc, file=sys.stderr)
        return 2
    examples = [e for r in results.values() for e in r.examples]
    skipped = [m for r in results.values() for m in r.skipped]
    for note in (n for r in results.values() for n in r.notes):
        print(f"note: {note}")
    if skipped and not args.skip_bad:
        for message in skipped:
            print(message, file=sys.stderr)
        print(f"{len(skipped)} bad records in {args.path} ({len(examples)} good): fix them, or "
              "leave them out with --skip-bad (data.skip_bad = true when training)", file=sys.stderr)
        return 2
    print(f"format: {next(iter(results.values())).format}")
    print(f"examples: {len(examples)} (skipped {len(skipped)})")
    if len(results) > 1 or args.split:
        print("splits: " + ", ".join(f"{split} {len(r.examples)}" + (f" (skipped {len(r.skipped)})" if r.skipped else "")
                                     for split, r in results.items())
              + ("" if args.split else " (every split checked; --split S checks one)"))
    for message in skipped:
        print(f"skipped: {message}")
    if args.skip_bad:
        print(f"skipped {len(skipped)} bad records")
    if not examples:
        print(f"{args.path}: no examples to train on", file=sys.stderr)
        return 2
    print(summary(examples[0]))
    return 0


def model_check(args):
    """The per-record check against --model's processor (None without --model); the folder itself is checked too."""
    if args.model is None:
        if args.image_short_side or args.min_pixels or args.max_pixels:
            raise ValueError("--image-short-side, --min-pixels and --max-pixels describe what the model sees: give "
                             "--model DIR with them")
        return None
    from models.admit import example_check  # the model's floor, only when asked for
    from models.load import load_processing

    processing = load_processing(args.model, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    print(f"model: {args.model} ({processing.family.model_type}): tokenizer and chat template checked; records held "
          "to its image processor")
    return example_check(processing, short_side=args.image_short_side)


def summary(example: Example) -> str:
    sizes = [image_size(src, where=example.origin, verify=False) for src in example.images]
    lines = [
        f"example {example.origin}:",
        f"  question: {example.question}",
        f"  answers: {example.answers}",
        f"  images: {len(example.images)} ({', '.join(f'{w}x{h}' for w, h in sizes)})",
        f"  boxes: {example.boxes}",
        f"  choices: {len(example.choices)}",
    ]
    if example.target is not None:
        lines.append(f"  target: {example.target[:TARGET_CHARS]!r}")
    return "\n".join(lines)


if __name__ == "__main__":
    import os
    import signal
    # `python -m data.check DIR | head`: a reader that stops early ends the listing quietly, as it does for ls
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        sys.exit(main())
    except BrokenPipeError:  # platforms without SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
