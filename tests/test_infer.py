"""Inference: infer.py (one question, or a batch over a data file) and engine.infer.Assistant, including a tool
call whose crop is saved, and the Python example of docs/EVALUATION.md run as written.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_infer.py`.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

import infer as infer_cli
from data.example import Example
from engine.report.evaluate import prompts_for
from engine.infer import Assistant
from models.tiny import tiny_model_dir
from tests.engine_helpers import encode, noise_image
from tests.test_engine_rollout import scripted_vlm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from data.synth import main as synth

    out = tmp_path_factory.mktemp("colors")
    assert synth(["colors", "--n", "3", "--out", str(out), "--seed", "4"]) == 0
    return out / "data.jsonl"


def test_one_question_and_a_batch_from_the_command_line(data, tmp_path, capsys):
    image = data.parent / json.loads(data.read_text().splitlines()[0])["image"]
    model = str(tiny_model_dir("qwen2_5_vl"))
    assert infer_cli.main(["--model", model, "--config", "configs/demo.toml", "--image", str(image),
                           "--question", "What color is the square?", "--tools", "crop,zoom"]) == 0
    out = capsys.readouterr().out
    assert "protocol inline, tools crop, zoom" in out and "question: What color is the square?" in out
    assert re.search(r"^answer: ", out, re.M) and re.search(r"^tool calls: \d+$", out, re.M)

    answers = tmp_path / "answers.jsonl"
    assert infer_cli.main(["--model", model, "--config", "configs/demo.toml", "--data", str(data),
                           "--out", str(answers), "--rollout.max_new_tokens", "8"]) == 0
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["origin"].endswith("data.jsonl:1")
    assert {"question", "reference", "answer", "response", "tool_calls", "crops"} <= rows[0].keys()
    assert infer_cli.main(["--model", model, "--image", str(image)]) == 2  # no question: usage, exit 2
    assert infer_cli.main(["--model", model, "--image", str(image), "--question", "q", "--tools", "paint"]) == 2
    assert "unknown tool 'paint'" in capsys.readouterr().err


def test_a_tool_call_comes_back_with_its_crop_saved(tmp_path):
    bot = Assistant(tiny_model_dir("qwen2_5_vl"), tools=["crop"], crops_dir=tmp_path / "crops")
    bot.cfg = replace(bot.cfg, rollout=replace(bot.cfg.rollout, max_new_tokens=24))
    image = noise_image((100, 80), seed=3)
    question = "What is in the corner?"
    # steer the real model: its answer starts with a crop of the top-left quarter (the tiny Qwen2.5-VL reads boxes
    # in the resized frame: 100x80 resizes to 112x84, so [0, 0, 56, 42] is original [0, 0, 50, 40])
    example = Example(question=question, answers=[], images=[_png(image)])
    [prompt] = prompts_for([example], bot.vlm, bot.cfg)
    bot.vlm = scripted_vlm(bot.vlm, [prompt], [encode(bot.vlm, "<tool_call>[0, 0, 56, 42]</tool_call>")])
    [reply] = bot.ask_many([example])
    assert [c["name"] for c in reply.tool_calls] == ["crop"] and reply.tool_calls[0]["ok"]
    assert reply.tool_calls[0]["box_pixels"] == [0.0, 0.0, 50.0, 40.0]
    assert reply.crops == [str(tmp_path / "crops" / "0000_1.png")]
    crop = Image.open(reply.crops[0])
    # 50x40 px: the short side is between the 28 px minimum and the 448 px rule, so the crop is kept as cut
    assert crop.size == (50, 40) and list(crop.getdata()) == list(image.crop((0, 0, 50, 40)).getdata())


def _png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_the_python_example_in_the_docs_runs_as_written(tmp_path, monkeypatch):
    page = (ROOT / "docs" / "EVALUATION.md").read_text()
    [code] = re.findall(r"<!-- python-api -->\n```python\n(.*?)```", page, re.S)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny-qwen2_5_vl").symlink_to(tiny_model_dir("qwen2_5_vl"))  # what `make tiny` writes
    noise_image((120, 90), seed=5).save(tmp_path / "photo.png")
    exec(compile(code, "docs/EVALUATION.md", "exec"), {})


def test_a_missing_answer_says_why():
    """An answer cut by the length cap says so (and which setting to raise); a reply always says why it stopped."""
    from engine.infer import Reply

    cut = Reply(question="q", answer=None, response="<think>the square is", stop="length")
    assert infer_cli.answer_line(cut, 48) == ("(none: the response was cut at the length cap, rollout.max_new_tokens "
                                              "48, before an <answer>; raise it)")
    ended = Reply(question="q", answer=None, response="blue", stop="eos")
    assert infer_cli.answer_line(ended, 48) == '(none: no <answer> tag or JSON "answer"; stopped on eos)'
    assert infer_cli.answer_line(Reply(question="q", answer="blue", response="<answer>blue</answer>"), 48) == "blue"
