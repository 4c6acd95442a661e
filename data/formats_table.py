"""The table formats, read with pyarrow only (the `datasets` package is not needed at run time).

- "hf_disk": a `datasets.save_to_disk` folder. It holds state.json (`"_data_files": [{"filename": ...}]`),
  dataset_info.json and Arrow IPC *stream* files; a DatasetDict folder holds dataset_dict.json (`"splits"`) and one
  such folder per split. Columns: image (or images), question, answer, and optionally reference_steps, choices,
  options (another name for choices), bboxs (list of [x1, y1, x2, y2] in original pixels); the rest (source, ...)
  go to metadata. Errors are `folder:row N`, N counted over the whole split as `load_from_disk(folder)[N]`.
- "geometry3k": a folder of `{split}-00000-of-00001.parquet` files (or under `data/`), columns images (list of
  {bytes, path}), problem (with an `<image>` placeholder, removed) and answer. Errors are `file.parquet:row N`.
- "parquet": one .parquet file (no splits: it is one).
Every table format reads the same columns: image or images, question or problem, answer, and the optional ones
above, so a save_to_disk folder exported to parquet (`Dataset.to_parquet`) reads the same.

Image cells are structs {bytes, path}, plain bytes or path strings: bytes go into Example.images; a path is
resolved against --image-root (default: the dataset folder) and kept as a path.
Run through `python -m data.check FOLDER [--split test]`; tested in tests/test_data_loaders.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path

from data.example import Example
from data.records import (
    BadRecord, LoadOptions, answer_list, check_boxes, image_size, need_str, resolve_path, str_list,
)

PARQUET_RE = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)(-\d+-of-\d+)?\.parquet$")  # train-00000-of-00001.parquet
IMAGE_PLACEHOLDER = "<image>"
TABLE_COLUMNS = ["image|images", "question|problem", "answer"]  # `a|b`: either will do


# ---------------------------------------------------------------------------------------------- hf_disk
def load_hf_disk(path: Path, opts: LoadOptions) -> Iterator[Example | BadRecord]:
    from pyarrow import ipc, memory_map  # imported here so that `import data` stays light

    folder, shown = split_folder(path, opts)
    state = folder / "state.json"
    try:
        files = [folder / f["filename"] for f in read_json(state)["_data_files"]]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{state}: no list of data files (_data_files[].filename: {exc!r}); save the dataset "
                         "again with save_to_disk") from None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{state} names {', '.join(missing)}, not in {folder}: the save_to_disk folder is incomplete; "
                         "copy it again, or save it again with save_to_disk")
    row = 0  # counted over all the shards, as `load_from_disk(folder)[row]` counts
    for file in files:
        try:
            source = memory_map(str(file))
            reader = ipc.open_stream(source)
        except Exception as exc:  # noqa: BLE001 - pyarrow's own error types: one line naming the file
            raise unreadable(file, "this Arrow file", exc) from None
        with source:
            check_columns(reader.schema.names, TABLE_COLUMNS, shown=shown)
            # to_pylist copies out of the map, so closing it after the file is safe
            row = yield from batch_examples(guarded(reader, file, "this Arrow file"), shown=shown, folder=folder,
                                            opts=opts, first_row=row)


def split_folder(path: Path, opts: LoadOptions) -> tuple[Path, str]:
    """The folder of one Dataset (a split of a DatasetDict, default "train") and how errors name it."""
    if not (path / "dataset_dict.json").is_file():
        saved_split = read_json(path / "state.json").get("_split")
        if opts.split is not None and opts.split != saved_split:
            raise ValueError(f"{opts.shown}: is a single dataset (split {saved_split!r}), not a DatasetDict; "
                             f"drop the split {opts.split!r}")
        return path, opts.shown
    splits = read_json(path / "dataset_dict.json").get("splits")
    if not isinstance(splits, list) or not all(isinstance(x, str) for x in splits):
        raise ValueError(f"{path / 'dataset_dict.json'}: no list of \"splits\"; save the DatasetDict again with "
                         "save_to_disk")
    split = opts.split or opts.default_split
    if split not in splits:
        raise ValueError(f"{opts.shown}: no split {split!r}; splits present: {', '.join(splits)}")
    return path / split, os.path.join(opts.shown, split)


def hf_example(record: dict, *, where: str, base: Path, opts: LoadOptions) -> Example:
    """One table row (save_to_disk or parquet) as an Example. Images: `image` or `images`; question: `question`,
    or Geometry3K's `problem` with its `<image>` placeholder removed."""
    image_col = "image" if "image" in record else "images"
    images = table_images(record[image_col], where=where, base=base)
    sizes = [image_size(src, where=where, verify=opts.verify_images) for src in images]
    if "question" in record:
        question = need_str(record["question"], "question", where=where)
    else:
        question = need_str(record["problem"], "problem", where=where).replace(IMAGE_PLACEHOLDER, "").strip()
    choices = str_list(record.get("choices"), "choices", where=where)
    options = str_list(record.get("options"), "options", where=where)
    known = {image_col, "question", "answer", "reference_steps", "choices", "options", "bboxs"}
    if "question" not in record:
        known.add("problem")
    metadata = {k: v for k, v in record.items() if k not in known}
    if choices and options and options != choices:  # two different lists: keep the second one visible
        metadata["options"] = options
    return Example(
        question=question,
        answers=answer_list(record["answer"], where=where),
        images=images,
        boxes=check_boxes(record.get("bboxs"), sizes[0], where=where),
        choices=choices or options,
        reference_steps=str_list(record.get("reference_steps"), "reference_steps", where=where),
        metadata=metadata,
        origin=where,
    )


# ---------------------------------------------------------------------------------------------- geometry3k
def parquet_splits(path: Path) -> dict[str, list[Path]]:
    """{split: sorted parquet shards} from `path` or `path/data`, by the HF name `{split}-00000-of-00001.parquet`."""
    splits: dict[str, list[Path]] = {}
    for folder in (path, path / "data"):
        for f in sorted(folder.glob("*.parquet")):
            match = PARQUET_RE.match(f.name)
            if match:
                splits.setdefault(match["split"], []).append(f)
    return splits


def load_geometry3k(path: Path, opts: LoadOptions) -> Iterator[Example | BadRecord]:
    splits = parquet_splits(path)
    split = opts.split or opts.default_split
    if split not in splits:
        raise ValueError(f"{opts.shown}: no split {split!r}; splits present: {', '.join(sorted(splits))}")
    for file in splits[split]:
        yield from parquet_rows(file, os.path.join(opts.shown, os.path.relpath(file, path)), path, opts)


def load_parquet(path: Path, opts: LoadOptions) -> Iterator[Example | BadRecord]:
    """One .parquet file: the same columns as a save_to_disk folder, or Geometry3K's."""
    yield from parquet_rows(path, opts.shown, path.parent, opts)


def parquet_rows(file: Path, shown: str, folder: Path, opts: LoadOptions) -> Iterator[Example | BadRecord]:
    from pyarrow import parquet  # imported here so that `import data` stays light

    try:
        table = parquet.ParquetFile(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow's own error types: one line naming the file
        raise unreadable(file, "this parquet file", exc) from None
    check_columns(table.schema_arrow.names, TABLE_COLUMNS, shown=shown)
    batches = guarded(table.iter_batches(batch_size=64), file, "this parquet file")
    yield from batch_examples(batches, shown=shown, folder=folder, opts=opts)


def batch_examples(batches, *, shown: str, folder: Path, opts: LoadOptions,
                   first_row: int = 0) -> Generator[Example | BadRecord, None, int]:
    """Every record of a stream of Arrow record batches as an Example, or the BadRecord naming its row
    (`shown:row N`, N counted from first_row); returns the next row number."""
    row = first_row
    for batch in batches:
        for record in batch.to_pylist():
            where = f"{shown}:row {row}"
            row += 1
            try:
                yield hf_example(record, where=where, base=Path(opts.image_root or folder), opts=opts)
            except BadRecord as bad:
                yield bad
    return row


# ---------------------------------------------------------------------------------------------- shared
def unreadable(path: Path, what: str, exc: BaseException) -> ValueError:
    """A whole file that cannot be read, as one line naming it and what to do (data/'s side of the file guard)."""
    reason = (str(exc).strip().splitlines() or [""])[0][:200]
    return ValueError(f"{path}: cannot read {what} ({type(exc).__name__}: {reason}); the dataset is damaged or "
                      "incomplete: copy it again (python -m data.check PATH shows what loads)")


def guarded(batches, path: Path, what: str) -> Iterator:
    """`batches` as they come, a failure to read the next one (a cut or corrupt file) turned into `unreadable`."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - pyarrow's own error types
            raise unreadable(path, what, exc) from None
        yield batch


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:  # missing, not UTF-8, not JSON
        raise unreadable(path, "this save_to_disk metadata file", exc) from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}; save the dataset again")
    return value


def check_columns(names: list[str], required: list[str], *, shown: str) -> None:
    """Raise ValueError naming the folder, the missing column and the columns present. `a|b`: either will do."""
    for column in required:
        alternatives = column.split("|")
        if not any(alt in names for alt in alternatives):
            wanted = " or ".join(repr(alt) for alt in alternatives)
            raise ValueError(f"{shown}: missing column {wanted}; columns present: {', '.join(names)}")


def table_images(cell, *, where: str, base: Path) -> list[bytes | str]:
    """The images of one cell: a {bytes, path} struct (Bytes win; a lone path is resolved), plain bytes or a path
    string, or a list of these."""
    cells = cell if isinstance(cell, list) else [cell]
    if cell is None or not cells:
        raise BadRecord(where, "no image (the image cell is empty)")
    images: list[bytes | str] = []
    for item in cells:
        if isinstance(item, (bytes, str)) and item:  # a plain binary or string column: bytes or a path
            images.append(item if isinstance(item, bytes) else resolve_path(item, base))
            continue
        if not isinstance(item, dict) or not (item.get("bytes") or item.get("path")):
            raise BadRecord(where, f"image cell {item!r:.80} has neither bytes nor a path")
        images.append(item["bytes"] if item.get("bytes") else resolve_path(item["path"], base))
    return images
