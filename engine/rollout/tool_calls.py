"""Where tools meet sampling: what happens when a sample stops on a tool call.

    protocol = make_protocol("inline", vlm)   # or "multiturn", or None (rollout.protocol = none) → None
    protocol = make_protocol("multiturn", vlm, tools=["crop", "zoom"])   # only these two may run

inline (seed 001): `<tool_call>[x1, y1, x2, y2]</tool_call>` (or Qwen's JSON form) inside the answer; the result
image is injected right after the call, in the same assistant turn. multiturn (seed 000):
`<tool>{"name": ..., "args": {...}}</tool>` ends the turn; the result comes back as the next user message.
Tools always run on the ORIGINAL image; boxes are read in the model family's frame and converted to pixels.
Every injected token has loss mask 0. A bad call never ends the rollout: the error text is the tool's result.
With `tools` given (rollout.tools), a call to any other tool is answered with an error naming the enabled ones; the
prompt lists the same tools (tools/schema.py, engine/report/evaluate.py `prompts_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from engine.config.settings import RolloutConfig
from engine.rollout.trajectory import ToolCallRecord, Trajectory
from models.load import VLM
from models.vision import resized_size
from tools.boxes import args_to_pixels, box_numbers
from tools.protocols import PROTOCOLS, ToolCall, find_last_call
from tools.registry import ToolLimits, call_tool, canonical_name
from tools.schema import check_tool_names


def _single_id(vlm: VLM, text: str, protocol: str) -> int:
    ids = vlm.tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"rollout.protocol {protocol!r} stops on {text!r}, which this tokenizer splits into "
                         f"{len(ids)} tokens; add it as a single token or use another protocol")
    return ids[0]


def run_call(traj: Trajectory, vlm: VLM, call: ToolCall | str, tool_limits: ToolLimits,
             enabled: frozenset[str] = frozenset()):
    """Run one parsed call on the trajectory's original image. Returns the ToolResult-like (image, text, error).
    `enabled`: the canonical names that may run (empty: every registered tool)."""
    if not isinstance(call, str) and enabled and canonical_name(call.name) not in enabled:
        call = f"tool {call.name!r} is not available; tools: {', '.join(sorted(enabled))}"
    if isinstance(call, str):
        traj.tool_calls.append(ToolCallRecord(name="invalid", args={}, ok=False, error=call))
        return None, None, call
    original = traj.images[0]
    args = args_to_pixels(call.name, call.args, frame=vlm.family.box_frame, image_size=original.size,
                          resized_size=resized_size(traj.prompt.grid_thw[0], vlm.family))
    result = call_tool(call.name, args, original, tool_limits) if isinstance(args, dict) else None
    error = args if isinstance(args, str) else result.error
    box_px = box_numbers(args.get("box")) if isinstance(args, dict) else None
    traj.tool_calls.append(ToolCallRecord(name=call.name, args=call.args, ok=error is None, error=error,
                                          box_pixels=box_px))
    if error:
        return None, None, error
    return result.image, result.text, None


def latest_sampled_text(traj: Trajectory, vlm: VLM) -> str:
    """What the policy wrote since the last injected token: only a call written there may run (an earlier call
    was already answered; re-reading it on a stray closing tag would run it twice)."""
    start = len(traj.ids)
    while start > traj.prompt_len and traj.mask[start - 1]:
        start -= 1
    return vlm.tokenizer.decode(traj.ids[start:])


def run_latest_call(traj: Trajectory, vlm: VLM, protocol: str, limits: RolloutConfig, tool_limits: ToolLimits,
                    enabled: frozenset[str] = frozenset()):
    """Parse and run the call the policy just wrote; an image over the trajectory's image limit is refused and
    recorded as a failed call. Returns (image, text, error)."""
    close = "</tool_call>" if protocol == "inline" else "</tool>"
    call = find_last_call(latest_sampled_text(traj, vlm), protocol) or f"no tool call found before {close}"
    image, text, error = run_call(traj, vlm, call, tool_limits, enabled)
    if image is not None and len(traj.images) >= limits.max_images:
        error, image = f"image limit reached ({limits.max_images} images per trajectory)", None
        traj.tool_calls[-1].ok, traj.tool_calls[-1].error = False, error
    return image, text, error


def inject_inline(traj: Trajectory, vlm: VLM, image, text: str | None, error: str | None) -> None:
    """inline: the result (image and/or text, or the error) follows the call in the same assistant turn."""
    if image is not None:
        traj.append_image(image, vlm)
    if text or error:
        traj.append_injected(vlm.tokenizer(f"\n{text or 'Tool error: ' + error}\n", add_special_tokens=False).input_ids)


def inject_multiturn(traj: Trajectory, vlm: VLM, image, text: str | None, error: str | None) -> None:
    """multiturn: the call ended the turn; the result comes back as the next user turn, in the family's chat
    format, and a new assistant turn opens."""
    tok, fam = vlm.tokenizer, vlm.family
    traj.append_injected(tok(f"{fam.turn_end}\n{fam.turn('user')}", add_special_tokens=False).input_ids)
    if image is not None:
        traj.append_image(image, vlm)
    reply = text or (f"Tool error: {error}" if error else "Here is the result.")
    traj.append_injected(tok(f"{reply}{fam.turn_end}\n{fam.turn('assistant')}", add_special_tokens=False).input_ids)


@dataclass
class CallProtocol:
    """A rollout.protocol: how a call is written (`name`: the syntax find_last_call parses; sampling stops on
    `stop_ids`) and how its result goes back into the trajectory (`inject`)."""

    name: str
    inject: Callable[..., None]
    vlm: VLM
    tool_limits: ToolLimits
    stop_ids: frozenset[int]
    enabled: frozenset[str] = frozenset()  # canonical tool names that may run (empty: all)

    def on_stop(self, traj: Trajectory, vlm: VLM, limits: RolloutConfig) -> bool:
        if len(traj.tool_calls) >= limits.max_tool_calls:
            return False
        image, text, error = run_latest_call(traj, vlm, self.name, limits, self.tool_limits, self.enabled)
        self.inject(traj, vlm, image, text, error)
        return True


# How a tool's result goes back into the trajectory, per protocol of tools/protocols.py PROTOCOLS (which parses the
# calls, knows each protocol's tags and is what rollout.protocol is checked against at parse time).
INJECTIONS = {"inline": inject_inline, "multiturn": inject_multiturn}


def make_protocol(name: str | None, vlm: VLM, tool_limits: ToolLimits | None = None, tools: list[str] = ()):
    """The protocol named by rollout.protocol with `tools` enabled (empty: every registered tool may run); None
    (no tools) for None."""
    enabled = frozenset(check_tool_names(list(tools)))
    if name is None:
        if enabled:
            raise ValueError("rollout.tools is set but rollout.protocol is none: choose inline or multiturn")
        return None
    if name not in PROTOCOLS:
        raise ValueError(f"rollout.protocol = {name!r} is unknown; choose one of {', '.join(sorted(PROTOCOLS))}")
    close = PROTOCOLS[name].close_tag  # sampling stops on it: the call is complete
    return CallProtocol(name, INJECTIONS[name], vlm, tool_limits or ToolLimits(),
                        frozenset({_single_id(vlm, close, name)}), enabled)
