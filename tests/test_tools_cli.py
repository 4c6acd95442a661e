"""The tool CLI (tools/run.py): one success and one failure through a real subprocess, the other failures in-process.

Run: `python -m pytest -q tests/test_tools_cli.py`.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.run import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def image_file(tmp_path) -> Path:
    y, x = np.mgrid[0:40, 0:60]
    path = tmp_path / "in.png"
    Image.fromarray(np.stack([x * 4, y * 6, x + y], axis=-1).astype(np.uint8)).save(path)
    return path


def run_cli(*argv) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tools.run", *map(str, argv)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli_writes_the_tool_output(image_file, tmp_path):
    out = tmp_path / "out.png"
    proc = run_cli("flip", "--image", image_file, "--args", json.dumps({"direction": "horizontal"}), "--out", out)
    assert proc.returncode == 0, proc.stderr
    # 60x40 is inside the 28..448 guards, so the output is exactly the mirrored input
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(image_file))[:, ::-1])


def test_cli_bad_argument_exits_2_without_a_traceback(image_file, tmp_path):
    proc = run_cli("flip", "--image", image_file, "--args", '{"direction": "diagonal"}', "--out", tmp_path / "o.png")
    assert proc.returncode == 2
    assert proc.stderr == 'error: flip: direction must be "horizontal" or "vertical", got "diagonal"\n'
    assert not (tmp_path / "o.png").exists()


def test_cli_info_prints_text(image_file, capsys):
    assert main(["get_image_info", "--image", str(image_file)]) == 0
    assert capsys.readouterr().out.startswith("size 60x40 pixels, mode RGB, mean colour RGB(")


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["paint", "--args", "{}"], 'error: unknown tool "paint"; known tools: blur, brightness'),
        (["zoom", "--args", '{"factor": 2'], "error: --args is not valid JSON"),
        (["zoom", "--args", '{"factor": 2}'], "error: zoom makes an image: give --out FILE"),
        (["blur", "--args", '{"radius": 1}', "--out", "/no/such/dir/x.png"], "error: cannot write /no/such/dir/x.png"),
    ],
)
def test_cli_failures_exit_2_with_the_reason(image_file, capsys, argv, reason):
    assert main([argv[0], "--image", str(image_file), *argv[1:]]) == 2
    assert capsys.readouterr().err.startswith(reason)


def test_cli_unreadable_image_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["info", "--image", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read image {bad}")


def test_cli_list_prints_every_registered_tool(capsys):
    assert main(["--list"]) == 0
    assert "crop(box) (also crop_image): Cut out the region" in capsys.readouterr().out
