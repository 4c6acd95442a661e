"""Check a dataset before training on it: detect its format, load it with every image decoded, summarise.

    python -m data.check PATH [--image-root DIR] [--split S] [--skip-bad] [--max-image-pixels N] [--refuse-oversized]

Prints the format, the number of examples (and of each split: data with splits, a DatasetDict or a Geometry3K
folder, has every split checked unless --split names one) and one example in short. Every image is decoded in full. Every bad
record is printed to stderr as `file:line: reason`, all of them in one pass, then it exits 2; with --skip-bad they
are printed as skipped, the rest load, and it exits 0. An image over the pixel cap is downsized (said per record)
or, with --refuse-oversized, a bad record. A missing path, an unknown format or a dataset with no examples at
all also exit 2. Tested in tests/test_data_check.py.
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
    args = parser.parse_args(argv)
    try:  # always collect every bad record: a user fixing a dataset wants all of them in one pass
        splits = [args.split] if args.split else (split_names(args.path) or [None])
        results = {split: load_examples(args.path, image_root=args.image_root, split=split, skip_bad=True,
                                        verify_images=True, max_image_pixels=args.max_image_pixels,
                                        oversized="refuse" if args.refuse_oversized else "downsize")
                   for split in splits}
    except ValueError as exc:  # a whole-file problem (no such path, unknown format, missing column)
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
