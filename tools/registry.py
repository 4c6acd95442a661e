"""The tool registry: `TOOLS` (name -> tool function, with seed-000 aliases), `call_tool` (never raises), output
guards, and `ToolStats`.

`call_tool(name, args, image, limits)` is the one way the rollout runs a tool. Whatever the model wrote, it returns
a ToolResult; an error's text is what the model sees as the tool's output. Every output image then passes the
guards of `ToolLimits`: over the pixel cap -> error; short side under `min_crop_side` -> upscaled (Qwen needs 28 px);
short side over `max_crop_short_side` -> downsized keeping the aspect ratio (seed 001's 448 px rule).

    from tools.registry import TOOLS, ToolLimits, call_tool
    result = call_tool("crop", {"box": [0, 0, 100, 50]}, image, ToolLimits())

A tool registers with `@register(name, aliases=(...), args={arg: JSON schema})` on a `tools.base.tool` function
(tools/image_tools.py has the built-ins; a plugin adds its own the same way). `aliases` are other names the model
may call it by; `args` describes argument names that tools/schema.py's ARG_SCHEMAS does not already know.
Run the tests: `python -m pytest -q tests/test_tools_registry.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from registry import Registry
from tools.base import PIXEL_CEILING, RESAMPLE, ToolResult, over_pixel_limit

__all__ = ["TOOLS", "ToolLimits", "ToolResult", "ToolStats", "call_tool", "canonical_name", "register", "tool_fn"]

TOOLS = Registry("tool", "rollout.tools", builtins=("tools.image_tools",), traits={"aliases": (), "args": {}})
register = TOOLS.register


def aliases() -> dict[str, str]:
    """Every alias -> its tool's name (seed 000's names: "adjust_brightness" -> "brightness")."""
    return {alias: e.name for e in TOOLS.entries() for alias in e.traits["aliases"]}


@dataclass
class ToolLimits:
    max_output_pixels: int = 4096 * 4096 // 4  # larger outputs are an error (at most tools.image_tools.PIXEL_CEILING)
    min_crop_side: int = 28  # outputs with a shorter short side are upscaled to it (Qwen's 28 px patch pair)
    max_crop_short_side: int = 448  # outputs with a longer short side are downsized to it (seed 001)
    max_aspect_ratio: float = 200.0  # long side / short side; Qwen's smart_resize rejects more
    max_calls: int = 4  # tool calls per trajectory (enforced by the rollout)
    max_images: int = 4  # tool output images per trajectory (enforced by the rollout)

    def __post_init__(self):
        if not 0 < self.max_output_pixels <= PIXEL_CEILING:
            raise ValueError(f"max_output_pixels={self.max_output_pixels} must be in 1..{PIXEL_CEILING}")
        if not 1 <= self.min_crop_side <= self.max_crop_short_side:
            raise ValueError(
                f"need 1 <= min_crop_side ({self.min_crop_side}) <= max_crop_short_side ({self.max_crop_short_side})"
            )
        if self.max_aspect_ratio < 1 or self.max_calls < 0 or self.max_images < 0:
            raise ValueError(f"max_aspect_ratio must be >= 1 and max_calls, max_images >= 0; got {self}")


def canonical_name(name) -> str | None:
    """The registered name of a tool called by its name or an alias ("adjust_brightness" -> "brightness"), None if
    unknown."""
    if not isinstance(name, str):
        return None
    return name if name in TOOLS else aliases().get(name)


def tool_fn(name: str):
    """The tool function a name or an alias calls (KeyError when unknown)."""
    canonical = canonical_name(name)
    if canonical is None:
        raise KeyError(name)
    return TOOLS[canonical]


def call_tool(name, args, image: Image.Image, limits: ToolLimits | None = None) -> ToolResult:
    """Run tool `name` with `args` (a dict from the model) on `image`, then guard its output. Never raises."""
    limits = ToolLimits() if limits is None else limits
    canonical = canonical_name(name)
    if canonical is None:
        return ToolResult(error=f"unknown tool {show_name(name)}; known tools: {', '.join(TOOLS.names())}")
    if not isinstance(args, dict):
        return ToolResult(error=f"{name}: arguments must be a JSON object, got {type(args).__name__}")
    try:
        result = TOOLS[canonical](image, **args)
        if result.image is not None:
            result = guard_output(name, result.image, limits)
    except Exception as exc:  # a tool bug or a PIL failure must not end the rollout
        return ToolResult(error=f"{name}: failed ({type(exc).__name__}: {exc})")
    if result.error and name != canonical and result.error.startswith(canonical + ":"):
        result.error = name + result.error[len(canonical) :]  # the model called it by its alias
    return result


def guard_output(name: str, image: Image.Image, limits: ToolLimits) -> ToolResult:
    """Apply the minimum short side and the 448 px rule, then the pixel cap on what the model will see, checking
    sizes before allocating. (The cap applies after downsizing, so a crop of a 12 MP photo is fine.)"""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long / short > limits.max_aspect_ratio:
        ratio = f"{limits.max_aspect_ratio:g}"
        return ToolResult(error=f"{name}: the output would be {width}x{height}, over {ratio} times longer than wide")
    if short < limits.min_crop_side:
        target = limits.min_crop_side
    elif short > limits.max_crop_short_side:
        target = limits.max_crop_short_side
    else:
        too_big = _over_cap(name, image.size, limits)
        return ToolResult(error=too_big) if too_big else ToolResult(image=image)
    # the short side lands exactly on the bound; the long side keeps the aspect ratio, rounded
    long_target = round(long * target / short)
    size = (target, long_target) if width <= height else (long_target, target)
    too_big = _over_cap(name, size, limits)
    return ToolResult(error=too_big) if too_big else ToolResult(image=image.resize(size, RESAMPLE))


def _over_cap(name: str, size: tuple[int, int], limits: ToolLimits) -> str | None:
    problem = over_pixel_limit(*size, limits.max_output_pixels)
    return f"{name}: {problem}" if problem else None


def show_name(name) -> str:
    return f'"{name[:40]}"' if isinstance(name, str) else type(name).__name__


@dataclass
class ToolStats:
    """Counts tool calls for logging: `record` each call, `as_metrics` once per step."""

    calls: int = 0
    successes: int = 0
    errors: int = 0
    per_tool: dict[str, int] = field(default_factory=dict)  # canonical name (or "unknown") -> calls
    errors_per_tool: dict[str, int] = field(default_factory=dict)

    def record(self, name, result: ToolResult) -> None:
        # model-invented names share one bucket, so metrics keys stay bounded
        key = canonical_name(name) or "unknown"
        self.calls += 1
        self.per_tool[key] = self.per_tool.get(key, 0) + 1
        if result.ok:
            self.successes += 1
        else:
            self.errors += 1
            self.errors_per_tool[key] = self.errors_per_tool.get(key, 0) + 1

    def as_metrics(self) -> dict[str, float]:
        metrics = {
            "tools/calls": float(self.calls),
            "tools/errors": float(self.errors),
            "tools/success_rate": self.successes / self.calls if self.calls else 0.0,  # 0 when no calls were made
        }
        metrics.update({f"tools/{key}": float(count) for key, count in sorted(self.per_tool.items())})
        metrics.update({f"tools/{key}/errors": float(count) for key, count in sorted(self.errors_per_tool.items())})
        return metrics
