"""Run one image tool from the command line, exactly as the rollout would (through `call_tool` and its guards).

    python -m tools.run zoom --image photo.jpg --args '{"factor": 2}' --out zoomed.png
    python -m tools.run info --image photo.jpg
    python -m tools.run --list                      # every registered tool, its arguments and aliases

Writes the output image to --out (or prints the text of `info`). Any bad input -- unknown tool, malformed JSON,
a bad argument, an unreadable image, an unwritable output -- prints the reason to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys

from PIL import Image, ImageOps

from tools.registry import TOOLS, ToolLimits, call_tool


def listing() -> str:
    """Every registered tool as `name(args): description`, with the names it is also called by."""
    lines = []
    for e in TOOLS.entries():
        params = list(inspect.signature(e.fn).parameters.values())[1:]  # [0] is the image
        shown = [p.name if p.default is p.empty else f"{p.name}={json.dumps(p.default)}" for p in params]
        also = f" (also {', '.join(e.traits['aliases'])})" if e.traits["aliases"] else ""
        lines.append(f"{e.name}({', '.join(shown)}){also}: {inspect.getdoc(e.fn).splitlines()[0]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.run", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="tool name, e.g. crop, zoom, adjust_brightness")
    parser.add_argument("--image", help="input image file")
    parser.add_argument("--args", default="{}", help='tool arguments as a JSON object, e.g. \'{"factor": 2}\'')
    parser.add_argument("--out", help="where to write the output image (format from the extension)")
    parser.add_argument("--list", action="store_true", help="list the registered tools and exit")
    opts = parser.parse_args(argv)
    if opts.list:
        print(listing())
        return 0
    if not opts.name or not opts.image:
        return _fail("give a tool name and --image FILE (or --list)")
    try:
        args = json.loads(opts.args)
    except ValueError as exc:
        return _fail(f"--args is not valid JSON ({exc})")
    try:
        with Image.open(opts.image) as source:
            image = ImageOps.exif_transpose(source).convert("RGB")  # as displayed, as the data loader opens it
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return _fail(f"cannot read image {opts.image}: {exc}")
    result = call_tool(opts.name, args, image, ToolLimits())
    if not result.ok:
        return _fail(result.error)
    if result.text is not None:
        print(result.text)
    if result.image is not None:
        if not opts.out:
            return _fail(f"{opts.name} makes an image: give --out FILE")
        try:
            result.image.save(opts.out)
        except (OSError, ValueError) as exc:
            return _fail(f"cannot write {opts.out}: {exc}")
        print(f"wrote {opts.out} ({result.image.width}x{result.image.height})")
    return 0


def _fail(reason: str) -> int:
    print(f"error: {reason}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
