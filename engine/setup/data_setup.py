"""The run's data from its config: the one place where train.py and eval.py turn `[data]` into Examples.

    train, held_out = load_data(cfg)        # training examples (subsampled) and held-out examples
    held_out = load_eval(cfg)               # eval.py: held-out data only
    cfg = with_epochs(cfg, len(train))      # sft.epochs / rl.epochs -> step counts

Every format `data.load_examples` reads works for both (`python -m data.check PATH` shows what it reads). A split
is read only where the data has splits: the training split defaults to "train", the held-out one to "test".
Given the model's `processing` (models.load.load_processing: tokenizer and image processor, no weights), every
record is also held to what the model will take (models/admit.py), so one it would refuse at step N fails here, or
is skipped and named with `data.skip_bad` (`python -m data.check PATH --model DIR` runs the same check).
"""

from __future__ import annotations

import math
from dataclasses import replace

from data import Example, load_examples, subsample
from engine.config.settings import Config
from models.admit import example_check


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


def load_train(cfg: Config, verbose: bool = True, processing=None) -> list[Example]:
    """The training examples: `data.train` (its `train_split`), `data.num_samples` of them when set."""
    if not cfg.data.train:  # checked here, not in Config: eval.py needs no training data
        raise ValueError("data.train is empty: point it at a dataset (python -m data.check PATH tells the format)")
    examples, fmt = _load(cfg.data.train, cfg, cfg.data.train_split, "train", verbose, processing)
    kept = subsample(examples, cfg.data.num_samples, cfg.train.seed)
    if verbose:
        drawn = f", {len(kept)} drawn (data.num_samples)" if len(kept) < len(examples) else ""
        print(f"data: {len(examples)} training examples ({fmt}){drawn}")
    return kept


def load_sft_final(cfg: Config, verbose: bool = True, processing=None) -> list[Example]:
    """The examples of the SFT stage's last phase: `sft.final_train` (its "train" split), all of them."""
    examples, fmt = _load(cfg.sft.final_train, cfg, cfg.data.train_split, "train", verbose, processing)
    if not examples:
        raise ValueError(f"sft.final_train {cfg.sft.final_train}: no examples to train on")
    if verbose:
        print(f"data: {len(examples)} examples for the last {cfg.sft.final_steps} SFT steps ({fmt}, sft.final_train)")
    return examples


def load_eval(cfg: Config, verbose: bool = True, processing=None) -> list[Example]:
    """The held-out examples: `data.eval` (its `eval_split`), the first `data.num_eval_examples` when set."""
    if not cfg.data.eval:
        return []
    examples, fmt = _load(cfg.data.eval, cfg, cfg.data.eval_split, "test", verbose, processing)
    kept = examples[: cfg.data.num_eval_examples or None]
    if verbose:
        print(f"data: {len(kept)} held-out examples ({fmt})")
    return kept


def load_data(cfg: Config, verbose: bool = True, processing=None) -> tuple[list[Example], list[Example]]:
    return load_train(cfg, verbose, processing), load_eval(cfg, verbose, processing)


def with_epochs(cfg: Config, num_examples: int) -> Config:
    """The config with `sft.steps` / `rl.steps` set from `sft.epochs` / `rl.epochs` where those are > 0:
    ceil(epochs x examples / examples per step), so the last partial batch still counts as a step."""
    sft, rl = cfg.sft, cfg.rl
    if sft.epochs > 0:
        sft = replace(sft, steps=max(1, math.ceil(sft.epochs * num_examples / sft.batch_size)))
    if rl.epochs > 0:
        rl = replace(rl, steps=max(1, math.ceil(rl.epochs * num_examples / cfg.rollout.prompts_per_step)))
    return replace(cfg, sft=sft, rl=rl)
