"""docs/OWN_DATA.md, executed: its ```python block named `# NAME.py` is written to NAME.py and its ```bash blocks
run in order, as a newcomer would run them from the repository root, in a fresh folder (train.py, eval.py,
infer.py and configs/ linked into it, the repository on PYTHONPATH). The real output is then held to what the
page says: data.check's row count, both training stages finished, eval.py's accuracy line and its metrics.json,
infer.py's answer; each "prints:" block of the page (digits aside, and the model's own words aside) is in what its
command printed; the no-signal warning quoted on the page is what the trainer prints for the settings the page
names. The README's quick start (between `<!-- quickstart -->` and `<!-- /quickstart -->`, when there) may only
use commands of this page, so the two cannot drift.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_walkthrough.py` (about a minute on one core).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "OWN_DATA.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n(?:prints:\n```text\n(.*?)^```)?", re.M | re.S)
QUICKSTART = re.compile(r"<!-- quickstart -->(.*?)<!-- /quickstart -->", re.S)
FREE_TEXT = ("answer:", "response:")  # what the model writes: the page shows one run's words, the prefix is checked
LINKED = ("train.py", "eval.py", "infer.py", "configs")


def doc_blocks(text: str) -> list[tuple[str, str, str | None]]:
    """(language, body, the "prints:" block after it or None) of each fenced block, in order."""
    return [(lang, body, prints or None) for lang, body, prints in FENCE.findall(text)]


def commands(script: str) -> list[str]:
    """The shell commands of a script, continuation lines joined and each normalised by shlex (comments and
    blank lines dropped): `a  --b "x"` and `a --b x` are the same command."""
    joined = re.sub(r"\\\n", " ", script)
    found = []
    for line in joined.splitlines():
        words = shlex.split(line.removeprefix("$ ").strip(), comments=True)
        if words:
            found.append(shlex.join(words))
    return found


def masked(line: str) -> str:
    return re.sub(r"\d+", "#", line.strip())


def shown(prints: str, output: str) -> list[str]:
    """The lines of a "prints:" block that are not in `output` (digits masked; the model's free text by prefix)."""
    real = [masked(line) for line in output.splitlines()]
    missing = []
    for line in filter(str.strip, prints.splitlines()):
        want = masked(line)
        prefix = next((p for p in FREE_TEXT if want.startswith(p)), None)
        if not any(r.startswith(prefix) if prefix else r == want for r in real):
            missing.append(line)
    return missing


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # `python`: this one


def _bash(script: str, cwd: Path) -> str:
    done = subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{script}\nexited {done.returncode}:\n{output[-3000:]}"
    return output


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """(the folder, [(bash block, its output, the page's prints block)]) after running the page."""
    here = tmp_path_factory.mktemp("walkthrough")
    for name in LINKED:
        (here / name).symlink_to(ROOT / name)
    ran = []
    for lang, body, prints in doc_blocks(DOC.read_text(encoding="utf-8")):
        if lang == "python":
            name = re.match(r"# (\S+\.py)\b", body)
            assert name, f"a python block of {DOC.name} opens without `# NAME.py`: the test cannot save it"
            (here / name.group(1)).write_text(body, encoding="utf-8")
        elif lang == "bash":
            ran.append((body, _bash(body, here), prints))
    return here, ran


def _output(ran, command_start: str) -> str:
    hits = [out for body, out, _ in ran if commands(body)[0].startswith(command_start)]
    assert len(hits) == 1, f"expected one bash block running {command_start!r} in {DOC.name}"
    return hits[0]


@pytest.mark.slow
def test_the_walkthrough_runs_and_does_what_it_says(walked):
    here, ran = walked
    lines = (here / "mydata" / "data.jsonl").read_text(encoding="utf-8").splitlines()
    assert f"examples: {len(lines)} (skipped 0)" in _output(ran, "python -m data.check").splitlines()
    assert len(lines) == 40 and all((here / "mydata" / json.loads(r)["image"]).is_file() for r in lines)

    trained = _output(ran, "python train.py")
    summary = json.loads((here / "runs" / "mine" / "summary.json").read_text())
    assert summary["done_stages"] == ["sft", "rl"] and summary["steps"] == {"sft": 80, "rl": 8}  # 20 x 32/8; 32/4
    rows = [json.loads(line) for line in open(here / "runs" / "mine" / "metrics.jsonl")]
    # one axis across the stages, as the page says: SFT's steps 1-80, then RL's 81-88
    assert [r["step"] for r in rows if "sft/loss" in r] == list(range(1, 81))
    assert [r["step"] for r in rows if "reward/total" in r] == list(range(81, 89))
    line = next(x for x in trained.splitlines() if x.startswith("summary: "))
    assert line == (f"summary: accuracy_after_sft={summary['accuracy_after_sft']:.3f}, accuracy_after_rl="
                    f"{summary['accuracy_after_rl']:.3f} (runs/mine/summary.json)")

    # eval.py with no --config repeats the run's own final evaluation: its accuracy is the trainer's, its file too
    evaluated = _output(ran, "python eval.py")
    accuracy = re.search(r"^held-out: accuracy (\d\.\d{3}) on 8 examples$", evaluated, re.M)
    assert accuracy, evaluated[-2000:]
    metrics = json.loads((here / "runs" / "mine" / "eval" / "metrics.json").read_text())
    assert float(accuracy.group(1)) == round(metrics["accuracy"], 3) == round(summary["accuracy_after_rl"], 3)
    predictions = (here / "runs" / "mine" / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 8

    answered = _output(ran, "python infer.py")
    answer = re.search(r"^answer: (.*)$", answered, re.M).group(1)
    response = re.search(r"^response: (.*)$", answered, re.M).group(1)
    assert answer and re.search(r"<answer>(.*?)</answer>", response).group(1).strip() == answer
    assert (here / "runs" / "mine" / "rollouts" / "index.html").is_file()


@pytest.mark.slow
def test_each_prints_block_is_what_its_command_printed(walked):
    _, ran = walked
    assert all(prints for _, _, prints in ran), f"every bash block of {DOC.name} is followed by a prints: block"
    for body, output, prints in ran:
        assert not shown(prints, output), f"{body}: the page shows lines it did not print: {shown(prints, output)}"


@pytest.mark.slow
def test_the_no_signal_warning_on_the_page_is_the_trainers(walked):
    here, ran = walked
    text = DOC.read_text(encoding="utf-8")
    quoted = next(line for line in text.splitlines() if "warning: RL has learned nothing" in line)
    flags = re.search(r"instead of 20\s+\(`([^`]*)`\)", text).group(1)  # the settings the page names
    train = commands(next(body for body, _, _ in ran if commands(body)[0].startswith("python train.py")))[0]
    words = shlex.split(train)
    for key, value in zip(*[iter(shlex.split(flags))] * 2):  # the page's flags replace the walkthrough's
        if key in words:
            del words[words.index(key):words.index(key) + 2]
        words += [key, value]
    words[words.index("--train.out_dir") + 1] = "runs/nosignal"
    del words[words.index("--rl.epochs"):words.index("--rl.epochs") + 2]  # the page's --rl.steps budgets RL instead
    assert not shown(quoted, _bash(shlex.join(words), here))


def test_the_readme_quick_start_uses_only_commands_of_this_page():
    block = QUICKSTART.search((ROOT / "README.md").read_text(encoding="utf-8"))
    if block is None:
        pytest.skip("README.md has no <!-- quickstart --> block")
    ours = {c for lang, body, _ in doc_blocks(DOC.read_text(encoding="utf-8")) if lang == "bash"
            for c in commands(body)}
    fenced = [body for lang, body, _ in doc_blocks(block.group(1).strip() + "\n")
              if lang in ("bash", "sh", "shell", "console", "")]
    theirs = [c for body in fenced for c in commands(body)]
    assert theirs, "the README's quick start block holds no command"
    assert not [c for c in theirs if c not in ours], f"README quick start commands not in {DOC.name}"
