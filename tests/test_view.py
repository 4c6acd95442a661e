"""tools/view.py: the rollout page, built from a folder that engine.report.rollout_dump.dump_rollouts wrote from hand-made
Trajectory objects, rendered in headless Chromium (the page must open from disk: every <img> loads, the crop
boxes are drawn, the screenshot is not blank), plus the pure pieces (box frames, highlighting, sampling, errors).

Chromium is required: `apt-get install chromium` (Debian). Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q
tests/test_view.py`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.example import Example
from engine.report.rollout_dump import dump_rollouts
from engine.rollout.trajectory import Prompt, ToolCallRecord, Trajectory
from rewards.combine import RewardBatch
from tools import view

CHROMIUM = "/usr/bin/chromium"
SIZE = (200, 160)  # original image (width, height)
BOX = [40, 20, 140, 100]  # the good crop, original pixels
RESPONSES = [
    "<think>The box is small.\n<tool_call>[40, 20, 140, 100]</tool_call>\nStripes.</think><answer>vertical</answer>",
    "<think>a <script>alert(1)</script> & <tool_call>[300, 0, 400, 50]</tool_call></think><answer>dots</answer>",
    "<think>no tools, and I ran out of tok",
]


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(SIZE[1], SIZE[0], 3), dtype=np.uint8))


def _traj(i: int, calls: list[ToolCallRecord], stop: str) -> Trajectory:
    original = _image(i)
    images = [original] + [original.crop(c.args["box"]).resize((100, 80)) for c in calls if c.ok]
    ex = Example(question=f"What pattern is inside box {i}?", answers=["vertical"], images=[b""])
    prompt = Prompt(example=ex, ids=[1], images=[original], pixel_values=torch.zeros(1, 1),
                    grid_thw=torch.ones(1, 3, dtype=torch.long))
    return Trajectory(prompt=prompt, group=0, ids=[1], mask=[0], sampler_logp=[0.0], images=images,
                      pixel_values=torch.zeros(1, 1), grid_thw=torch.ones(1, 3, dtype=torch.long),
                      tool_calls=calls, stop=stop, text=RESPONSES[i])


def make_run(root: Path, box_frame: str = "pixels") -> Path:
    """A run folder with config.toml and one dumped step of 3 rollouts: a good crop, a failed crop, no call."""
    trajs = [_traj(0, [ToolCallRecord("crop", {"box": BOX}, True)], "eos"),
             _traj(1, [ToolCallRecord("crop", {"box": [300, 0, 400, 50]}, False, "crop: box outside <image>")], "eos"),
             _traj(2, [], "length")]
    rewards = RewardBatch(total=[1.2, 0.2, 0.0], parts={"format": [1.0, 1.0, 0.0], "accuracy": [1.0, 0.0, 0.0]},
                          errors={})
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(f'[model]\nbox_frame = "{box_frame}"\n')
    dump_rollouts(root, 10, trajs, rewards, torch.tensor([0.9, -0.3, -0.6]))
    return root


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: this test renders the page in headless Chromium; "
                    f"run `apt-get install chromium` (Debian) first")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_page_renders_in_headless_chromium(tmp_path):
    run = make_run(tmp_path / "run")
    assert view.main([str(run)]) == 0
    page = run / "rollouts" / "index.html"
    url = page.resolve().as_uri()

    proc = _chromium(["--dump-dom", url], tmp_path)
    dom = proc.stdout
    imgs = re.findall(r"<img [^>]*>", dom)
    # 3 originals + 1 crop: the dump wrote 4 images, and the page shows each one
    assert len(imgs) == 4, f"rc={proc.returncode}\n{dom[:2000]}\n{proc.stderr[-2000:]}"
    assert sum("tool image 1" in tag for tag in imgs) == 1
    not_loaded = [tag for tag in imgs if 'data-loaded="1"' not in tag]
    assert not not_loaded, f"images that did not load from disk: {not_loaded}"
    # one box drawn: the good crop, in percent of 200x160 (40/200 = 20%, 20/160 = 12.5%, 100/200, 80/160)
    boxes = re.findall(r'<div class="box"[^>]*style="([^"]*)"', dom)
    assert boxes == ["left:20.000%;top:12.500%;width:50.000%;height:50.000%;border-color:#e6194b"]
    assert "<script>alert" not in dom and "&lt;script&gt;alert(1)" in dom  # the response was escaped

    shot = tmp_path / "shot.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1200,2000", url], tmp_path)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    # the box's border colour #e6194b = (230, 25, 75) is on screen (it appears nowhere else on the page)
    red = np.all(np.abs(pixels - [230, 25, 75]) < 12, axis=-1)
    assert red.sum() > 100, f"only {red.sum()} pixels of the crop box's colour in the screenshot"


def test_page_contents_without_a_browser(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "elsewhere" / "page.html"
    assert view.main([str(run), "--out", str(out)]) == 0
    text = out.read_text()
    # images referenced relative to the page's own folder
    assert 'src="../run/rollouts/images/step_000010_0_1.png"' in text
    assert "crop: box outside &lt;image&gt;" in text  # the failed call's error, escaped
    assert "advantage +0.900" in text and "advantage -0.300" in text and "stop length" in text
    assert re.search(r"<td>accuracy</td><td>1.000</td>", text)
    assert text.count('<section class="rollout"') == 3


def test_highlight_escapes_first_and_marks_blocks():
    out = view.highlight("<think>a<b>x</b><tool_call>[1, 2, 3, 4]</tool_call></think>\n<answer>ok</answer>")
    assert "<b>x</b>" not in out and "&lt;b&gt;x&lt;/b&gt;" in out
    assert out.startswith('<span class="hl-think"><b class="tag">&lt;think&gt;</b>a&lt;b&gt;')
    assert '<span class="hl-tool_call"><b class="tag">&lt;tool_call&gt;</b>[1, 2, 3, 4]' in out
    assert '<span class="hl-answer"><b class="tag">&lt;answer&gt;</b>ok<b class="tag">&lt;/answer&gt;</b></span>' in out
    assert out.count("<span") == out.count("</span>") == 3
    # an unclosed tag (a truncated response) is marked as a tag without opening a block
    assert view.highlight("<think>cut") == '<b class="tag">&lt;think&gt;</b>cut'
    assert view.highlight('<tool>{"name": "zoom"}</tool>').startswith('<span class="hl-tool">')


def test_pixel_box_by_frame():
    size = (200, 160)
    call = {"name": "crop", "args": {"box": [100, 500, 600, 1000]}}
    assert view.pixel_box(call, "pixels", size) == ([100, 500, 600, 1000], "pixels")
    # norm1000: x * 200 / 1000, y * 160 / 1000
    assert view.pixel_box(call, "norm1000", size) == ([20, 80, 120, 160], "norm1000")
    for frame in ("", "resized"):
        box, note = view.pixel_box(call, frame, size)
        assert box is None and note.startswith("not drawn")
    # box_pixels (the converted box, when the dump has it) wins over any frame
    assert view.pixel_box({**call, "box_pixels": [1, 2, 3, 4]}, "", size) == ([1, 2, 3, 4], "box_pixels")
    assert view.pixel_box({"name": "zoom", "args": {"factor": 2}}, "pixels", size) == (None, "")
    assert view.pixel_box({"name": "crop", "args": {"box": [1, 2, "x", 4]}}, "pixels", size) == (None, "")


def test_unknown_frame_draws_nothing(tmp_path):
    run = make_run(tmp_path / "run", box_frame="none")
    assert view.main([str(run)]) == 0
    text = (run / "rollouts" / "index.html").read_text()
    assert 'class="box"' not in text and "not drawn: box frame &#x27;unknown&#x27;" in text


def test_dump_records_the_models_box_frame_and_the_page_names_it(tmp_path):
    run = make_run(tmp_path / "run", box_frame="none")  # config says nothing: the family's own frame
    dump_rollouts(run, 11, [_traj(0, [ToolCallRecord("crop", {"box": BOX}, True)], "eos")],
                  RewardBatch(total=[1.0], parts={"format": [1.0]}, errors={}), torch.tensor([0.5]), box_frame="resized")
    records = [json.loads(line) for line in open(run / "rollouts" / "step_000011.jsonl")]
    assert [r["box_frame"] for r in records] == ["resized"]
    assert all("box_frame" not in json.loads(line) for line in open(run / "rollouts" / "step_000010.jsonl"))
    assert view.main([str(run)]) == 0
    assert "box frame (from the dump): resized" in (run / "rollouts" / "index.html").read_text()


def test_max_spreads_over_the_run():
    assert view.spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert view.spread(list(range(3)), 5) == [0, 1, 2]
    assert view.spread(list(range(5)), 1) == [4]


def test_no_rollouts_exits_2(tmp_path, capsys):
    assert view.main([str(tmp_path)]) == 2
    assert "no dumped rollouts" in capsys.readouterr().err
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "rollouts" / "step_000001.jsonl").write_text("\n")
    assert view.main([str(tmp_path)]) == 2
    assert "hold no rollouts" in capsys.readouterr().err
    (tmp_path / "rollouts" / "step_000001.jsonl").write_text("[1]\n")
    assert view.main([str(tmp_path)]) == 2
    assert "step_000001.jsonl:1: expected a JSON object" in capsys.readouterr().err


def test_cli_runs_from_repo_root(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "tools.view", str(tmp_path)], cwd=repo, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "no dumped rollouts" in proc.stderr


def test_box_outside_the_image_is_listed_not_drawn(tmp_path):
    run = make_run(tmp_path / "run")
    assert view.main([str(run)]) == 0
    text = (run / "rollouts" / "index.html").read_text()
    assert "not drawn: [300, 0, 400, 50] px is outside the 200x160 image" in text
    assert text.count('class="box"') == 1


def test_target_box_and_learning_signals(tmp_path):
    """A dumped example with a target_box gets it drawn (dotted, T) and its IoU shown; RL steps in metrics.jsonl
    become the learning-signals table (SFT lines and unreadable lines are skipped)."""
    traj = _traj(0, [ToolCallRecord("crop", {"box": BOX}, True, box_pixels=[float(v) for v in BOX])], "eos")
    traj.prompt.example.metadata["target_box"] = [0, 0, 100, 80]
    run = tmp_path / "run"
    dump_rollouts(run, 5, [traj], RewardBatch(total=[1.0], parts={}, errors={}), torch.tensor([0.5]))
    lines = [{"step": 1, "sft/loss": 2.0}, {"step": 2, "groups/informative_fraction": 0.75,
                                            "tools/target_hit_rate": 0.125, "train/tokens/tool/adv_abs": 0.5}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    assert view.main([str(run)]) == 0
    text = (run / "rollouts" / "index.html").read_text()
    # target [0, 0, 100, 80] on 200x160: 0%, 0%, 50%, 50%; the crop BOX [40, 20, 140, 100] has IoU
    # (60*60) / (100*80 + 100*80 - 3600) = 3600 / 12400
    assert 'data-target="1" style="left:0.000%;top:0.000%;width:50.000%;height:50.000%"' in text
    assert f"crop IoU with target {3600 / 12400:.2f}" in text
    table = re.search(r'<table class="signals">.*?</table>', text).group(0)
    assert table.count("<tr>") == 2  # heading + the one RL step
    assert "<td>2</td><td>0.750</td><td>0.125</td><td>0.500</td>" in table
    assert "call rate" not in table  # a metric this run does not have gets no column
