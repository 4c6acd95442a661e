"""Builders of small on-disk datasets, one per format, for tests/test_data_*.py (not a test file itself).

Every builder writes into a folder it is given (a pytest tmp_path) and returns the path to load. The
save_to_disk folders are written by the real `datasets` package, so the pyarrow reader is tested on the layout
that `datasets` actually produces; the Geometry3K parquet files follow the Hugging Face hub layout.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def png_bytes(size: tuple[int, int], color=RED) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: Path, size: tuple[int, int], color=RED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(size, color))
    return path


def save_truncated_png(path: Path) -> Path:
    """A PNG whose header is intact (size readable) but whose pixel data stops half way."""
    noise = Image.frombytes("RGB", (64, 64), bytes((i * 7919) % 251 for i in range(64 * 64 * 3)))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def write_lines(path: Path, lines: list) -> Path:
    """A JSONL file: dicts are dumped as JSON, strings are written as they are (blank or broken lines)."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


# Seed 001: line 1 has two QnA (the first with two crops), line 2 is blank, line 3 has one QnA.
A3_TWO_CROPS = ("<think>\nTo determine the clothing...\n{Crop person 1 [0.00, 141.43, 79.23, 480.00]}\n"
                "Then the hat.\n{Crop hat of person 1 [10, 141.5, 60.25, 200]}\n</think>\n\n"
                "<answer> a dark jacket </answer>")
TARGET_TWO_CROPS = ("<think>\nTo determine the clothing...\n<tool_call>[0.00, 141.43, 79.23, 480.00]</tool_call>\n"
                    "Then the hat.\n<tool_call>[10, 141.5, 60.25, 200]</tool_call>\n</think>\n\n"
                    "<answer> a dark jacket </answer>")
A3_NO_CROP = "<think>Count them.</think><answer>3</answer>"
A3_TIGHT_CROP = "<think>{Crop the red sign[5,5,95.5,45]}</think><answer>STOP</answer>"
TARGET_TIGHT_CROP = "<think><tool_call>[5, 5, 95.5, 45]</tool_call></think><answer>STOP</answer>"


def seed001_lines(images: str = "imgs") -> list:
    return [
        {"image_path": f"{images}/street.png", "image_id": "000000580837",
         "QnA": [{"Q": "What is the visible clothing of the person on the far left?", "A3": A3_TWO_CROPS},
                 {"Q": "How many people?", "A3": A3_NO_CROP}]},
        "",
        {"image_path": f"{images}/sign.png", "image_id": "42", "QnA": [{"Q": "What does the sign say?",
                                                                        "A3": A3_TIGHT_CROP}]},
    ]


def seed001_dataset(folder: Path) -> Path:
    save_png(folder / "imgs" / "street.png", (640, 480), GREEN)
    save_png(folder / "imgs" / "sign.png", (100, 50), RED)
    return write_lines(folder / "train.jsonl", seed001_lines())


# Seed 003 (reference_steps, choices, options, source) and seed 002 (bboxs) as datasets.save_to_disk folders.
SEED003_ROWS = {
    "image": [("32x16", RED), ("20x10", BLUE), ("8x8", GREEN)],
    "question": ["what is the brand of phone?", "Which colour is it?", "Which animal?"],
    "answer": ["nokia", "blue", "dog"],
    "reference_steps": [["Find the text on the phone.", "Read 'NOKIA'."], [], []],
    "choices": [[], [], ["cat", "dog"]],
    "options": [[], ["red", "blue"], ["A. cat", "B. dog"]],
    "source": ["textvqa", "colours", "animals"],
}


def _pil(spec: tuple[str, tuple]) -> Image.Image:
    w, h = (int(v) for v in spec[0].split("x"))
    return Image.new("RGB", (w, h), spec[1])


def seed003_dataset():
    import datasets

    features = datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string"),
        "reference_steps": datasets.Sequence(datasets.Value("string")),
        "choices": datasets.Sequence(datasets.Value("string")),
        "options": datasets.Sequence(datasets.Value("string")), "source": datasets.Value("string"),
    })
    rows = dict(SEED003_ROWS, image=[_pil(s) for s in SEED003_ROWS["image"]])
    return datasets.Dataset.from_dict(rows, features=features)


def seed002_dataset(images: list[tuple[str, tuple]], bboxs: list[list[list[float]]]):
    import datasets

    features = datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string"),
        "bboxs": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
    })
    n = len(images)
    rows = {"image": [_pil(s) for s in images], "question": [f"Where is thing {i}?" for i in range(n)],
            "answer": [f"thing {i}" for i in range(n)], "bboxs": bboxs}
    return datasets.Dataset.from_dict(rows, features=features)


def save_quietly(dataset, folder: Path, num_shards: int | None = None) -> Path:
    dataset.save_to_disk(str(folder), num_shards=num_shards)  # (datasets prints a progress bar to stderr)
    return folder


def handmade_hf_disk(folder: Path, image_cells: list[dict]) -> Path:
    """A save_to_disk folder written by hand with pyarrow (for what `datasets` itself never writes, such as an
    image cell that has only a path): state.json + dataset_info.json + one Arrow IPC stream file."""
    folder.mkdir(parents=True, exist_ok=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(image_cells, type=image_type),
                      "question": [f"q{i}" for i in range(len(image_cells))],
                      "answer": [f"a{i}" for i in range(len(image_cells))]})
    with pa.ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                   "_split": None}))
    (folder / "dataset_info.json").write_text("{}")
    return folder


# Geometry3K: data/{split}-00000-of-00001.parquet, images as list<struct<bytes, path>>.
GEO_IMAGE_TYPE = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


def write_geometry3k_split(folder: Path, split: str, rows: list[dict]) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    columns = {name: [r[name] for r in rows] for name in rows[0]}
    arrays = {name: pa.array(v, type=GEO_IMAGE_TYPE) if name == "images" else pa.array(v)
              for name, v in columns.items()}
    path = folder / "data" / f"{split}-00000-of-00001.parquet"
    pq.write_table(pa.table(arrays), path)
    return path


def geometry3k_dataset(folder: Path) -> Path:
    img = lambda size, color, name: {"bytes": png_bytes(size, color), "path": name}  # noqa: E731
    write_geometry3k_split(folder, "train", [
        {"images": [img((40, 30), RED, "0.png")], "problem": "<image>Find x. ", "answer": "3"},
        {"images": [img((10, 10), GREEN, "1a.png"), img((12, 6), BLUE, "1b.png")],
         "problem": "In <image> the angle is 30. Find y.", "answer": "60"},
    ])
    write_geometry3k_split(folder, "test", [
        {"images": [img((16, 16), BLUE, "t.png")], "problem": "<image>\nFind z.", "answer": "2\\sqrt{3}"},
    ])
    write_geometry3k_split(folder, "validation", [
        {"images": [{"bytes": b"not an image", "path": "junk.png"}], "problem": "<image>Find w.", "answer": "1"},
    ])
    return folder
