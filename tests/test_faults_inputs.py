"""Fault injection, for real, on what a run reads: images whose geometry the model cannot take or whose EXIF
orientation turns them, and broken files of every kind the engine opens (model folders, data tables,
checkpoints). Each is met by a real train.py / eval.py / infer.py / data.check process, which must say in one line
which file or record and what to do, before anything is trained or written. Counts go to tests/fault_tally.py.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from models.tiny import tiny_model_dir
from tests.data_fixtures import handmade_hf_disk, png_bytes, write_lines
from tests.fault_helpers import ENV, clean, harness, metric_rows, run, train_args
from tests.fault_tally import TALLY

pytestmark = [pytest.mark.faults, pytest.mark.slow]
RL = ["--train.stage", "rl", "--rl.steps", "2", "--rollout.prompts_per_step", "2", "--rollout.group_size", "2",
      "--rollout.max_new_tokens", "8"]


@pytest.fixture(scope="module")
def model() -> Path:
    return tiny_model_dir("qwen2_5_vl", seed=0)


def geometry_corpus(folder: Path) -> tuple[Path, list[int]]:
    """Records the tiny Qwen2.5-VL's processor takes and ones it refuses (aspect ratio over 200, in each way an
    image can arrive); returns (file, the bad lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), "red").save(folder / "ok.png")
    Image.new("RGB", (1000, 4), "red").save(folder / "wide.png")  # 250:1
    Image.new("RGB", (3, 900), "red").save(folder / "tall.png")  # 300:1
    Image.new("RGB", (2, 300), "red").save(folder / "edge.png")  # 150:1: fine
    wide_b64 = __import__("base64").b64encode(png_bytes((800, 3))).decode()
    ok = {"image": "ok.png", "question": "What colour?", "answer": "red"}
    lines = [ok,                                                   # 1
             {**ok, "image": "wide.png"},                          # 2 refused
             {**ok, "image": "tall.png"},                          # 3 refused
             {**ok, "image": "edge.png"},                          # 4 fine
             {"images": ["ok.png", "wide.png"], "question": "Which?", "answer": "red"},  # 5 the second image
             {"image_data": wide_b64, "question": "What colour?", "answer": "red"},     # 6 inline, refused
             ok]                                                   # 7
    return write_lines(folder / "data.jsonl", lines), [2, 3, 5, 6]


def test_images_the_processor_refuses_are_found_at_load_named_and_skipped_exactly(model, tmp_path):
    path, bad = geometry_corpus(tmp_path)
    with TALLY.bad_input(len(bad)):  # data.check --model names each, in file order, with the processor's reason
        done = run([sys.executable, "-m", "data.check", str(path), "--model", str(model)], timeout=120)
        assert done.returncode == 2
        named = [line for line in clean(done).splitlines() if line.startswith(f"{path}:")]
        assert [int(line.split(":")[1]) for line in named] == bad
        assert all("absolute aspect ratio must be smaller than 200" in line for line in named)
        assert "image 2 of 2: the model's image processor refuses a 1000x4 image" in named[2]
    with TALLY.bad_input():  # training without skip_bad: stops at load, no run folder
        done = run(harness("none", train_args(path, tmp_path / "strict", *RL)))
        assert done.returncode == 2 and f"error: {path}:2: the model's image processor refuses" in clean(done)
        assert not (tmp_path / "strict").exists()
    out = tmp_path / "run"
    with TALLY.fault():  # skip_bad: exactly those dropped, counted and named; RL runs on the rest
        done = run(harness("none", train_args(path, out, *RL, "--data.skip_bad", "true")))
        assert done.returncode == 0, clean(done)
        assert done.stdout.count("skipped: ") == len(bad) and "data: 3 training examples" in done.stdout
        assert f"skipped {len(bad)} bad records (data.skip_bad)" in done.stdout
        assert [r["step"] for r in metric_rows(out)] == [1, 2]
    TALLY.lost += 3 - int(done.stdout.split("data: ")[-1].split()[0])


def exif_image(path: Path) -> Path:
    """Stored 60 wide and 20 high, with EXIF orientation 6: displayed 20 wide and 60 high."""
    img = Image.new("RGB", (60, 20), "white")
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes(), quality=95)
    return path


def test_exif_orientation_puts_boxes_in_the_displayed_frame(model, tmp_path):
    exif_image(tmp_path / "phone.jpg")
    shown = {"image": "phone.jpg", "question": "Where?", "answer": "top", "bbox": [0, 0, 20, 50]}
    stored = {**shown, "bbox": [0, 0, 50, 20]}  # fits the stored 60x20 frame only
    path = write_lines(tmp_path / "data.jsonl", [shown, stored])
    with TALLY.bad_input():
        done = run([sys.executable, "-m", "data.check", str(path), "--model", str(model)], timeout=120)
        assert done.returncode == 2
        assert f"{path}:2: box [0, 0, 50, 20] lies outside the 20x60 image" in clean(done)
        assert "has EXIF orientation 6: used as displayed (20x60)" in done.stdout


# ---------------------------------------------------------------------------------------------- broken files
def broken_models(root: Path, src: Path) -> dict[str, tuple[Path, str]]:
    """Copies of a good model folder, each broken one way: name -> (folder, what the one-line error names)."""
    def copy(name: str) -> Path:
        shutil.copytree(src, root / name)
        return root / name

    out = {}
    d = copy("truncated")
    (d / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:100_000])
    out["truncated"] = (d, f"{d}/model.safetensors: cannot read the model's weights (safetensors)")
    d, raw = copy("lying"), (src / "model.safetensors").read_bytes()  # the header claims 1 GB more for a tensor
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"][1] += 10**9
    text = json.dumps(header).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    out["lying"] = (d, f"{d}/model.safetensors: cannot read the model's weights (safetensors)")
    d = copy("missing_tensor")
    weights = load_file(src / "model.safetensors")
    weights.pop(sorted(weights)[3])
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    out["missing_tensor"] = (d, f"{d}/model.safetensors: the weights do not fit the model its config.json describes")
    d = copy("config")
    (d / "config.json").write_text("{\n")
    out["config"] = (d, f"{d}/config.json: cannot read the model's config.json (JSONDecodeError")
    d = copy("no_tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (d / name).unlink()
    out["no_tokenizer"] = (d, f"{d} has no tokenizer files")
    d = copy("no_template")
    (d / "chat_template.jinja").unlink()
    out["no_template"] = (d, f"{d}: the tokenizer has no chat template")
    d = copy("template_without_images")
    (d / "chat_template.jinja").write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content if m.content"
                                            " is string else '' }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    out["template_without_images"] = (d, f"{d}: the chat template writes 0 image placeholders")
    return out


def test_a_broken_model_folder_is_named_in_one_line_by_train_eval_infer_and_data_check(model, tmp_path):
    data = write_lines(tmp_path / "data.jsonl", [{"image": "ok.png", "question": "What colour?", "answer": "red"}] * 4)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    for name, (folder, said) in broken_models(tmp_path / "models", model).items():
        commands = {"train": harness("none", train_args(data, tmp_path / f"run-{name}", *RL, "--model.path",
                                                         str(folder))),
                    "eval": [sys.executable, "eval.py", "--model.path", str(folder), "--data.eval", str(data),
                             "--out", str(tmp_path / f"eval-{name}")],
                    "infer": [sys.executable, "infer.py", "--model", str(folder), "--image", str(tmp_path / "ok.png"),
                              "--question", "What colour?"],
                    "data.check": [sys.executable, "-m", "data.check", str(data), "--model", str(folder)]}
        if name == "missing_tensor":  # only loading the model finds it: data.check reads no weights (headers only)
            del commands["data.check"]
        for tool, cmd in commands.items():
            with TALLY.bad_input():
                done = run(cmd, timeout=180)
                err = clean(done)
                assert done.returncode == 2 and said in err, (name, tool, err[-2000:])
                assert [line for line in err.splitlines() if str(folder) in line] == [err.strip().splitlines()[-1]]
        assert not (tmp_path / f"run-{name}").exists()


def test_broken_data_tables_are_named_in_one_line(tmp_path):
    cells = [{"bytes": png_bytes((16, 16)), "path": None}] * 3
    cases = {}
    d = handmade_hf_disk(tmp_path / "no_arrow", cells)
    (d / "data-00000-of-00001.arrow").unlink()
    cases[d] = f"{d}/state.json names data-00000-of-00001.arrow, not in {d}"
    d = handmade_hf_disk(tmp_path / "cut_arrow", cells)
    arrow = d / "data-00000-of-00001.arrow"
    arrow.write_bytes(arrow.read_bytes()[:300])
    cases[d] = f"{arrow}: cannot read this Arrow file (ArrowInvalid"
    d = handmade_hf_disk(tmp_path / "bad_state", cells)
    (d / "state.json").write_text("{")
    cases[d] = f"{d}/state.json: cannot read this save_to_disk metadata file (JSONDecodeError"
    parquet = tmp_path / "cut.parquet"
    parquet.write_bytes(b"PAR1" + b"x" * 300)
    cases[parquet] = f"{parquet}: cannot read this parquet file"
    for path, said in cases.items():
        with TALLY.bad_input():
            done = run([sys.executable, "-m", "data.check", str(path)], timeout=60)
            assert done.returncode == 2 and said in clean(done) and done.stderr.count("\n") == 1, done.stderr
        with TALLY.bad_input():
            done = run(harness("none", train_args(path, tmp_path / "run")))
            assert done.returncode == 2 and said in clean(done) and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(data, a finished 4-step SFT run saving every step and keeping 3 checkpoints)."""
    folder = tmp_path_factory.mktemp("data")
    Image.new("RGB", (32, 32), "red").save(folder / "ok.png")
    data = write_lines(folder / "data.jsonl", [{"image": "ok.png", "question": "What colour?", "answer": "red"}] * 4)
    out = tmp_path_factory.mktemp("finished") / "run"
    done = run(harness("none", train_args(data, out, "--sft.steps", "4", "--train.keep_checkpoints", "3")))
    assert done.returncode == 0, done.stderr[-3000:]
    return data, out


def test_a_broken_checkpoint_is_named_and_the_newest_complete_one_offered(finished, tmp_path):
    data, src = finished
    resume = lambda out: run(harness("none", train_args(data, out, "--sft.steps", "6", "--train.resume",  # noqa: E731
                                                        "true", "--train.keep_checkpoints", "3")))
    damage = {"latest names a missing folder": lambda ck: (ck / "latest").write_text("step_000009\n"),
              "cut weights": lambda ck: (ck / "step_000004" / "model" / "model.safetensors").write_bytes(b"\0" * 64),
              "garbage optimizer": lambda ck: (ck / "step_000004" / "optimizer.pt").write_bytes(b"garbage"),
              "garbage state": lambda ck: (ck / "step_000004" / "state.pt").write_bytes(b"")}
    for what, breaks in damage.items():
        out = tmp_path / what.replace(" ", "_")
        shutil.copytree(src, out)
        breaks(out / "checkpoints")
        with TALLY.bad_input():
            done = resume(out)
            err = clean(done)
            assert done.returncode == 2 and err.count("\n") == 1, (what, err)
            assert "newest" in err and "complete checkpoint is step_00000" in err, (what, err)
            assert "echo step_00000" in err and not (out / "FAILED").exists(), (what, err)
        offered = err.split("echo ")[1].split(" >")[0]
        (out / "checkpoints" / "latest").write_text(offered + "\n")
        with TALLY.fault():  # taking the offer works
            done = resume(out)
            assert done.returncode == 0, (what, clean(done))
            assert json.loads((out / "summary.json").read_text())["steps"]["sft"] == 6
    assert ENV  # (the environment every process above ran in)
