"""Small datasets in each seed's OWN format, made from the synthetic tasks (not copied from the seeds), for
tests/test_seed_presets.py and tests/test_data_formats_agree.py (not a test file itself).

    train, held_out = SEED_FIXTURES["seed002"](tmp_path, n_train=8, n_eval=4)

- seed000: JSONL with the image inline, `{"image_data": base64, "question", "answer"}` (its Dataset.from_list).
- seed001: its QnA JSONL, `{"image_path", "image_id", "QnA": [{"Q", "A3" with {Crop desc [x1, y1, x2, y2]}}]}`.
- seed002: a `datasets.save_to_disk` folder of ONE Dataset (`"_split": null`), columns image, question, answer, bboxs.
- seed003: a save_to_disk Dataset, columns image, question, answer, reference_steps, choices, options, source.
- seed004: a Geometry3K folder, `data/{train,test}-00000-of-00001.parquet`, columns images, problem, answer.
The save_to_disk folders are written by the real `datasets` package (a test requirement, not a run-time one).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from data.synth import generate
from data.zoom_sft import a3_text
from data.synth_zoom import cell_of


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _two(make, folder: Path, n_train: int, n_eval: int, seed: int) -> tuple[Path, Path]:
    return make(folder / "train", n_train, seed), make(folder / "eval", n_eval, seed + 1)


def seed000_jsonl(out: Path, n: int, seed: int) -> Path:
    """The zoom task with each image inline as base64 and the options in the question (the seed has no field)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [{"image_data": base64.b64encode(png(s.image)).decode("ascii"),
              "question": f"{s.question} Options: {', '.join(s.choices)}.", "answer": s.answer}
             for s in generate("zoom", n, seed)]
    path = out / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def seed001_jsonl(out: Path, n: int, seed: int) -> Path:
    """The zoom task as seed 001's QnA lines: A3 crops the bold box's grid cell, then answers."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, s in enumerate(generate("zoom", n, seed)):
        s.image.save(out / "images" / f"{i:04d}.png", compress_level=1)
        lines.append({"image_path": f"images/{i:04d}.png", "image_id": f"{i:04d}",
                      "QnA": [{"Q": s.question, "A3": a3_text(cell_of(s.bbox, s.image.size), s.answer)}]})
    path = out / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def save_to_disk(rows: dict, features: dict, out: Path) -> Path:
    datasets = pytest.importorskip("datasets", reason="writing a save_to_disk folder needs `datasets` (requirements-dev)")

    datasets.Dataset.from_dict(rows, features=datasets.Features(features)).save_to_disk(str(out))
    return out


def seed002_dataset(out: Path, n: int, seed: int) -> Path:
    """The grounding task as seed 002's dataset: the answer is a text label, the box is in bboxs."""
    datasets = pytest.importorskip("datasets", reason="save_to_disk folders need `datasets` (requirements-dev)")

    samples = generate("grounding", n, seed)
    rows = {"image": [s.image for s in samples], "question": [s.question for s in samples],
            "answer": [label(s.question) for s in samples],
            "bboxs": [[[float(v) for v in s.bbox]] for s in samples]}
    return save_to_disk(rows, {"image": datasets.Image(), "question": datasets.Value("string"),
                               "answer": datasets.Value("string"),
                               "bboxs": datasets.Sequence(datasets.Sequence(datasets.Value("float32")))}, out)


def label(question: str) -> str:
    """The grounded object's name as seed 002's text answer: "Where is the red circle?" -> "red circle"."""
    return question.removeprefix("Where is the ").rstrip("?")


def color_steps(sample) -> list[str]:
    """Reference steps for the colors task, one short checkable fact each (seed 003's guideline)."""
    return [f"The square in the image is {sample.answer}.", f"The answer is {sample.answer}."]


def seed003_dataset(out: Path, n: int, seed: int) -> Path:
    """The colors task as seed 003's dataset, with reference_steps and the options in `options`."""
    datasets = pytest.importorskip("datasets", reason="save_to_disk folders need `datasets` (requirements-dev)")

    samples = generate("colors", n, seed)
    strings = datasets.Sequence(datasets.Value("string"))
    rows = {"image": [s.image for s in samples], "question": [s.question for s in samples],
            "answer": [s.answer for s in samples], "reference_steps": [color_steps(s) for s in samples],
            "choices": [[] for _ in samples], "options": [list(s.choices) for s in samples],
            "source": ["synth-colors" for _ in samples]}
    return save_to_disk(rows, {"image": datasets.Image(), "question": datasets.Value("string"),
                               "answer": datasets.Value("string"), "reference_steps": strings, "choices": strings,
                               "options": strings, "source": datasets.Value("string")}, out)


def seed004_folder(folder: Path, n_train: int, n_eval: int, seed: int) -> Path:
    """The geometry task as the Geometry3K hub layout: one folder, a train and a test parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("test", n_eval, seed + 1)):
        samples = generate("geometry", n, s)
        table = pa.table({
            "images": pa.array([[{"bytes": png(x.image), "path": f"{i}.png"}] for i, x in enumerate(samples)],
                               type=image_type),
            "problem": [f"<image>{x.question}" for x in samples], "answer": [x.answer for x in samples]})
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


def seed_fixture(seed_name: str, folder: Path, n_train: int = 8, n_eval: int = 4, seed: int = 3) -> tuple[Path, Path]:
    """(training data, held-out data) of one seed, in its own format. Geometry3K is one folder with two splits."""
    if seed_name == "seed004":
        path = seed004_folder(folder / "geometry3k", n_train, n_eval, seed)
        return path, path
    make = {"seed000": seed000_jsonl, "seed001": seed001_jsonl, "seed002": seed002_dataset,
            "seed003": seed003_dataset}[seed_name]
    return _two(make, folder, n_train, n_eval, seed)
