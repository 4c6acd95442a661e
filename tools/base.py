"""What every image tool is made of: its result, the argument error it raises, the `tool` decorator that turns a
plain function into a tool that never raises, and the pixel ceiling no tool may exceed. Built-in tools live in
tools/image_tools.py; a plugin's tool uses the same pieces and `tools.registry.register`:

    from tools.base import BadArgument, ToolResult, tool
    from tools.registry import register

    @register("threshold", args={"level": {"type": "number", "description": "0 to 255"}})
    @tool
    def threshold(image, level):
        # its docstring's first line is what the model is told the tool does
        ...
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

from PIL import Image

from tools.boxes import show

PIXEL_CEILING = 4096 * 4096  # no tool allocates more (64 MB of RGB); ToolLimits.max_output_pixels must not exceed it
RESAMPLE = Image.Resampling.BICUBIC
WHITE = {"RGB": (255, 255, 255), "L": 255}  # the modes tools work in; any other input is converted to RGB first


@dataclass
class ToolResult:
    image: Image.Image | None = None
    text: str | None = None
    error: str | None = None  # shown to the model as the tool's output

    @property
    def ok(self) -> bool:
        return self.error is None


class BadArgument(ValueError):
    """An argument the model got wrong; the message (the tool adds its name) is shown to the model."""


def tool(fn):
    """Make fn(image, *, named args) a tool: unknown or missing arguments and BadArgument become error results."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # [0] is the image
    names = [p.name for p in params]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    takes = f"it takes {', '.join(names)}" if names else "it takes no arguments"

    @functools.wraps(fn)
    def run(image: Image.Image, /, **args) -> ToolResult:  # positional: an "image" argument is just unknown
        unknown = [name for name in args if name not in names]
        if unknown:
            return ToolResult(error=f"{fn.__name__}: unknown argument {show(unknown[0])}; {takes}")
        missing = [name for name in required if name not in args]
        if missing:
            return ToolResult(error=f"{fn.__name__}: missing argument {show(missing[0])}; {takes}")
        if image.mode not in WHITE:
            image = image.convert("RGB")
        try:
            return fn(image, **args)
        except BadArgument as exc:
            return ToolResult(error=f"{fn.__name__}: {exc}")

    return run


def over_pixel_limit(width: int, height: int, limit: int) -> str | None:
    """Why a width x height output is refused (more than `limit` pixels), or None."""
    if width * height <= limit:
        return None
    return f"the output would be {width}x{height} = {width * height} pixels, over the limit of {limit}"
