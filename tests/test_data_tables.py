"""Tests of the table formats: `datasets.save_to_disk` folders ("hf_disk") and Geometry3K parquet ("geometry3k").

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_data_tables.py

The save_to_disk folders are written by the real `datasets` package (a test-only dependency), so these tests
prove that the pyarrow-only reader handles the layout `datasets` produces. Expected values come from the
rows written in tests/data_fixtures.py.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from data import BadRecord, detect_format, load_examples
from tests.data_fixtures import (
    GREEN, RED, SEED003_ROWS, geometry3k_dataset, handmade_hf_disk, png_bytes, save_png, save_quietly,
    seed002_dataset, seed003_dataset,
)

HINT = "boxes are [x1, y1, x2, y2] in original-image pixels, as the image is displayed"


def decoded(src: bytes) -> tuple[tuple[int, int], tuple]:
    img = Image.open(io.BytesIO(src)).convert("RGB")
    return img.size, img.getpixel((0, 0))


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """Built once: seed 003 columns, seed 002 columns (row 1's box is outside), and a DatasetDict."""
    import datasets

    root = tmp_path_factory.mktemp("hf")
    good_002 = seed002_dataset([("64x32", RED), ("16x16", GREEN)], [[[1.5, 2, 30, 20]], [[0, 0, 16, 16], [4, 4, 8, 8]]])
    return {
        "seed003": save_quietly(seed003_dataset(), root / "seed003"),
        "seed002_bad": save_quietly(seed002_dataset([("64x32", RED), ("64x32", RED), ("64x32", RED)],
                                                    [[[1.5, 2, 30, 20]], [[10, 0, 70, 8]], []]), root / "seed002",
                                    num_shards=2),  # rows 0-1 in one .arrow file, row 2 in the next
        "dict": save_quietly(datasets.DatasetDict({"train": good_002, "test": good_002.select([1])}), root / "dd"),
        "no_answer": save_quietly(seed003_dataset().remove_columns(["answer"]), root / "no_answer"),
    }


def test_seed003_columns(hf_folders):
    folder = hf_folders["seed003"]
    result = load_examples(folder)
    assert result.format == "hf_disk" and result.skipped == []
    phone, colour, animal = result.examples
    assert (phone.question, phone.answers) == ("what is the brand of phone?", ["nokia"])
    assert phone.reference_steps == SEED003_ROWS["reference_steps"][0] and phone.choices == []
    assert phone.metadata == {"source": "textvqa"} and phone.origin == f"{folder}:row 0"
    assert isinstance(phone.images[0], bytes) and decoded(phone.images[0]) == ((32, 16), RED)
    assert colour.choices == ["red", "blue"]  # options stand in for empty choices
    assert colour.metadata == {"source": "colours"} and colour.origin == f"{folder}:row 1"
    assert animal.choices == ["cat", "dog"]  # choices win; the different options stay visible in metadata
    assert animal.metadata == {"source": "animals", "options": ["A. cat", "B. dog"]}


def test_seed002_boxes_are_checked_against_the_image(hf_folders):
    folder = hf_folders["seed002_bad"]
    reason = f"box [10.0, 0.0, 70.0, 8.0] lies outside the 64x32 image; {HINT}"
    with pytest.raises(BadRecord) as info:
        load_examples(folder)
    assert str(info.value) == f"{folder}:row 1: {reason}"
    result = load_examples(folder, skip_bad=True)
    assert len(list(folder.glob("*.arrow"))) == 2  # row numbers run on across the shards
    assert [e.boxes for e in result.examples] == [[[1.5, 2.0, 30.0, 20.0]], []]  # 1.5 is exact in float32
    assert [e.origin for e in result.examples] == [f"{folder}:row 0", f"{folder}:row 2"]
    assert result.skipped == [f"{folder}:row 1: {reason}"]


def test_dataset_dict_splits(hf_folders):
    folder = hf_folders["dict"]
    train = load_examples(folder)
    assert [e.origin for e in train.examples] == [f"{folder}/train:row 0", f"{folder}/train:row 1"]
    assert train.examples[1].boxes == [[0.0, 0.0, 16.0, 16.0], [4.0, 4.0, 8.0, 8.0]]
    test = load_examples(folder, split="test", verify_images=True)
    assert [e.answers for e in test.examples] == [["thing 1"]]
    assert decoded(test.examples[0].images[0]) == ((16, 16), GREEN)
    with pytest.raises(ValueError, match=r"no split 'validation'; splits present: train, test"):
        load_examples(folder, split="validation")
    with pytest.raises(ValueError, match="not a DatasetDict; drop the split 'test'"):
        load_examples(hf_folders["seed003"], split="test")


def test_missing_column_names_folder_column_and_columns_present(hf_folders):
    folder = hf_folders["no_answer"]
    with pytest.raises(ValueError) as info:
        load_examples(folder, skip_bad=True)  # a whole missing column is not one bad record
    assert str(info.value) == (f"{folder}: missing column 'answer'; columns present: "
                               "image, question, reference_steps, choices, options, source")


def test_image_cell_with_only_a_path_or_nothing(tmp_path):
    save_png(tmp_path / "ds" / "pics" / "x.png", (12, 8))
    folder = handmade_hf_disk(tmp_path / "ds", [{"bytes": None, "path": "pics/x.png"},
                                                {"bytes": png_bytes((5, 5)), "path": "ignored.png"},
                                                {"bytes": None, "path": None}])
    result = load_examples(folder, skip_bad=True)
    assert result.examples[0].images == [str(tmp_path / "ds" / "pics" / "x.png")]  # resolved against the folder
    assert decoded(result.examples[1].images[0]) == ((5, 5), RED)  # bytes win over the path
    empty = "image cell {'bytes': None, 'path': None} has neither bytes nor a path"
    assert result.skipped == [f"{folder}:row 2: {empty}"]


# ---------------------------------------------------------------------------------------------- geometry3k
def test_geometry3k_splits_and_placeholder(tmp_path):
    folder = geometry3k_dataset(tmp_path / "geo")
    assert detect_format(folder) == "geometry3k"
    train = load_examples(folder)
    shard = f"{folder}/data/train-00000-of-00001.parquet"
    assert [(e.question, e.answers, e.origin) for e in train.examples] == [
        ("Find x.", ["3"], f"{shard}:row 0"),
        ("In  the angle is 30. Find y.", ["60"], f"{shard}:row 1"),  # the placeholder goes, its spaces stay
    ]
    assert [decoded(src)[0] for src in train.examples[1].images] == [(10, 10), (12, 6)]
    test = load_examples(folder, split="test")
    assert [(e.question, e.answer) for e in test.examples] == [("Find z.", "2\\sqrt{3}")]
    with pytest.raises(ValueError, match=r"no split 'dev'; splits present: test, train, validation"):
        load_examples(folder, split="dev")


def test_geometry3k_unreadable_image_bytes(tmp_path):
    folder = geometry3k_dataset(tmp_path / "geo")
    with pytest.raises(BadRecord) as info:
        load_examples(folder, split="validation")
    assert str(info.value).startswith(f"{folder}/data/validation-00000-of-00001.parquet:row 0: "
                                      "cannot read image <image bytes>: cannot identify image file")


def test_geometry3k_missing_column(tmp_path):
    from tests.data_fixtures import write_geometry3k_split

    shard = write_geometry3k_split(tmp_path, "train", [{"images": [{"bytes": png_bytes((4, 4)), "path": "a.png"}],
                                                         "text": "Find x.", "answer": "1"}])
    with pytest.raises(ValueError) as info:
        load_examples(tmp_path)
    assert str(info.value) == (f"{shard}: missing column 'question' or 'problem'; columns present: images, text, "
                               "answer")
