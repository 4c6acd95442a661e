"""One path, any trained model: a model folder, a run's checkpoint, a LoRA adapter or a whole run folder.

    source = resolve_model("runs/demo/checkpoints/step_000072")   # -> its model/ folder, the run runs/demo
    vlm, source = load_any("runs/lora-run", dtype="float32")       # the adapter merged into its base on the fly

What a path may be, tried in this order:
- a Hugging Face VLM folder (config.json): loaded as is;
- a LoRA adapter folder (adapter_config.json, what a LoRA run's checkpoint holds in model/): its base model is the
  run's `model.path` from the checkpoint's config.toml (or the tiny model it names), else the adapter config's
  base_model_name_or_path; the adapter is merged into it after loading (peft's merge_and_unload);
- a checkpoint folder (holding model/): that model/ folder, as above;
- a run folder (holding checkpoints/ or merged/): its merged/ export when there is one (a LoRA run's final model),
  else its latest checkpoint. The run folder is remembered (an evaluation report plots its metrics.jsonl).

train.py starts from the same paths through `start_from` (engine/setup/run_setup.py), except a LoRA adapter: see
there why it is refused.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from engine.runtime.checkpoint import latest_checkpoint
from models.files import read_json, reading
from models.load import VLM, load_vlm
from models.tiny import tiny_model_dir


@dataclass
class ModelSource:
    model_dir: Path  # the folder weights load from (an adapter's base model when adapter_dir is set)
    adapter_dir: Path | None = None  # a LoRA adapter merged in after loading
    run_dir: Path | None = None  # the run the model came from, when known

    def describe(self) -> str:
        text = f"{self.adapter_dir} (LoRA, merged into {self.model_dir})" if self.adapter_dir else str(self.model_dir)
        return text + (f", run {self.run_dir}" if self.run_dir else "")


def _run_of(checkpoint: Path) -> Path | None:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def _base_of(adapter: Path, config_toml: Path | None) -> Path:
    """The adapter's base model: the run config's model.path (or the tiny model it trained), else peft's record."""
    if config_toml is not None and config_toml.is_file():
        with reading(config_toml, "the checkpoint's settings (to find the adapter's base model)"):
            cfg = tomllib.loads(config_toml.read_text(encoding="utf-8"))
        model, train = cfg.get("model", {}), cfg.get("train", {})
        if model.get("path"):
            return Path(model["path"])
        return tiny_model_dir(model.get("tiny_arch", "qwen2_5_vl"), seed=train.get("seed", 0))
    recorded = read_json(adapter / "adapter_config.json", "the LoRA adapter's config").get(
        "base_model_name_or_path") or ""
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    raise ValueError(f"{adapter} is a LoRA adapter whose base model is unknown: no config.toml beside it and "
                     f"base_model_name_or_path {recorded!r} is not a folder here; pass the checkpoint folder that "
                     "holds it (its config.toml names the base)")


def resolve_model(path: str | Path) -> ModelSource:
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"model {p} does not exist: pass a model folder, a run folder, a run's checkpoint folder "
                         "(runs/X/checkpoints/step_N) or a LoRA adapter folder")
    if (p / "config.json").is_file():
        run = _run_of(p.parent) if p.name in ("model", "merged") else None
        return ModelSource(model_dir=p, run_dir=run or (p.parent if p.name == "merged" else None))
    if (p / "adapter_config.json").is_file():
        checkpoint = p.parent if p.name == "model" else None
        base = _base_of(p, checkpoint / "config.toml" if checkpoint else None)
        return ModelSource(model_dir=base, adapter_dir=p, run_dir=_run_of(checkpoint) if checkpoint else None)
    if (p / "model").is_dir():
        return resolve_model(p / "model")
    if (p / "merged" / "config.json").is_file():
        return resolve_model(p / "merged")
    if (p / "checkpoints").is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise ValueError(f"{p}/checkpoints has no complete checkpoint yet (no 'latest'): train longer or pass a "
                             "model folder")
        return resolve_model(latest)
    raise ValueError(f"{p} holds no model: expected config.json (a model folder), adapter_config.json (a LoRA "
                     "adapter), model/ (a checkpoint), or checkpoints/ or merged/ (a run folder)")


def load_any(path: str | Path, **load_options) -> tuple[VLM, ModelSource]:
    """The model `path` names (see the module docstring), LoRA merged in, in eval mode. `load_options` go to
    models.load.load_vlm (dtype, device, attn_implementation, box_frame, min_pixels, max_pixels)."""
    source = resolve_model(path)
    vlm = load_vlm(source.model_dir, **load_options)
    if source.adapter_dir is not None:
        from peft import PeftModel

        with reading(source.adapter_dir / "adapter_model.safetensors", "the LoRA adapter",
                     passthrough=(MemoryError,)):
            vlm.model = PeftModel.from_pretrained(vlm.model, source.adapter_dir).merge_and_unload()
    vlm.model.eval()
    return vlm, source


def start_from(path: str | Path, out_dir: str | Path, resume: bool) -> tuple[Path, str | None]:
    """train.py's model.path as the plain model folder a new run starts from, and a line saying what was picked when
    `path` is a run or checkpoint folder (None for a model folder). Refused: a LoRA adapter (a LoRA run's
    checkpoint), because a run reloads its initial model from model.path (the KL reference, a resume) and an adapter
    is not a model by itself: the run's merged/ export is (what a finished LoRA run writes); and a model inside
    train.out_dir, the folder this run writes: continuing that run is --resume's job."""
    source = resolve_model(path)
    if source.adapter_dir is not None:
        raise ValueError(f"model.path {path} is a LoRA adapter ({source.adapter_dir}): a run starts from a whole "
                         "model. Pass the run folder once its LoRA run has finished (it then holds merged/, the "
                         f"adapter merged into {source.model_dir}), continue that run with --resume RUN, or start "
                         f"from the base model {source.model_dir}")
    out = Path(out_dir).resolve()
    if out == source.model_dir.resolve() or out in source.model_dir.resolve().parents:
        how = ("--resume continues that run from its newest checkpoint with its own model: drop --model.path"
               if resume else f"to continue that run use --resume {out_dir} (no --model.path); to start a new run "
               "from its weights, choose another --train.out_dir")
        raise ValueError(f"model.path {path} is inside train.out_dir {out_dir}, the folder this run writes: {how}")
    if source.run_dir is None or Path(path).resolve() == source.model_dir.resolve():
        return source.model_dir, None  # a plain model folder (a checkpoint's model/ given as is: said by eval alike)
    picked = Path(path).resolve() == source.run_dir.resolve()
    what = ("the merged LoRA export" if source.model_dir.name == "merged" else "the latest checkpoint") if picked \
        else f"checkpoint {source.model_dir.parent.name}"
    return source.model_dir, f"model: {source.model_dir} ({what} of run {source.run_dir})"
