"""What the model is told about its tools (tools/schema.py) and that only the enabled ones run.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_tools_schema.py`.
"""

import inspect
import json

import pytest
from transformers import AutoTokenizer

from engine.config.settings import Config
from engine.config.parsing import from_toml_str
from engine.report.evaluate import prompts_for
from engine.rollout.tool_calls import make_protocol, run_call
from engine.rollout.trajectory import Trajectory
from models.tiny import tiny_model_dir
from tests.engine_helpers import load_tiny, make_prompt
from tools.protocols import ToolCall
from tools.registry import TOOLS
from tools.schema import ARG_SCHEMAS, system_with_tools, tool_schema, tools_section

# The tools branch of Qwen2.5-Instruct's chat template (tokenizer_config.json), trimmed to the system message:
# the reference our inline section must equal byte for byte.
QWEN25_TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}"
    "{{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}{%- endif %}"
)


def test_inline_section_is_what_qwen25s_template_writes():
    tok = AutoTokenizer.from_pretrained(tiny_model_dir("qwen2_5_vl"))
    names = ["crop", "zoom", "flip"]
    system = [{"role": "system", "content": "Be brief."}]
    rendered = tok.apply_chat_template(system, tools=[tool_schema(n, "resized") for n in names],
                                       chat_template=QWEN25_TOOLS_TEMPLATE, tokenize=False)
    ours = system_with_tools("Be brief.", "inline", names, frame="resized")
    assert rendered == f"<|im_start|>system\n{ours}<|im_end|>\n"


def test_every_tool_argument_has_a_schema_and_signatures_follow_the_code():
    for e in TOOLS.entries():
        described = set(ARG_SCHEMAS) | set(e.traits["args"])
        params = list(inspect.signature(e.fn).parameters)[1:]
        assert set(params) <= described, f"{e.name}: describe {set(params) - described} in ARG_SCHEMAS or its args"
        tool_schema(e.name)  # and the schema builds
    zoom = tool_schema("zoom", "norm1000")["function"]
    assert zoom["name"] == "zoom" and zoom["description"].startswith("Zoom by factor")
    assert zoom["parameters"]["required"] == ["factor"]  # center has a default
    assert "0 to 1000" in zoom["parameters"]["properties"]["center"]["description"]
    assert tool_schema("sharpen")["function"]["parameters"]["properties"]["factor"]["default"] == 2.0


def test_multiturn_section_names_its_own_tags_and_aliases_resolve():
    text = tools_section("multiturn", ["adjust_brightness", "crop"])
    lines = text.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(line)["function"]["name"] for line in lines] == ["brightness", "crop"]
    assert '<tool>\n{"name": <function-name>, "args": <args-json-object>}\n</tool>' in text
    assert system_with_tools("", "multiturn", []) == ""  # no tools enabled: the prompt is left alone
    assert system_with_tools("", "multiturn", ["crop"]).startswith("You are a helpful assistant.\n\n# Tools")
    with pytest.raises(ValueError, match="unknown tool 'paint'"):
        tools_section("multiturn", ["paint"])


def test_config_rejects_unknown_tools_and_tools_without_a_protocol():
    with pytest.raises(ValueError, match="unknown tool 'paint'"):
        from_toml_str(Config, '[data]\ntrain = "x"\n[rollout]\nprotocol = "multiturn"\ntools = ["paint"]')
    with pytest.raises(ValueError, match="protocol is none"):
        from_toml_str(Config, '[data]\ntrain = "x"\n[rollout]\ntools = ["crop"]')


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


def test_prompt_lists_the_enabled_tools_and_other_tools_are_refused(vlm):
    cfg = from_toml_str(Config, '[data]\ntrain = "x"\n[rollout]\nprotocol = "multiturn"\ntools = ["crop", "zoom"]')
    prompt = make_prompt(vlm, (112, 112), "what color?", seed=0)
    [built] = prompts_for([prompt.example], vlm, cfg)
    text = vlm.tokenizer.decode(built.ids)
    assert '"name": "crop"' in text and '"name": "zoom"' in text and '"name": "rotate"' not in text
    assert "<tool>" in text and text.index("# Tools") < text.index("<|im_start|>user")  # in the system message

    protocol = make_protocol("multiturn", vlm, tools=cfg.rollout.tools)
    traj = Trajectory.start(built, group=0)
    _, _, error = run_call(traj, vlm, ToolCall("rotate", {"angle": 90}), protocol.tool_limits, protocol.enabled)
    assert error == "tool 'rotate' is not available; tools: crop, zoom" and not traj.tool_calls[-1].ok
    image, _, error = run_call(traj, vlm, ToolCall("crop", {"box": [0, 0, 56, 56]}), protocol.tool_limits,
                               protocol.enabled)
    assert error is None and image is not None and traj.tool_calls[-1].ok
