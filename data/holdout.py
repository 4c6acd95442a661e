"""Held-out data by construction: a split by content, and the overlap between two sets of examples.

    key = content_key(example)                      # sha256 of the images' bytes and the question
    train, held = split_by_content(examples, 0.1)   # ~10 % held out, the same ones on every run
    overlap(train, held)                            # 0: no held-out example is also a training example

An example's key hashes the bytes of each of its images (a path is read, bytes are taken as they are) and its
question, so the split depends on nothing but content: not on the order, the seed, the number of processes or the
folder the data lies in. An example is held out when its key, read as a number in [0, 1), is below the fraction;
two records of the same image and question therefore always land on the same side. The overlap counts
held-out examples whose image and question also occur among the training examples (answers are not compared:
the same question about the same image asked twice is the same test).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from data.example import Example

_KEY_SPACE = 16**16  # the first 16 hex digits of the hash, read as an integer


def content_key(example: Example) -> str:
    """Hex sha256 of the example's images (their bytes, in order) and its question."""
    h = hashlib.sha256()
    for src in example.images:
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
        h.update(hashlib.sha256(data).digest())
    h.update(b"\0" + example.question.encode("utf-8"))
    return h.hexdigest()


def is_held_out(key: str, fraction: float) -> bool:
    """Whether an example of this content key is in the held-out `fraction`."""
    return int(key[:16], 16) / _KEY_SPACE < fraction


def split_by_content(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(kept for training, held out), each in data order; `fraction` 0 holds out nothing."""
    if fraction <= 0:
        return list(examples), []
    keep, held = [], []
    for e in examples:
        (held if is_held_out(content_key(e), fraction) else keep).append(e)
    return keep, held


def overlap(train: list[Example], held: list[Example]) -> int:
    """How many of `held` have the image(s) and question of some example in `train`."""
    seen = {content_key(e) for e in train}
    return sum(content_key(e) in seen for e in held)
