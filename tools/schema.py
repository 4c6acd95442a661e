"""What the model is told about its tools: JSON function signatures built from the registry, in Qwen's convention.

Qwen2.5's chat template describes tools in the system message as a `# Tools` section: one JSON signature per line
inside `<tools></tools>`, then the call format. `system_with_tools` writes that section for the enabled tools and
the protocol's call format, so enabling a tool in the config (`rollout.tools`) is all a user does:

    from tools.schema import system_with_tools
    system_with_tools("", "multiturn", ["crop", "zoom"], frame="resized")

For the inline protocol the section is, byte for byte, what Qwen2.5's template writes when given `tools=`
(tested); the multiturn protocol keeps the convention and names its own tags (`<tool>`, "args").
A signature's description is the tool's docstring's first line; argument types come from `ARG_SCHEMAS` and the
tool's own `args` (tools/registry.py); a tool with an undescribed argument is an error here, and
tests/test_tools_schema.py checks every registered tool, so a new tool cannot go undescribed.
"""

from __future__ import annotations

import inspect
import json

from tools.registry import TOOLS, canonical_name

# Every argument name any tool takes -> its JSON schema (without the description of box frames; see `_frame`).
ARG_SCHEMAS = {
    "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
            "description": "[x1, y1, x2, y2] with x1 < x2, y1 < y2"},
    "center": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2,
               "description": "[x, y]"},
    "factor": {"type": "number"},
    "angle": {"type": "number", "description": "degrees counter-clockwise"},
    "direction": {"type": "string", "enum": ["horizontal", "vertical"]},
    "radius": {"type": "number", "description": "pixels"},
    "width": {"type": "integer", "description": "pixels"},
    "height": {"type": "integer", "description": "pixels"},
    "keep_aspect": {"type": "boolean"},
}
FRAME_WORDS = {
    "pixels": "in pixels of the image",
    "resized": "in pixels of the image as you see it",
    "norm1000": "as numbers from 0 to 1000 across the image's width and height",
}
QWEN_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
               "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
CALL_FORMATS = {
    # Qwen2.5's own closing paragraph (its template's text), which is the inline protocol's JSON form
    "inline": ("For each function call, return a json object with function name and arguments within "
               "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
               "<args-json-object>}\n</tool_call>"),
    "multiturn": ("For each function call, return a json object with function name and arguments within "
                  "<tool></tool> XML tags:\n<tool>\n{\"name\": <function-name>, \"args\": <args-json-object>}\n"
                  "</tool>\nThe result comes in the next message. Give your final answer within <answer></answer> "
                  "XML tags."),
}
DEFAULT_SYSTEM = "You are a helpful assistant."  # Qwen-VL's templates' own default system message


def check_tool_names(names: list[str]) -> list[str]:
    """The canonical names of `names`; a ValueError naming the first unknown one and the known ones."""
    unknown = [n for n in names if canonical_name(n) is None]
    if unknown:
        raise ValueError(f"rollout.tools: unknown tool {unknown[0]!r}; tools: {', '.join(TOOLS.names())} "
                         "(python -m tools.run --list)")
    return [canonical_name(n) for n in names]


def tool_schema(name: str, frame: str = "pixels") -> dict:
    """One tool's signature in the OpenAI/Qwen function format, from its Python signature and docstring."""
    entry = TOOLS.entry(canonical_name(name) or name)
    fn, arg_schemas = entry.fn, {**ARG_SCHEMAS, **entry.traits["args"]}  # a tool's own args describe new names
    params = list(inspect.signature(fn).parameters.values())[1:]  # [0] is the image
    properties = {}
    for p in params:
        if p.name not in arg_schemas:
            raise ValueError(f"tool {name!r}: argument {p.name!r} has no JSON schema; register the tool with "
                             f"args={{{p.name!r}: {{\"type\": ...}}}}")
        schema = dict(arg_schemas[p.name])
        if p.name in ("box", "center"):
            schema["description"] = f"{schema['description']} {FRAME_WORDS[frame]}"
        if p.default is not p.empty and p.default is not None:
            schema["default"] = p.default
        properties[p.name] = schema
    required = [p.name for p in params if p.default is p.empty]
    return {"type": "function", "function": {
        "name": name, "description": inspect.getdoc(fn).splitlines()[0],
        "parameters": {"type": "object", "properties": properties, "required": required}}}


def tools_section(protocol: str, names: list[str], frame: str = "pixels") -> str:
    """The `# Tools` section: one JSON signature per line (as Jinja's tojson writes it), then the call format."""
    if protocol not in CALL_FORMATS:
        raise ValueError(f"rollout.tools needs a tool protocol: set rollout.protocol to {' or '.join(CALL_FORMATS)}")
    if frame not in FRAME_WORDS:
        raise ValueError(f"unknown box frame {frame!r}; frames: {', '.join(FRAME_WORDS)}")
    lines = [json.dumps(tool_schema(n, frame), ensure_ascii=False) for n in check_tool_names(names)]
    return QWEN_HEADER + "".join("\n" + line for line in lines) + "\n</tools>\n\n" + CALL_FORMATS[protocol]


def system_with_tools(system: str, protocol: str, names: list[str], frame: str = "pixels") -> str:
    """The system message: `system` (or Qwen's default) and, when tools are enabled, the tools section after it."""
    if not names:
        return system
    return f"{system or DEFAULT_SYSTEM}\n\n{tools_section(protocol, names, frame)}"
