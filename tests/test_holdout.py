"""Held-out data by construction (data/holdout.py, engine/setup/data_setup.py): a content-hash split that is the same
on every run, order and folder; training never reads the held-out part; a single Dataset's named split works; and
held-out examples that training also reads are counted and said.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_holdout.py`.
"""

from __future__ import annotations

import hashlib
import random
import shutil

import pytest

from data import Example, load_examples
from data.holdout import content_key, is_held_out, overlap, split_by_content
from engine.config.parsing import build_config
from engine.config.settings import Config
from engine.setup.data_setup import eval_overlap, held_out_fraction, load_data, load_eval, load_train
from tests.data_fixtures import png_bytes, save_png, write_lines


def dataset(folder, n: int = 60):
    """n examples over n/3 images (three questions each), as a generic JSONL."""
    for i in range(n // 3):
        save_png(folder / f"{i}.png", (8 + i, 8), (i, 2 * i, 3 * i))
    return write_lines(folder / "d.jsonl", [{"image": f"{i // 3}.png", "question": f"q{i % 3}", "answer": "a"}
                                            for i in range(n)])


def test_the_key_is_the_content_by_hand(tmp_path):
    image = png_bytes((4, 4))
    path = tmp_path / "x.png"
    path.write_bytes(image)
    # by hand: sha256 over (sha256 of each image's bytes) + NUL + the question's UTF-8
    expected = hashlib.sha256(hashlib.sha256(image).digest() + b"\0" + "What?".encode()).hexdigest()
    assert content_key(Example("What?", ["a"], [str(path)])) == expected
    assert content_key(Example("What?", ["b"], [image])) == expected  # bytes or a path: the same content
    assert content_key(Example("What", ["a"], [image])) != expected
    assert is_held_out("0" * 64, 0.01) and not is_held_out("f" * 64, 0.99) and not is_held_out("8" + "0" * 63, 0.5)


def test_the_split_depends_on_content_only(tmp_path):
    path = dataset(tmp_path / "a")
    examples = load_examples(path).examples
    keep, held = split_by_content(examples, 0.25)
    assert len(keep) + len(held) == 60 and 5 <= len(held) <= 25 and overlap(keep, held) == 0
    shuffled = examples[:]
    random.Random(1).shuffle(shuffled)
    assert {e.origin for e in split_by_content(shuffled, 0.25)[1]} == {e.origin for e in held}  # any order
    moved = tmp_path / "b"
    shutil.copytree(tmp_path / "a", moved)  # another folder, another run: the same examples held out
    assert [e.question + e.images[0].rsplit("/", 1)[1] for e in split_by_content(load_examples(
        moved / "d.jsonl").examples, 0.25)[1]] == [e.question + e.images[0].rsplit("/", 1)[1] for e in held]
    assert split_by_content(examples, 0.0) == (examples, [])


def config(*flags: str) -> Config:
    return build_config(Config, overrides=list(flags))


def test_training_never_reads_the_held_out_fraction(tmp_path, capsys):
    path = str(dataset(tmp_path))
    cfg = config("--data.train", path, "--data.eval_fraction", "0.25")
    train, held = load_data(cfg)
    assert len(train) + len(held) == 60 and held and overlap(train, held) == 0
    assert [e.origin for e in load_eval(cfg, verbose=False)] == [e.origin for e in held]  # eval.py reads the same
    assert [e.origin for e in load_train(cfg, verbose=False)] == [e.origin for e in train]
    assert f"{len(held)} of 60 examples of {path} held out for evaluation by content" in capsys.readouterr().out
    with pytest.raises(ValueError, match="both name the held-out set"):
        held_out_fraction(config("--data.train", path, "--data.eval", "other.jsonl", "--data.eval_fraction", "0.1"))
    with pytest.raises(ValueError, match="holds out none of them"):
        load_data(config("--data.train", path, "--data.eval_fraction", "1e-9"), verbose=False)


def test_a_single_dataset_named_as_both_gets_a_real_test_split(tmp_path, capsys):
    pytest.importorskip("datasets", reason="save_to_disk folders are written with `datasets` (requirements-dev)")
    from tests.seed_fixtures import seed003_dataset

    single = str(seed003_dataset(tmp_path / "single", 40, seed=3))
    cfg = config("--data.train", single, "--data.train_split", "train", "--data.eval", single,
                 "--data.eval_split", "test")
    assert held_out_fraction(cfg) == 0.1  # said in one line, below
    train, held = load_data(cfg)
    assert len(train) + len(held) == 40 and held and overlap(train, held) == 0
    assert "split 'test' of data without splits: data.eval_fraction 0.1" in capsys.readouterr().out
    # a single Dataset given as both without a split: evaluation on the training rows, counted and said
    same = config("--data.train", single, "--data.eval", single)
    train, held = load_data(same, verbose=False)
    assert eval_overlap(train, held) == 40
    assert "warning: 40 of 40 held-out examples are also training examples" in capsys.readouterr().out
