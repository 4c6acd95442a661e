"""What is checked at the door, without a run: EXIF orientation (pixels, sizes and boxes in the displayed frame),
the model processor's own geometry limits (models/admit.py) through the one loader, and the rollout's resize using
the size the check judged.

Hand-worked values: an image stored 60 wide and 20 high with EXIF orientation 6 is shown turned a quarter clockwise,
20 wide and 60 high; its stored left columns become the top rows. Qwen's smart_resize refuses a long/short ratio
over 200 (1000x4 = 250, 3x900 = 300) and takes 2x300 = 150; a 30x20 image scaled to a short side of 448 is 672x448.
"""

import json

import pytest
from PIL import Image

from data import load_examples
from data.example import displayed_size, open_image
from models.admit import example_check, image_check, short_side_size
from models.load import load_processing
from models.tiny import tiny_model_dir
from models.vision import resize_short_side


@pytest.fixture(scope="module")
def processing():
    return load_processing(tiny_model_dir("qwen2_5_vl"))


def turned(path):
    img = Image.new("RGB", (60, 20), "white")
    for x in range(10):
        for y in range(20):
            img.putpixel((x, y), (255, 0, 0))  # a red strip on the stored left
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes(), format="PNG")
    return path


def test_exif_orientation_is_applied_to_pixels_sizes_and_boxes(tmp_path):
    path = turned(tmp_path / "phone.png")
    with Image.open(path) as img:
        assert img.size == (60, 20) and displayed_size(img) == (20, 60)
    shown = open_image(str(path))
    assert shown.size == (20, 60) and shown.getpixel((10, 2)) == (255, 0, 0) and shown.getpixel((10, 57)) != (255, 0, 0)
    lines = [{"image": "phone.png", "question": "q", "answer": "a", "bbox": [0, 0, 20, 50]},
             {"image": "phone.png", "question": "q", "answer": "a", "bbox": [0, 0, 50, 20]}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = load_examples(tmp_path / "d.jsonl", skip_bad=True, verify_images=True, max_image_pixels=300)
    assert result.skipped == [f"{tmp_path / 'd.jsonl'}:2: box [0, 0, 50, 20] lies outside the 20x60 image; boxes are "
                              "[x1, y1, x2, y2] in original-image pixels, as the image is displayed"]
    # downsized to the 300-pixel cap in the displayed frame: 20x60 -> 10x30, the box halved with it
    assert result.examples[0].boxes == [[0.0, 0.0, 10.0, 25.0]]
    assert open_image(result.examples[0].images[0]).size == (10, 30)


def test_the_processor_decides_which_geometry_the_model_takes(processing):
    check = image_check(processing.image_processor)
    assert check((2, 300)) is None and check((64, 48)) is None
    refusal = check((1000, 4))
    assert "refuses a 1000x4 image (aspect ratio 250:1): absolute aspect ratio must be smaller than 200" in refusal
    assert "3x900" in check((3, 900))
    shortened = image_check(processing.image_processor, short_side=448)(((1000, 4)))
    assert "1000x4 image, 112000x448 after data.image_short_side" in shortened


def test_resize_and_check_agree_on_the_size():
    assert short_side_size((30, 20), 448) == (672, 448) and short_side_size((20, 30), 448) == (448, 672)
    assert short_side_size((30, 20), 0) == (30, 20)
    assert resize_short_side(Image.new("RGB", (30, 20)), 448).size == (672, 448)


def test_the_loader_drops_exactly_what_the_model_refuses_naming_the_image(processing, tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "ok.png")
    Image.new("RGB", (1000, 4)).save(tmp_path / "wide.png")
    lines = [{"image": "ok.png", "question": "q", "answer": "a"},
             {"images": ["ok.png", "wide.png"], "question": "q", "answer": "a"},
             {"image": "wide.png", "question": "q", "answer": "a"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    check = example_check(processing)
    result = load_examples(tmp_path / "d.jsonl", skip_bad=True, model_check=check)
    assert [e.origin.rsplit(":", 1)[1] for e in result.examples] == ["1"]
    assert [m.split(": ", 1)[0].rsplit(":", 1)[1] for m in result.skipped] == ["2", "3"]
    assert "image 2 of 2: the model's image processor refuses a 1000x4 image" in result.skipped[0]
    with pytest.raises(ValueError, match=":2: image 2 of 2"):
        load_examples(tmp_path / "d.jsonl", model_check=check)
