"""The run's data from its config: the one place where train.py and eval.py turn `[data]` into Examples.

    train, held_out = load_data(cfg)        # training examples (subsampled) and held-out examples
    held_out = load_eval(cfg)               # eval.py: held-out data only
    cfg = with_epochs(cfg, len(train))      # sft.epochs / rl.epochs -> step counts

Every format `data.load_examples` reads works for both (`python -m data.check PATH` shows what it reads). A split
is read only where the data has splits: the training split defaults to "train", the held-out one to "test".

Held out by construction (data/holdout.py): with `data.eval_fraction F` the held-out set is the fraction F of
data.train chosen by content (a hash of image bytes and question), and training never reads it. Data without
splits (a JSONL or parquet file, a single save_to_disk Dataset) given as both data.train and data.eval with a named
data.eval_split is split the same way (F = 0.1 when eval_fraction is 0, said in one line): its 'test' is the
held-out part, its 'train' the rest. `eval_overlap` counts held-out examples that training also reads.
Given the model's `processing` (models.load.load_processing: tokenizer and image processor, no weights), every
record is also held to what the model will take (models/admit.py), so one it would refuse at step N fails here, or
is skipped and named with `data.skip_bad` (`python -m data.check PATH --model DIR` runs the same check).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

from data import Example, has_splits, load_examples, subsample
from data.holdout import overlap, split_by_content
from engine.config.settings import Config
from models.admit import example_check

DEFAULT_FRACTION = 0.1  # a named eval_split of data without splits, when data.eval_fraction is 0


def model_check(cfg: Config, processing):
    """The per-record check of what the model will take (None without `processing`): its image processor on each
    image as the model sees it (after data.image_short_side)."""
    return None if processing is None else example_check(processing, short_side=cfg.data.image_short_side)


def _load(path: str, cfg: Config, split: str, default_split: str, verbose: bool,
          processing=None) -> tuple[list[Example], str]:
    d = cfg.data
    # Every image decoded in full and held to the pixel cap and to the model's processor: a broken one stops (or is
    # skipped) here, not at step N.
    result = load_examples(path, image_root=d.image_root or None, split=split or None, default_split=default_split,
                           skip_bad=d.skip_bad, verify_images=True, max_image_pixels=d.max_image_pixels,
                           oversized=d.oversized_images, model_check=model_check(cfg, processing))
    for msg in (result.notes + [f"skipped: {m}" for m in result.skipped]) if verbose else ():
        print(msg)
    if verbose and result.skipped:
        print(f"data: {path}: skipped {len(result.skipped)} bad records (data.skip_bad), each named above")
    return result.examples, result.format


def _same(a: str, b: str) -> bool:
    return bool(a) and bool(b) and os.path.realpath(a) == os.path.realpath(b)


def held_out_fraction(cfg: Config) -> float:
    """The fraction of data.train held out by content as the evaluation set (0: none; module docstring)."""
    d = cfg.data
    if d.eval and not _same(d.eval, d.train):
        if d.eval_fraction > 0:
            raise ValueError(f"data.eval ({d.eval}) and data.eval_fraction ({d.eval_fraction}) both name the held-out "
                             "set: keep one (data.eval_fraction holds out part of data.train)")
        return 0.0
    if d.eval_fraction > 0:
        return d.eval_fraction
    if d.eval and d.eval_split and not has_splits(d.train):
        return DEFAULT_FRACTION  # a named split of data that has none: its held-out part
    return 0.0


def _train_split(cfg: Config, fraction: float) -> str:
    """data.train_split, except that 'train' of data without splits is the part left after the holdout."""
    d = cfg.data
    if fraction > 0 and d.train_split == "train" and not has_splits(d.train):
        return ""
    return d.train_split


def _split_train(cfg: Config, verbose: bool, processing=None) -> tuple[list[Example], list[Example], str]:
    """(training examples before subsampling, held-out examples, format) of data.train."""
    if not cfg.data.train:  # checked here, not in Config: eval.py needs no training data
        raise ValueError("data.train is empty: point it at a dataset (python -m data.check PATH tells the format)")
    fraction = held_out_fraction(cfg)
    examples, fmt = _load(cfg.data.train, cfg, _train_split(cfg, fraction), "train", verbose, processing)
    kept, held = split_by_content(examples, fraction)
    if fraction and verbose:
        why = f"data.eval_fraction {fraction:g}" if cfg.data.eval_fraction else \
            f"split {cfg.data.eval_split!r} of data without splits: data.eval_fraction {fraction:g}"
        print(f"data: {len(held)} of {len(examples)} examples of {cfg.data.train} held out for evaluation by content "
              f"({why}); training never reads them")
    if fraction and not held:
        raise ValueError(f"data.eval_fraction {fraction:g} of {len(examples)} examples in {cfg.data.train} holds out "
                         "none of them: raise it, or give held-out data as data.eval")
    return kept, held, fmt


def _kept(cfg: Config, examples: list[Example], fmt: str, verbose: bool) -> list[Example]:
    kept = subsample(examples, cfg.data.num_samples, cfg.train.seed)
    if verbose:
        drawn = f", {len(kept)} drawn (data.num_samples)" if len(kept) < len(examples) else ""
        print(f"data: {len(examples)} training examples ({fmt}){drawn}")
    return kept


def _first(cfg: Config, examples: list[Example], what: str, verbose: bool) -> list[Example]:
    kept = examples[: cfg.data.num_eval_examples or None]
    if verbose:
        print(f"data: {len(kept)} held-out examples ({what})")
    return kept


def load_train(cfg: Config, verbose: bool = True, processing=None) -> list[Example]:
    """The training examples: `data.train` (its `train_split`) less the held-out part, `data.num_samples` of them
    when set."""
    examples, _, fmt = _split_train(cfg, verbose, processing)
    return _kept(cfg, examples, fmt, verbose)


def load_sft_final(cfg: Config, verbose: bool = True, processing=None) -> list[Example]:
    """The examples of the SFT stage's last phase: `sft.final_train` (its "train" split), all of them."""
    examples, fmt = _load(cfg.sft.final_train, cfg, cfg.data.train_split, "train", verbose, processing)
    if not examples:
        raise ValueError(f"sft.final_train {cfg.sft.final_train}: no examples to train on")
    if verbose:
        print(f"data: {len(examples)} examples for the last {cfg.sft.final_steps} SFT steps ({fmt}, sft.final_train)")
    return examples


def load_eval(cfg: Config, verbose: bool = True, processing=None) -> list[Example]:
    """The held-out examples: the held-out part of data.train (data.eval_fraction), else `data.eval` (its
    `eval_split`); the first `data.num_eval_examples` when set."""
    if held_out_fraction(cfg):
        _, held, fmt = _split_train(cfg, verbose, processing)
        return _first(cfg, held, f"{fmt}, held out of data.train", verbose)
    if not cfg.data.eval:
        return []
    examples, fmt = _load(cfg.data.eval, cfg, cfg.data.eval_split, "test", verbose, processing)
    return _first(cfg, examples, fmt, verbose)


def load_data(cfg: Config, verbose: bool = True, processing=None) -> tuple[list[Example], list[Example]]:
    """(training examples, held-out examples); data.train is read once when the held-out set is part of it."""
    if held_out_fraction(cfg):
        examples, held, fmt = _split_train(cfg, verbose, processing)
        return _kept(cfg, examples, fmt, verbose), _first(cfg, held, f"{fmt}, held out of data.train", verbose)
    return load_train(cfg, verbose, processing), load_eval(cfg, verbose, processing)


def eval_overlap(train: list[Example], held: list[Example], verbose: bool = True, who: str = "data") -> int:
    """How many held-out examples training also reads (same image and question), said in one line when any."""
    n = overlap(train, held) if held else 0
    if n and verbose:
        print(f"{who}: warning: {n} of {len(held)} held-out examples are also training examples (same image and "
              "question): held-out metrics on them measure memory, not generalisation. Hold out a part of the "
              "training data with --data.eval_fraction 0.1, or give other data.eval")
    return n


def with_epochs(cfg: Config, num_examples: int) -> Config:
    """The config with `sft.steps` / `rl.steps` set from `sft.epochs` / `rl.epochs` where those are > 0:
    ceil(epochs x examples / examples per step), so the last partial batch still counts as a step. The epochs are
    then set to 0: the resolved config (config.toml) holds the step counts that ran, which a later --config of it
    reads as they are."""
    sft, rl = cfg.sft, cfg.rl
    if sft.epochs > 0:
        sft = replace(sft, steps=max(1, math.ceil(sft.epochs * num_examples / sft.batch_size)), epochs=0.0)
    if rl.epochs > 0:
        rl = replace(rl, steps=max(1, math.ceil(rl.epochs * num_examples / cfg.rollout.prompts_per_step)),
                     epochs=0.0)
    return replace(cfg, sft=sft, rl=rl)


def budget_lines(asked: Config, resolved: Config, num_examples: int) -> list[str]:
    """What each stage of train.stage will run, said once at start: 'sft: 30 steps (1.25 epochs of 24 examples,
    16 a step; sft.steps)'. `asked`: the config before with_epochs, `resolved`: after."""
    lines = []
    for stage in resolved.train.stage.split(","):
        steps = getattr(resolved, stage).steps
        per_step = resolved.sft.batch_size if stage == "sft" else resolved.rollout.prompts_per_step
        what = "examples" if stage == "sft" else "prompts"
        source = f"{stage}.epochs {getattr(asked, stage).epochs:g}" if getattr(asked, stage).epochs > 0 else \
            f"{stage}.steps"
        final = resolved.sft.final_steps if stage == "sft" and resolved.sft.final_train else 0
        tail = f"; the last {final} read sft.final_train" if final else ""
        lines.append(f"{stage}: {steps} steps ({(steps - final) * per_step / max(num_examples, 1):.3g} epochs of "
                     f"{num_examples} {what}, {per_step} a step; from {source}{tail})")
    return lines
