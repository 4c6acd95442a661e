"""Train a VLM with SFT and/or GRPO-family RL.

    python train.py --config configs/demo.toml [--rollout.group_size 8 ...]
    torchrun --nproc_per_node N train.py --config ...     # FSDP2: N processes share the model and the prompts
    python train.py --help-config                         # every setting, its default and meaning
    python train.py --config ... --plugin my_loss.py      # a research fork in one file (engine/config/plugins.py)

Exit status: 0 done; 2 a bad setting, bad data or an unwritable run folder (one line says which); 3 stopped after
optim.max_skipped_updates NaN/inf updates in a row; 130 / 143 stopped by SIGINT / SIGTERM after writing a
checkpoint (continue with --train.resume true).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from engine.config import plugins
from engine.config.parsing import describe
from engine.config.settings import Config
from engine.setup.layers import layered_config


def split_args(argv: list[str], description: str | None = None, parents: tuple = ()) -> tuple[str | None, list[str]]:
    """(the --config preset, the dotted overrides) of a command line, after importing its plugins (--plugin
    FILE|module, repeatable, and a config file's `plugins = [...]`): their names and settings are then valid
    choices, and the overrides record them (absolute paths) as `plugins`. `parents`: a command's own argparse
    parsers (add_help=False), listed in --help; the command parses its own flags itself (parse_known_args) and
    passes the rest here."""
    parser = argparse.ArgumentParser(description=description or __doc__.split("\n\n")[0], add_help=True,
                                     parents=list(parents),
                                     epilog="Any config key can be set as --section.key VALUE (see --help-config).")
    parser.add_argument("--config", help="TOML preset (configs/*.toml)")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py|module",
                        help="import a file or module that registers losses, estimators, rewards or tools before the "
                             "config is parsed (repeatable; recorded in the run's config.toml)")
    parser.add_argument("--help-config", action="store_true", help="list every config key and exit")
    args, overrides = parser.parse_known_args(argv)
    if any(o == "--plugins" or o.startswith("--plugins=") for o in overrides):
        raise ValueError("--plugins is set by --plugin FILE (repeatable) or `plugins = [...]` in a config file")
    specs = [plugins.resolve(p) for p in args.plugin]
    if args.config and Path(args.config).is_file():
        text = Path(args.config).read_text(encoding="utf-8")
        specs += [plugins.resolve(p, Path(args.config).resolve().parent) for p in plugins.listed_in(text, args.config)]
    loaded = plugins.load_all(specs)
    if args.help_config:
        print(describe(Config))
        sys.exit(0)
    if loaded:
        overrides = [*overrides, "--plugins", json.dumps(loaded)]
    return args.config, overrides


def parse(argv: list[str], description: str | None = None, parents: tuple = ()) -> Config:
    """The config from --config and dotted overrides: a flag wins over the preset, and a stage's steps and epochs
    (or data.eval and data.eval_fraction) named together in one place are an error (engine/setup/layers.py). A
    preset's setting that the flags made unused (its [algo.ppo_clip] under --algo.loss gspo) is said on stderr."""
    notes: list[str] = []
    cfg = layered_config(*split_args(argv, description, parents), notes=notes)
    for note in notes:
        print(f"config: {note}", file=sys.stderr)
    return cfg


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from engine.runtime.guard import RunStopped
    from engine.trainer import run  # heavy imports only after the config is known to be good

    try:
        summary = run(cfg)
    except ValueError as exc:  # user errors (bad data, bad paths) carry their own explanation
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the run folder's disk: full, gone read-only, removed
        print(f"error: cannot write to the run folder {cfg.train.out_dir}: {exc}. Its newest complete checkpoint "
              "(checkpoints/latest) is intact: fix the disk, then continue with --train.resume true", file=sys.stderr)
        return 2
    except RunStopped as exc:  # a signal (checkpoint written) or a streak of NaN/inf updates
        print(exc, file=sys.stderr)
        return exc.code
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports for everyone
        return 0
    print(summary_line(summary, cfg))
    return 0


def summary_line(summary: dict, cfg: Config) -> str:
    """The task's headline metrics after each stage: 'summary: iou_after_sft=0.412, iou50_after_sft=0.375 (...)'."""
    keys = [f"{m}_{tag}" for tag in ("before", "after_sft", "after_rl") for m in cfg.eval.metrics
            if f"{m}_{tag}" in summary]
    return "summary: " + ", ".join(f"{k}={summary[k]:.3f}" for k in keys) + f" ({cfg.train.out_dir}/summary.json)"


if __name__ == "__main__":
    sys.exit(main())
