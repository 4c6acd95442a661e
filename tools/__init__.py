"""Image tools for "thinking with images": the tools, their registry and guards, call protocols, box frames.

- `tools.image_tools`: the eleven tools of seed 000, plain functions `fn(image, **args) -> ToolResult`.
- `tools.registry`: `TOOLS` (names and seed-000 aliases), `ToolLimits`, `call_tool` (never raises), `ToolStats`.
- `tools.protocols`: `ToolCall`, the "inline" (<tool_call>) and "multiturn" (<tool>) parsers, `describe_tools`.
- `tools.boxes`: the "pixels" / "resized" / "norm1000" box frames and box validation.
- `python -m tools.run NAME --image FILE --args JSON --out FILE`: run one tool from the shell.

Run the tests: `python -m pytest -q tests/test_tools*.py`.
"""
