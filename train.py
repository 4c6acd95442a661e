"""Train a VLM with SFT and/or GRPO-family RL.

    python train.py --config configs/demo.toml [--rollout.group_size 8 ...]
    python train.py --resume runs/demo [--rl.steps 200]   # continue a run with its own settings (RUN/config.toml)
    torchrun --nproc_per_node N train.py --config ...     # FSDP2: N processes share the model and the prompts
    python train.py --help-config                         # every setting, its default and meaning
    python train.py --config ... --plugin my_loss.py      # a research fork in one file (engine/config/plugins.py)

Exit status: 0 done; 2 a bad setting, bad data, an unreadable file, a refused resume or a run folder in use or not
writable (one line says which); 3 stopped after optim.max_skipped_updates NaN/inf updates in a row; 130 / 143 stopped
by SIGINT / SIGTERM after writing a checkpoint (continue with --resume RUN), or at once by a second one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from engine.config import plugins
from engine.config.parsing import build_config, describe
from engine.config.settings import Config
from engine.setup.layers import layered_config

RESUME_HELP = ("continue the run in folder RUN from its newest checkpoint, with the run's own settings "
               "(RUN/config.toml): flags given beside it are compared with them, and one that changes the run is "
               "refused unless --train.resume_changes names it (budgets such as --rl.steps may always be raised)")


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
    if not parents:  # train.py's own: eval.py and infer.py read a run's model, they do not continue it
        parser.add_argument("--resume", metavar="RUN", help=RESUME_HELP)
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
    if getattr(args, "resume", None) is not None:  # as --train.resume true into that folder (parse reads the run)
        if given(overrides, "train.out_dir"):
            raise ValueError(f"--resume {args.resume} and --train.out_dir name the run folder twice: a resume writes "
                             "into the run's own; drop --train.out_dir")
        overrides = [*overrides, "--train.out_dir", args.resume, "--train.resume", "true"]
    return args.config, overrides


def parse(argv: list[str], description: str | None = None, parents: tuple = ()) -> Config:
    """The config from --config and dotted overrides: a flag wins over the preset, and a stage's steps and epochs
    (or data.eval and data.eval_fraction) named together in one place are an error (engine/setup/layers.py). A
    preset's setting that the flags made unused (its [algo.ppo_clip] under --algo.loss gspo) is said on stderr.
    A resume (`--resume RUN`, or `--train.resume true` with train.out_dir) builds on the run's own config.toml, its
    plugins imported first; the trainer then compares the result with it (engine/setup/resume.py)."""
    notes: list[str] = []
    config, overrides = split_args(argv, description, parents)
    probe = build_config(Config, toml_path=config, overrides=overrides, validate=False)
    base = None
    if probe.train.resume:  # the run's own config.toml is the bottom layer: its overrides need no repeating
        from engine.setup.resume import run_config  # reads RUN/config.toml, importing its plugins (light: no torch)

        base = run_config(probe.train.out_dir)
        if base.plugins:  # the run's plugins stay; ones given now are added after them
            overrides = [*overrides, "--plugins", json.dumps(base.plugins + [p for p in probe.plugins
                                                                             if p not in base.plugins])]
    cfg = layered_config(config, overrides, base=base, notes=notes)
    for note in notes:
        print(f"config: {note}", file=sys.stderr)
    return cfg


def given(overrides: list[str], key: str) -> bool:
    """Whether a dotted key was set on the command line (--a.b V, --a.b=V, dashes for underscores)."""
    return any(flag[2:].partition("=")[0].replace("-", "_") == key for flag in overrides if flag.startswith("--"))


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nSIGINT: stopped before the run started; nothing was written", file=sys.stderr)
        return 130
    try:
        from engine.runtime.guard import RunStopped
        from engine.trainer import run  # heavy imports only after the config is known to be good
    except KeyboardInterrupt:
        print("\nSIGINT: stopped before the run started; nothing was written", file=sys.stderr)
        return 130
    try:
        summary = run(cfg)
    except ValueError as exc:  # user errors (bad data, bad paths, unreadable files) carry their own explanation
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the run folder's disk: full, gone read-only, removed
        print(f"error: cannot write to the run folder {cfg.train.out_dir}: {exc}. Its newest complete checkpoint "
              f"(checkpoints/latest) is intact: fix the disk, then continue with --resume {cfg.train.out_dir}",
              file=sys.stderr)
        return 2
    except RunStopped as exc:  # a signal (checkpoint written) or a streak of NaN/inf updates
        print(exc, file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:  # Ctrl-C before the run's handlers are in place, or a second one: stop now
        print(f"\nSIGINT: stopped at once, without a checkpoint. The newest complete checkpoint in "
              f"{cfg.train.out_dir}/checkpoints (if any) is intact: continue with --resume {cfg.train.out_dir}",
              file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports for everyone
        return 0
    print(summary_line(summary, cfg))
    return 0


def summary_line(summary: dict, cfg: Config) -> str:
    """The task's headline metrics after each stage: 'summary: iou_after_sft=0.412, iou50_after_sft=0.375 (...)'."""
    keys = [f"{m}_{tag}" for tag in ("before", "after_sft", "after_rl") for m in cfg.eval.metrics
            if f"{m}_{tag}" in summary]
    if not keys:  # nothing was evaluated: say so rather than print an empty line
        return f"summary: no held-out metrics (no data.eval, or no stage finished) ({cfg.train.out_dir}/summary.json)"
    return "summary: " + ", ".join(f"{k}={summary[k]:.3f}" for k in keys) + f" ({cfg.train.out_dir}/summary.json)"


if __name__ == "__main__":
    sys.exit(main())
