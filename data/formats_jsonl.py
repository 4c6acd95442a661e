"""The two line-based formats: generic JSONL ("jsonl") and seed 001's QnA JSONL ("seed001").

Each loader yields, in file order, an Example or a BadRecord (never raises one), so `load_examples` decides
whether to stop or skip. Errors are `file:line: reason` with 1-based line numbers; blank lines are skipped.
Run through `python -m data.check train.jsonl [--image-root DIR]`; tested in tests/test_data_loaders.py.

seed001: `{"image_path", "image_id", "QnA": [{"Q", "A3"}, ...]}`, one Example per QnA entry. The SFT target is A3
with each `{Crop <description> [x1, y1, x2, y2]}` replaced by `<tool_call>[x1, y1, x2, y2]</tool_call>` (numbers
kept exactly as written), and the crop boxes are the Example's boxes, in original-image pixels. The reference is the
A3's last <answer>, a sentence in the seed's data; `metadata["answer_form"] = "sentence"` says so, and the accuracy
reward then scores the words that answer the question (rewards/accuracy.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from pathlib import Path

from data.example import Example, ImageSource
from data.records import (
    MISSING, BadRecord, LoadOptions, answer_list, check_box, check_boxes, image_size, need_str, resolve_path, str_list,
)


def read_objects(path: Path, shown: str) -> Iterator[tuple[str, dict | BadRecord]]:
    """(where, object) for each non-blank line; a line that is not a JSON object comes as a BadRecord."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{shown}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a BOM may open the file
            except UnicodeDecodeError as exc:
                yield where, BadRecord(where, f"not UTF-8 text: {exc}")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, BadRecord(where, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                yield where, BadRecord(where, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield where, obj


# ---------------------------------------------------------------------------------------------- generic JSONL
GENERIC_FIELDS = ("image", "images", "image_data", "question", "answer", "bbox", "choices", "reference_steps", "target")
IMAGE_FIELDS = ("image", "images", "image_data")


def load_jsonl(path: Path, opts: LoadOptions) -> Iterator[Example | BadRecord]:
    base = Path(opts.image_root) if opts.image_root else path.parent
    for where, obj in read_objects(path, opts.shown):
        if isinstance(obj, BadRecord):
            yield obj
            continue
        try:
            yield generic_example(obj, where=where, base=base, verify=opts.verify_images)
        except BadRecord as bad:
            yield bad


def generic_example(obj: dict, *, where: str, base: Path, verify: bool) -> Example:
    question = need_str(obj.get("question", MISSING), "question", where=where)
    answers = answer_list(obj.get("answer", MISSING), where=where)
    images = record_images(obj, where=where, base=base)
    sizes = [image_size(src, where=where, verify=verify) for src in images]
    target = obj.get("target")
    if target is not None and not isinstance(target, str):
        raise BadRecord(where, f'"target" must be a string, got {type(target).__name__}')
    return Example(
        question=question,
        answers=answers,
        images=images,
        boxes=check_boxes(obj.get("bbox"), sizes[0], where=where),
        choices=str_list(obj.get("choices"), "choices", where=where),
        reference_steps=str_list(obj.get("reference_steps"), "reference_steps", where=where),
        target=target,
        metadata={k: v for k, v in obj.items() if k not in GENERIC_FIELDS},
        origin=where,
    )


def record_images(obj: dict, *, where: str, base: Path) -> list[ImageSource]:
    """The images of one generic record: "image" (a path), "images" (a list of paths) or "image_data" (seed 000:
    a base64-encoded image, or a list of them, with or without a `data:image/...;base64,` prefix)."""
    given = [name for name in IMAGE_FIELDS if name in obj]
    if len(given) != 1:
        raise BadRecord(where, 'give exactly one of "image" (a path), "images" (a list of paths) or "image_data" '
                               f'(base64 image bytes){"; got " + " and ".join(given) if given else ""}')
    if "image" in obj:
        return [resolve_path(need_str(obj["image"], "image", where=where), base)]
    if "images" in obj:
        paths = str_list(obj["images"], "images", where=where)
        if not paths:
            raise BadRecord(where, '"images" is empty')
        return [resolve_path(p, base) for p in paths]
    value = obj["image_data"]
    cells = str_list(value, "image_data", where=where) if isinstance(value, list) else [
        need_str(value, "image_data", where=where)]
    if not cells:
        raise BadRecord(where, '"image_data" is empty')
    return [decode_base64(cell, where=where) for cell in cells]


def decode_base64(text: str, *, where: str) -> bytes:
    """The bytes of a base64 image string; a data URL's `data:image/png;base64,` head is dropped."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRecord(where, f'"image_data" is not valid base64 ({exc}); encode the image file\'s bytes with '
                               "base64.b64encode") from None


# ---------------------------------------------------------------------------------------------- seed 001 QnA
CROP_RE = re.compile(r"\{Crop\b([^{}]*)\}")  # {Crop <description> [x1, y1, x2, y2]}
CROP_START_RE = re.compile(r"\{Crop\b")  # what is left after conversion is a malformed call
BOX_AT_END_RE = re.compile(r"\[([^\[\]]*)\]\s*$")
NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def load_seed001(path: Path, opts: LoadOptions) -> Iterator[Example | BadRecord]:
    base = Path(opts.image_root) if opts.image_root else path.parent
    for where, obj in read_objects(path, opts.shown):
        if isinstance(obj, BadRecord):
            yield obj
            continue
        try:
            image = resolve_path(need_str(obj.get("image_path", MISSING), "image_path", where=where), base)
            size = image_size(image, where=where, verify=opts.verify_images)
            qna = obj.get("QnA", MISSING)
            if qna is MISSING:
                raise BadRecord(where, 'missing field "QnA"')
            if not isinstance(qna, list) or not qna:
                raise BadRecord(where, f'"QnA" must be a non-empty list of {{"Q", "A3"}} objects, got {qna!r:.80}')
        except BadRecord as bad:
            yield bad
            continue
        line_meta = {k: v for k, v in obj.items() if k not in ("image_path", "QnA")}
        for i, entry in enumerate(qna):
            try:
                yield qna_example(entry, where=f"{where}: QnA[{i}]", image=image, size=size, origin=where,
                                  metadata={**line_meta, "qna_index": i, "target_box_frame": "pixels",
                                            "answer_form": "sentence"})
            except BadRecord as bad:
                yield bad


def qna_example(entry, *, where: str, image: str, size: tuple[int, int], origin: str, metadata: dict) -> Example:
    if not isinstance(entry, dict):
        raise BadRecord(where, f"expected a {{\"Q\", \"A3\"}} object, got {type(entry).__name__}")
    question = need_str(entry.get("Q", MISSING), "Q", where=where)
    a3 = need_str(entry.get("A3", MISSING), "A3", where=where)
    target, boxes = convert_crops(a3, where=where, size=size)
    answers = ANSWER_RE.findall(a3)
    if not answers:
        raise BadRecord(where, "A3 has no <answer>...</answer>")
    return Example(question=question, answers=[answers[-1].strip()], images=[image], boxes=boxes,
                   target=target, metadata=metadata, origin=origin)


def convert_crops(a3: str, *, where: str, size: tuple[int, int]) -> tuple[str, list[list[float]]]:
    """A3 with every `{Crop desc [x1, y1, x2, y2]}` turned into `<tool_call>[x1, y1, x2, y2]</tool_call>`, and
    the crop boxes (checked inside the image). The numbers keep their written form ("0.00" stays "0.00")."""
    boxes: list[list[float]] = []

    def one(match: re.Match) -> str:
        call = match.group(0)
        box = BOX_AT_END_RE.search(match.group(1))
        if box is None:
            raise BadRecord(where, f'malformed crop call "{call}": it does not end with a [x1, y1, x2, y2] box')
        parts = [p.strip() for p in box.group(1).split(",")]
        if len(parts) != 4:
            raise BadRecord(where, f'malformed crop call "{call}": expected 4 numbers [x1, y1, x2, y2], '
                                   f"got {len(parts)}")
        for p in parts:
            if not NUMBER_RE.fullmatch(p):
                raise BadRecord(where, f'malformed crop call "{call}": {p!r} is not a number')
        text = "[" + ", ".join(parts) + "]"
        boxes.append(check_box([float(p) for p in parts], size, where=where, shown=text))
        return f"<tool_call>{text}</tool_call>"

    target = CROP_RE.sub(one, a3)
    left = CROP_START_RE.search(target)
    if left:
        snippet = target[left.start():left.start() + 60]
        raise BadRecord(where, f'malformed crop call "{snippet}": expected {{Crop <description> [x1, y1, x2, y2]}}')
    return target, boxes
