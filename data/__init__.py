"""Datasets in, `Example` records out: `load_examples(path)` detects the format and loads it.

    from data import load_examples, BadRecord
    result = load_examples("train.jsonl", skip_bad=True)   # -> LoadResult(format, examples, skipped)

Check a dataset from the shell with `python -m data.check PATH`. Formats: see data/loaders.py (FORMATS).
"""

from data.example import Example, open_image
from data.loaders import FORMATS, detect_format, has_splits, load_examples, split_names, subsample
from data.records import BadRecord, LoadResult

__all__ = ["BadRecord", "Example", "FORMATS", "LoadResult", "detect_format", "has_splits", "load_examples", "open_image", "split_names",
           "subsample"]
