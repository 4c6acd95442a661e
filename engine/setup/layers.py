"""How a command's config is layered, and what evaluation and inference ask a model with.

    cfg = layered_config("configs/seed001.toml", ["--sft.steps", "30"])    # train.py: defaults, preset, flags
    cfg, notes = config_for_model("runs/seed003", None, argv, "eval")        # eval.py / infer.py: the run's own
    run_cfg = run_config(resolve_model("runs/seed003"))                      # a run's resolved config.toml

Layers, lowest first: the defaults in code (or, for eval.py, infer.py and engine.infer.Assistant, the resolved
config.toml of the run the model came from), the TOML preset (--config), then command-line flags.

One rule for settings that say one thing two ways (ALTERNATIVES: a stage's steps or its epochs; held-out data
as a dataset or as a fraction of the training data): the highest layer that names either one decides. A flag
`--sft.steps 30` beats the preset's `sft.epochs = 3` (which is switched off, not silently winning); both named in
one layer, each with a value that is not "off", is an error naming both.

What a model is asked with: when the model is a run, a checkpoint or an export of a run, its config.toml holds the
prompt template, system prompt, prefill, tool protocol and tools, sampling limits and rewards it was trained
with, and evaluation and inference use it by default. A preset or flags may still override it; every key of
ASKING (how the model is asked or scored) that then differs from the run's own is printed as one line,
`eval: rollout.max_new_tokens 48 (run trained with 96)`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.config import plugins
from engine.config.parsing import build_config, differences, to_dict
from engine.config.settings import Config

# (a, b): two ways to say one thing; each one's "off" value, which means the other one speaks.
ALTERNATIVES = (("sft.steps", "sft.epochs"), ("rl.steps", "rl.epochs"), ("data.eval", "data.eval_fraction"))
OFF = {"sft.steps": 0, "sft.epochs": 0.0, "rl.steps": 0, "rl.epochs": 0.0, "data.eval": "",
       "data.eval_fraction": 0.0}

# Settings that change how a model is asked (prompt, images, tools, limits) or how its answers are scored; a key
# ending in "." covers its whole section.
ASKING = ("data.system_prompt", "data.question_template", "data.prefill", "data.image_short_side",
          "data.max_pixels", "data.min_pixels", "model.box_frame", "rollout.protocol", "rollout.tools",
          "rollout.max_new_tokens", "rollout.max_total_tokens", "rollout.max_tool_calls", "rollout.max_images",
          "reward.", "eval.metrics")


def _toml_keys(path: str | Path | None) -> dict[str, Any]:
    """{dotted key: value} of every setting a TOML preset names (build_config has checked the file already)."""
    if path is None:
        return {}
    settings, out = set(to_dict(Config())), {}

    def walk(table: dict, prefix: str) -> None:
        for k, v in table.items():
            if prefix + k in settings:  # a setting (a dict setting such as reward.weights is one too)
                out[prefix + k] = v
            elif isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(tomllib.loads(Path(path).read_text(encoding="utf-8")), "")
    return out


def _flag_keys(overrides: list[str]) -> dict[str, Any]:
    """{dotted key: value} of every setting the flags name (values parsed as build_config parses them)."""
    named = [f[2:].partition("=")[0].replace("-", "_") for f in overrides if f.startswith("--")]
    values = to_dict(build_config(Config, overrides=list(overrides), validate=False))
    return {k: values[k] for k in named if k in values}


def _switch_off(cfg: Config, key: str) -> Config:
    section, name = key.split(".")
    return replace(cfg, **{section: replace(getattr(cfg, section), **{name: OFF[key]})})


def one_rule(cfg: Config, layers: list[tuple[str, dict[str, Any]]]) -> Config:
    """The rule for ALTERNATIVES (module docstring). `layers`: (where, {key: value it names}), highest first; the
    first layer that names either key of a pair decides it (naming only "off" values leaves it to the layers
    below, as merged into `cfg`)."""
    for a, b in ALTERNATIVES:
        for where, named in layers:
            if a not in named and b not in named:
                continue
            said = [k for k in (a, b) if k in named and named[k] != OFF[k]]
            if len(said) == 2:
                raise ValueError(f"{where} sets both {a} = {named[a]!r} and {b} = {named[b]!r}, two ways of saying "
                                 f"one thing: keep one of them")
            if said:
                cfg = _switch_off(cfg, b if said == [a] else a)
            break
    return cfg


def layered_config(toml_path: str | Path | None, overrides: list[str], base: Config | None = None,
                   notes: list[str] | None = None) -> Config:
    """`base` (default: the defaults in code), the preset, the flags; then the one rule for ALTERNATIVES; validated.
    `notes` gets a line per setting of the preset that the flags made unused (engine.config.parsing.build_config)."""
    cfg = build_config(Config, toml_path=toml_path, overrides=overrides, base=base, validate=False, notes=notes)
    cfg = one_rule(cfg, [("the command line", _flag_keys(overrides)), (str(toml_path), _toml_keys(toml_path))])
    return build_config(Config, base=cfg)


def run_config(source) -> Config | None:
    """The resolved config.toml of the run an engine.setup.model_source.ModelSource came from: the checkpoint's own
    (what that checkpoint was trained with), else the run folder's; None for a model that is not from a run."""
    folders = []
    for d in (source.adapter_dir, source.model_dir):
        if d is not None and d.name == "model" and d.parent.parent.name == "checkpoints":
            folders.append(d.parent)  # a checkpoint folder holds model/ and the config.toml it was trained with
    if source.run_dir is not None:
        folders.append(source.run_dir)
    for folder in folders:
        path = folder / "config.toml"
        if path.is_file():
            try:
                plugins.load_all(plugins.listed_in(path.read_text(encoding="utf-8"), str(path)), path.parent)
                return build_config(Config, toml_path=path)
            except ValueError as exc:
                raise ValueError(f"{exc} (the config of the run the model came from; pass --config PRESET with "
                                 "every setting, or fix it)") from None
    return None


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, (int, float)) else repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def asking_differences(run_cfg: Config, cfg: Config, who: str) -> list[str]:
    """One line per ASKING key where `cfg` differs from the run's own: 'eval: rollout.max_new_tokens 48 (run
    trained with 96)'."""
    return [f"{who}: {key} {_shown(mine)} (run trained with {_shown(theirs)})"
            for key, theirs, mine in differences(run_cfg, cfg)
            if any(key == k or (k.endswith(".") and key.startswith(k)) for k in ASKING)]


def config_for_model(model: str | Path | None, toml_path: str | Path | None, overrides: list[str],
                     who: str) -> tuple[Config, list[str], Config | None]:
    """(the config eval.py / infer.py ask `model` with, the lines to print about it, the run's own config or None).
    `model` None: the config's own model.path (eval.py's --model.path), else the tiny model."""
    from engine.setup.model_source import resolve_model
    from models.tiny import tiny_model_dir

    plain = layered_config(toml_path, overrides)
    path = model or plain.model.path or tiny_model_dir(plain.model.tiny_arch, seed=plain.train.seed)
    run_cfg = run_config(resolve_model(path))
    if run_cfg is None:
        asked = f"the defaults and {toml_path}" if toml_path else "the defaults (no --config given)"
        return plain, [f"{who}: {path} is not from a run (no config.toml beside it): asking with {asked}"], None
    cfg = layered_config(toml_path, overrides, base=run_cfg)
    lines = asking_differences(run_cfg, cfg, who)
    then = f", then {toml_path} and the flags" if toml_path else ", then the flags"
    head = f"{who}: asking as the run was trained (its config.toml{then})"
    return cfg, [head + (f"; {len(lines)} setting(s) differ from the run's:" if lines else "")] + lines, run_cfg
