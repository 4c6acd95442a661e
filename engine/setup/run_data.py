"""A run's data, once: the model's processing loaded first (tokenizer, processor; no weights), then every dataset
the run trains and evaluates on held to it, epochs turned into steps, and the content fingerprints a resume is
compared by (engine/setup/resume.py).

    data = load_run_data(cfg, verbose=True)
    data.cfg, data.train, data.held_out, data.final, data.fingerprints, data.processing, data.eval_overlap

It says the budget that will run (engine.setup.data_setup.budget_lines) and how many held-out examples training
also reads (eval_overlap).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data import Example
from engine.config.settings import Config
from engine.setup.data_setup import budget_lines, eval_overlap, load_data, load_sft_final, with_epochs
from engine.setup.resume import fingerprint
from engine.setup.run_setup import load_model_processing


@dataclass
class RunData:
    cfg: Config  # with sft.epochs / rl.epochs turned into step counts
    processing: object  # models.load.Processing: what load_policy then loads the weights with
    train: list[Example]
    held_out: list[Example]
    final: list[Example] = field(default_factory=list)  # sft.final_train: the SFT stage's last phase
    fingerprints: dict[str, str] = field(default_factory=dict)  # "data.train" (and "sft.final_train") -> content hash
    eval_overlap: int = 0  # held-out examples that training also reads (their metrics measure memory)


def load_run_data(cfg: Config, verbose: bool = True) -> RunData:
    """Every record checked against the model it will meet (a record the model would refuse fails here, or is
    skipped and named with data.skip_bad), before the model's weights load."""
    processing = load_model_processing(cfg)
    train, held_out = load_data(cfg, verbose=verbose, processing=processing)
    resolved = with_epochs(cfg, len(train))
    for line in budget_lines(cfg, resolved, len(train)) if verbose else ():
        print(line)  # the budget that will run, whichever setting gave it
    cfg = resolved
    final = []
    if cfg.sft.final_steps and "sft" in cfg.train.stage.split(","):
        if cfg.sft.final_steps > cfg.sft.steps:
            raise ValueError(f"sft.final_steps = {cfg.sft.final_steps} is more than sft.steps = {cfg.sft.steps}: "
                             "the final phase is part of the SFT stage")
        final = load_sft_final(cfg, verbose=verbose, processing=processing)
    prints = {"data.train": fingerprint(train), **({"sft.final_train": fingerprint(final)} if final else {})}
    return RunData(cfg=cfg, processing=processing, train=train, held_out=held_out, final=final, fingerprints=prints,
                   eval_overlap=eval_overlap(train + final, held_out, verbose=verbose))
