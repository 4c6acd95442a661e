"""Tests of the line-based formats (generic JSONL, seed 001 QnA JSONL), format detection and skip_bad.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_data_loaders.py

Expected values are written out by hand from the fixtures in tests/data_fixtures.py (e.g. the converted A3).
The table formats are in tests/test_data_tables.py, the CLI in tests/test_data_check.py.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from data import BadRecord, Example, detect_format, load_examples
from tests.data_fixtures import (
    A3_NO_CROP, A3_TIGHT_CROP, BLUE, GREEN, TARGET_TIGHT_CROP, TARGET_TWO_CROPS, save_png, save_truncated_png,
    seed001_dataset, seed001_lines, write_lines,
)

HINT = "boxes are [x1, y1, x2, y2] in original-image pixels, as the image is displayed"


# ---------------------------------------------------------------------------------------------- generic JSONL
@pytest.fixture
def jsonl_dir(tmp_path):
    save_png(tmp_path / "imgs" / "a.png", (256, 128))
    save_png(tmp_path / "b.png", (40, 20), BLUE)
    (tmp_path / "imgs" / "garbage.png").write_bytes(b"this is not a png")
    return tmp_path


GOOD = {"image": "imgs/a.png", "question": "What colour?", "answer": "red", "bbox": [10, 5, 200, 100],
        "choices": ["red", "blue"], "source": "mine"}


def test_generic_jsonl_fields_and_blank_lines(jsonl_dir):
    second = {"images": [str(jsonl_dir / "b.png")], "question": "How many?", "answer": ["2", "two"],
              "bbox": [[0, 0, 1, 1], [2.5, 2, 40, 20]], "reference_steps": ["look", "count"], "target": "T"}
    path = write_lines(jsonl_dir / "train.jsonl", [GOOD, "", "   ", second])
    result = load_examples(path)
    assert result.format == "jsonl" and result.skipped == []
    first, last = result.examples
    assert first == Example(question="What colour?", answers=["red"], images=[str(jsonl_dir / "imgs" / "a.png")],
                            boxes=[[10.0, 5.0, 200.0, 100.0]], choices=["red", "blue"], metadata={"source": "mine"},
                            origin=f"{path}:1")
    # line 4: two blank lines before it still count; an absolute image path stays as it is
    assert last.origin == f"{path}:4" and last.images == [str(jsonl_dir / "b.png")]
    assert last.answers == ["2", "two"] and last.answer == "2"
    assert last.boxes == [[0.0, 0.0, 1.0, 1.0], [2.5, 2.0, 40.0, 20.0]]
    assert last.reference_steps == ["look", "count"] and last.target == "T" and last.metadata == {}
    assert first.open_images()[0].getpixel((0, 0)) == (255, 0, 0)


def test_utf8_bom_and_crlf_line_endings(jsonl_dir):
    path = jsonl_dir / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n\r\n" + json.dumps(GOOD).encode() + b"\r\n")
    assert [e.origin for e in load_examples(path).examples] == [f"{path}:1", f"{path}:3"]


def test_image_root_replaces_the_jsonl_folder(jsonl_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    path = write_lines(other / "train.jsonl", [{**GOOD, "image": "a.png"}])
    with pytest.raises(BadRecord, match="image file not found"):  # a.png is not next to the JSONL
        load_examples(path)
    result = load_examples(path, image_root=jsonl_dir / "imgs")
    assert result.examples[0].images == [str(jsonl_dir / "imgs" / "a.png")]


def generic_bad_cases(root):
    garbage = root / "imgs" / "garbage.png"
    return {
        "invalid_json": ("{not json}", "invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
        "missing_field": ({"image": "imgs/a.png", "answer": "a"}, 'missing field "question"'),
        "missing_image": ({**GOOD, "image": "imgs/nope.png"}, f"image file not found: {root / 'imgs' / 'nope.png'}"),
        "unreadable_image": ({**GOOD, "image": "imgs/garbage.png"},
                             f"cannot read image {garbage}: cannot identify image file '{garbage}'"),
        "box_outside": ({**GOOD, "bbox": [10, 5, 300, 40]},
                        f"box [10, 5, 300, 40] lies outside the 256x128 image; {HINT}"),
        "x1_not_below_x2": ({**GOOD, "bbox": [[1, 1, 2, 2], [50, 5, 50, 40]]},
                            f"box [50, 5, 50, 40] has x1 >= x2; {HINT}"),
        "y1_not_below_y2": ({**GOOD, "bbox": [50, 40, 60, 5]}, f"box [50, 40, 60, 5] has y1 >= y2; {HINT}"),
        "short_box": ({**GOOD, "bbox": [1, 2, 3]}, f"box [1, 2, 3] is not 4 numbers; {HINT}"),
        "answer_type": ({**GOOD, "answer": 7}, '"answer" must be a string or a non-empty list of strings, got 7'),
        "two_image_fields": ({**GOOD, "images": ["imgs/a.png"]},
                             'give exactly one of "image" (a path), "images" (a list of paths) or "image_data" '
                             '(base64 image bytes); got image and images'),
        "bad_base64": ({"image_data": "not base64!", "question": "q", "answer": "a"},
                       '"image_data" is not valid base64 (Only base64 data is allowed); encode the image '
                       "file's bytes with base64.b64encode"),
        "not_an_object": ("[1, 2]", "expected a JSON object, got list"),
    }


@pytest.mark.parametrize("case", list(generic_bad_cases(Path("."))))
def test_generic_bad_record_raises_then_skips(jsonl_dir, case):
    bad_line, reason = generic_bad_cases(jsonl_dir)[case]
    path = write_lines(jsonl_dir / "train.jsonl", [GOOD, bad_line, GOOD])
    with pytest.raises(BadRecord) as info:
        load_examples(path)
    assert str(info.value) == f"{path}:2: {reason}"
    result = load_examples(path, skip_bad=True)
    assert [e.origin for e in result.examples] == [f"{path}:1", f"{path}:3"]
    assert result.skipped == [f"{path}:2: {reason}"]


def test_verify_images_decodes_pixels(jsonl_dir):
    save_truncated_png(jsonl_dir / "cut.png")
    path = write_lines(jsonl_dir / "train.jsonl", [{**GOOD, "image": "cut.png", "bbox": [0, 0, 64, 64]}])
    assert len(load_examples(path).examples) == 1  # the header alone is fine: 64x64, the box fits
    with pytest.raises(BadRecord, match=rf"^{path}:1: cannot read image {jsonl_dir / 'cut.png'}: "):
        load_examples(path, verify_images=True)


def test_bad_record_pickles_with_its_parts():
    bad = pickle.loads(pickle.dumps(BadRecord("f.jsonl:3", "oops")))
    assert (str(bad), bad.where, bad.reason) == ("f.jsonl:3: oops", "f.jsonl:3", "oops")


# ---------------------------------------------------------------------------------------------- seed 001
def test_seed001_converts_crops_and_answers(tmp_path):
    path = seed001_dataset(tmp_path)
    result = load_examples(path)
    assert result.format == "seed001" and result.skipped == []
    clothing, count, sign = result.examples
    street = str(tmp_path / "imgs" / "street.png")
    assert clothing == Example(
        question="What is the visible clothing of the person on the far left?", answers=["a dark jacket"],
        images=[street], boxes=[[0.0, 141.43, 79.23, 480.0], [10.0, 141.5, 60.25, 200.0]], target=TARGET_TWO_CROPS,
        metadata={"image_id": "000000580837", "qna_index": 0, "target_box_frame": "pixels", "answer_form": "sentence"},
        origin=f"{path}:1")
    assert (count.question, count.answers, count.boxes, count.target) == ("How many people?", ["3"], [], A3_NO_CROP)
    assert count.origin == f"{path}:1" and count.metadata["qna_index"] == 1
    # "[5,5,95.5,45]" keeps its numbers as written, joined by ", "; the description "the red sign" is dropped
    assert (sign.target, sign.boxes, sign.answers) == (TARGET_TIGHT_CROP, [[5.0, 5.0, 95.5, 45.0]], ["STOP"])
    assert sign.origin == f"{path}:3" and A3_TIGHT_CROP != TARGET_TIGHT_CROP
    assert sign.open_images()[0].size == (100, 50)


def test_seed001_image_root(tmp_path):
    save_png(tmp_path / "root" / "coco" / "street.png", (640, 480), GREEN)
    save_png(tmp_path / "root" / "coco" / "sign.png", (100, 50))
    path = write_lines(tmp_path / "train.jsonl", seed001_lines(images="coco"))
    result = load_examples(path, image_root=str(tmp_path / "root"))
    assert result.examples[2].images == [str(tmp_path / "root" / "coco" / "sign.png")]


SEED001_BAD = {
    "three_numbers": ("<think>{Crop cat [1, 2, 3]}</think><answer>x</answer>",
                      'malformed crop call "{Crop cat [1, 2, 3]}": expected 4 numbers [x1, y1, x2, y2], got 3'),
    "not_a_number": ("{Crop cat [1, 2, three, 4]}<answer>x</answer>",
                     "malformed crop call \"{Crop cat [1, 2, three, 4]}\": 'three' is not a number"),
    "no_box": ("{Crop the cat}<answer>x</answer>",
               'malformed crop call "{Crop the cat}": it does not end with a [x1, y1, x2, y2] box'),
    "unclosed": ("{Crop cat [1, 2, 3, 4] <answer>x</answer>",
                 'malformed crop call "{Crop cat [1, 2, 3, 4] <answer>x</answer>": '
                 "expected {Crop <description> [x1, y1, x2, y2]}"),
    "crop_outside": ("{Crop cat [0, 0, 700.0, 10]}<answer>x</answer>",
                     f"box [0, 0, 700.0, 10] lies outside the 640x480 image; {HINT}"),
    "crop_x1_above_x2": ("{Crop cat [30, 0, 20, 10]}<answer>x</answer>", f"box [30, 0, 20, 10] has x1 >= x2; {HINT}"),
    "no_answer": ("<think>{Crop cat [0, 0, 20, 10]}</think>", "A3 has no <answer>...</answer>"),
    "missing_a3": (None, 'missing field "A3"'),
}


@pytest.mark.parametrize("case", list(SEED001_BAD))
def test_seed001_bad_qna_names_its_index(tmp_path, case):
    a3, reason = SEED001_BAD[case]
    lines = seed001_lines()
    lines[0]["QnA"][1] = {"Q": "q"} if a3 is None else {"Q": "q", "A3": a3}
    seed001_dataset(tmp_path)
    path = write_lines(tmp_path / "train.jsonl", lines)
    with pytest.raises(BadRecord) as info:
        load_examples(path)
    assert str(info.value) == f"{path}:1: QnA[1]: {reason}"
    result = load_examples(path, skip_bad=True)  # QnA[0] of the same line still loads
    assert [e.question for e in result.examples] == [lines[0]["QnA"][0]["Q"], "What does the sign say?"]
    assert result.skipped == [f"{path}:1: QnA[1]: {reason}"]


def test_seed001_line_level_errors_have_no_qna_index(tmp_path):
    seed001_dataset(tmp_path)
    lines = seed001_lines()
    lines[2]["image_path"] = "imgs/gone.png"
    lines.append({"image_path": "imgs/sign.png", "QnA": []})
    path = write_lines(tmp_path / "train.jsonl", lines)
    result = load_examples(path, skip_bad=True)
    assert len(result.examples) == 2
    assert result.skipped == [f"{path}:3: image file not found: {tmp_path / 'imgs' / 'gone.png'}",
                              f'{path}:4: "QnA" must be a non-empty list of {{"Q", "A3"}} objects, got []']


# ---------------------------------------------------------------------------------------------- detection
def test_detect_reads_past_a_broken_first_line(tmp_path):
    seed001_dataset(tmp_path)
    path = write_lines(tmp_path / "train.jsonl", ['{"image_path": "imgs/sign.png", "QnA": [',
                                                  *seed001_lines()])
    assert detect_format(path) == "seed001"
    with pytest.raises(BadRecord, match=rf"^{path}:1: invalid JSON: "):
        load_examples(path)
    assert len(load_examples(path, skip_bad=True).examples) == 3


def test_unknown_jsonl_lists_every_format(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(ValueError, match=r"first object has keys \['completion', 'prompt'\]") as info:
        detect_format(path)
    for name in ("jsonl:", "seed001:", "hf_disk:", "geometry3k:"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="no such file or folder"):
        detect_format(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="unrecognised data format"):
        detect_format(tmp_path)  # a folder holding only x.jsonl


def test_split_or_missing_image_root_for_a_jsonl_file_raises(tmp_path):
    path = seed001_dataset(tmp_path)
    with pytest.raises(ValueError, match="has no splits"):
        load_examples(path, split="test")
    with pytest.raises(ValueError, match="is not a folder"):
        load_examples(path, image_root=os.path.join(tmp_path, "missing"))


def test_oversized_image_scales_boxes_and_target_crops(tmp_path):
    # sign.png is 100x50 = 5000 pixels; a cap of 1250 halves each side, so every coordinate halves.
    path = seed001_dataset(tmp_path)
    result = load_examples(path, max_image_pixels=1250)
    sign = result.examples[-1]
    assert sign.boxes == [[2.5, 2.5, 47.75, 22.5]]
    assert sign.target == "<think><tool_call>[2.5, 2.5, 47.75, 22.5]</tool_call></think><answer>STOP</answer>"
    assert sign.open_images()[0].size == (50, 25) and isinstance(sign.images[0], bytes)
    assert result.notes[-1] == (f"{path}:3: image {tmp_path / 'imgs' / 'sign.png'} is 100x50 = 5000 pixels, over "
                                "data.max_image_pixels = 1250: downsized to 50x25, its boxes scaled with it")
    street = result.examples[0]  # 640x480 shared by two QnA: downsized once, said once per record
    assert len(result.notes) == 3 and street.images == result.examples[1].images
    with pytest.raises(BadRecord, match=r":1: image .* over data.max_image_pixels = 1250: shrink it"):
        load_examples(path, max_image_pixels=1250, oversized="refuse")


def test_empty_reference_answer_is_a_load_error(tmp_path):
    save_png(tmp_path / "a.png", (8, 8))
    path = write_lines(tmp_path / "t.jsonl", [{"image": "a.png", "question": "q", "answer": " "}])
    with pytest.raises(BadRecord, match=rf"{path}:1: empty reference answer \(answer = \[' '\]\)"):
        load_examples(path)
