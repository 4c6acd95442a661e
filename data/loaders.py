"""Detect a dataset's format and load it into `data.example.Example` records.

    from data import load_examples
    result = load_examples("train.jsonl", image_root="images/", skip_bad=True)
    result.format, len(result.examples), result.skipped

Formats (name -> loader) are in FORMATS; each loader yields Examples and BadRecords in file order, and this file
alone decides whether a BadRecord stops the load (default) or is collected in `LoadResult.skipped`. Nothing is
dropped silently. Boxes are always checked against the image size (a header read). Every Example of every format
then goes through `data.records.finish_example`: a non-empty reference answer, every image decoded in full
(`verify_images=True`) and held to a pixel cap (`max_image_pixels`: downsized, boxes with it, or refused), each
change noted per record in `LoadResult.notes`. Check a dataset from the shell with `python -m data.check PATH`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from data.example import Example
from data.formats_jsonl import load_jsonl, load_seed001
from data.formats_table import load_geometry3k, load_hf_disk, load_parquet, parquet_splits, read_json
from data.records import OVERSIZED, BadRecord, LoadOptions, LoadResult, finish_example


@dataclass(frozen=True)
class Format:
    looks_like: str  # one line for error messages: what a file or folder of this format looks like
    load: Callable[[Path, LoadOptions], Iterator[Example | BadRecord]]
    has_splits: bool  # whether `split` means anything for it


FORMATS: dict[str, Format] = {
    "jsonl": Format('a .jsonl file, one object a line: {"image": path (or "images": [paths], or "image_data": '
                    'base64), "question": str, "answer": str or [str], "bbox"?: [x1, y1, x2, y2], "choices"?, '
                    '"reference_steps"?}', load_jsonl, has_splits=False),
    "seed001": Format('a .jsonl file, one object a line: {"image_path": path, "image_id": str, '
                      '"QnA": [{"Q": str, "A3": str with {Crop desc [x1, y1, x2, y2]} calls}]}',
                      load_seed001, has_splits=False),
    "hf_disk": Format("a datasets.save_to_disk folder: state.json + data-*.arrow (or dataset_dict.json + one "
                      "such folder per split), columns image, question, answer, ...", load_hf_disk, has_splits=True),
    "geometry3k": Format("a folder of {split}-00000-of-00001.parquet files (or under data/), columns images, "
                         "problem, answer (or the save_to_disk columns)", load_geometry3k, has_splits=True),
    "parquet": Format("one .parquet file with the columns of a save_to_disk folder or of Geometry3K", load_parquet,
                      has_splits=False),
}
DETECT_LINES = 50  # how many non-blank lines a JSONL file may start with that are not JSON objects


def load_examples(path, *, image_root=None, split=None, default_split="train", skip_bad=False,
                  verify_images=False, max_image_pixels=0, oversized="downsize", model_check=None) -> LoadResult:
    """Every Example of the dataset at `path`. The first bad record raises BadRecord, unless `skip_bad`, where
    each one's message goes to `skipped` and the rest load. `split` picks a split of a format with splits (an
    error for one without: a JSONL file, a parquet file, a save_to_disk Dataset saved under another split);
    None reads `default_split` where the data has splits and the whole data where it has none. `image_root` is
    where relative image paths live (default: the dataset's own folder). `verify_images` decodes every pixel;
    an image over `max_image_pixels` (0: no cap) is downsized or refused (`oversized`), said in `notes`.
    `model_check(example, sizes) -> reason | None` (models/admit.py: what the model's processor will take) makes a
    record it refuses bad like any other, so `skip_bad` drops exactly what training would fail on."""
    fmt = detect_format(path)
    if split is not None and not FORMATS[fmt].has_splits:
        raise ValueError(f"{path}: a {fmt} file has no splits; drop split={split!r} (give the file of that split)")
    if image_root is not None and not Path(image_root).is_dir():
        raise ValueError(f"image_root {image_root} is not a folder")
    if oversized not in OVERSIZED:
        raise ValueError(f"oversized images: {oversized!r}; choose {' or '.join(OVERSIZED)}")
    opts = LoadOptions(shown=str(path), image_root=None if image_root is None else str(image_root),
                       split=split, default_split=default_split)
    checks = LoadOptions(shown=str(path), verify_images=verify_images, max_image_pixels=max_image_pixels,
                         oversized=oversized, model_check=model_check)  # the formats read headers; finish_example decodes, once per image
    result, seen = LoadResult(format=fmt, examples=[]), {}
    for item in FORMATS[fmt].load(Path(path), opts):
        if isinstance(item, Example):
            try:
                item, notes = finish_example(item, checks, seen)
                result.notes.extend(notes)
            except BadRecord as bad:
                item = bad
        if isinstance(item, Example):
            result.examples.append(item)
        elif skip_bad:
            result.skipped.append(str(item))
        else:
            raise item
    return result


def split_names(path) -> list[str]:
    """The named splits of the data at `path` (a DatasetDict folder, a Geometry3K parquet folder), in the data's own
    order; [] for a JSONL or parquet file and a single save_to_disk Dataset."""
    fmt, p = detect_format(path), Path(path)
    if fmt == "hf_disk" and (p / "dataset_dict.json").is_file():
        return list(read_json(p / "dataset_dict.json")["splits"])
    return list(parquet_splits(p)) if fmt == "geometry3k" else []


def has_splits(path) -> bool:
    """Whether the data at `path` holds named splits (see split_names)."""
    return bool(split_names(path))


def subsample(examples: list[Example], num: int, seed: int) -> list[Example]:
    """`num` examples drawn without replacement, seeded, kept in data order (seed 000's --num_samples); all of
    them when `num` is 0 or at least their number."""
    if num <= 0 or num >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), num))
    return [examples[i] for i in keep]


def detect_format(path) -> str:
    """The name of the format at `path` (a key of FORMATS). Raises ValueError listing the formats otherwise."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{path}: no such file or folder")
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return "hf_disk"
        if parquet_splits(p):
            return "geometry3k"
        raise unknown_format(path, "a folder with no state.json, dataset_dict.json or split-named .parquet files")
    if p.suffix == ".arrow":
        raise unknown_format(path, "a single .arrow file: give the save_to_disk folder that holds it and state.json")
    if p.suffix == ".parquet":
        return "parquet"
    first = first_object(p)
    if first is not None and "QnA" in first:
        return "seed001"
    if first is not None and "question" in first:
        return "jsonl"
    seen = "no JSON object in its first lines" if first is None else f"first object has keys {sorted(first)}"
    raise unknown_format(path, seen)


def first_object(path: Path) -> dict | None:
    """The first JSON object among the first non-blank lines (a broken line before it is reported on load)."""
    with open(path, "rb") as f:
        lines = (raw for raw in f if raw.strip())
        for _, raw in zip(range(DETECT_LINES), lines):
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                return obj
    return None


def unknown_format(path, seen: str) -> ValueError:
    kinds = "\n".join(f"  {name}: {fmt.looks_like}" for name, fmt in FORMATS.items())
    return ValueError(f"{path}: unrecognised data format ({seen}). Formats that load:\n{kinds}")
