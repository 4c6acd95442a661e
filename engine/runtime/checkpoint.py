"""Atomic checkpoints: a crash mid-save never leaves a broken checkpoint, and `latest` only names complete ones.

    path = save_checkpoint(run_dir, step, model=model, tokenizer=tok, optimizer=opt, scheduler=sched,
                           extra_state={"step": step, "data_pos": pos, "rng": capture_rng({"sampler": gen})},
                           config_toml=to_toml(cfg), keep_last=cfg.train.keep_checkpoints)
    ...
    if (ckpt := latest_checkpoint(run_dir)) is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched)
        restore_rng(state["rng"], {"sampler": gen})

Layout of `run_dir/checkpoints/`:
    step_000010/model/        model.save_pretrained(safe_serialization=True) (+ tokenizer, image processor):
                              `from_pretrained` loads it; for a peft model it holds the adapter only
    step_000010/optimizer.pt, scheduler.pt, state.pt (extra_state), config.toml, COMPLETE (written last)
    latest                    text file naming the newest complete folder, replaced with os.replace
A save writes everything into `.tmp-step_000010-XXXX/`, fsyncs it, writes COMPLETE, renames the folder into
place, then replaces `latest`, then prunes to `keep_last` folders (never the one `latest` names). Leftover
`.tmp-*` folders of a crashed save are never read and are deleted by the next save. Call on one rank only.
Under FSDP pass what every rank gathered (engine/runtime/distributed.py): `model_state=full_state_dict(model)` (the
weights are written from it; a peft model writes its adapter through engine.runtime.lora.save_adapter) and
`optimizer_state=full_optimizer_state_dict(model, opt)` (written as is; `read_optimizer_state` reads it back).

Loading is in place, into the existing model object (before FSDP sharding: full tensors expected); `model=None`
skips the weights (a resumed trainer loaded them before sharding).
`save_pretrained` may rename or transpose weights to the hub layout (transformers 5 reverts its load-time
conversions, e.g. Qwen2.5-VL's `model.language_model.*` → `model.*`, Qwen3-VL-MoE's transposed experts), so the
file's keys are mapped back by asking transformers for the same reverted view of the model's own tensors:
each reverted tensor is a view of a parameter, and the file's tensor is copied into that view. Every parameter
and persistent buffer must be covered (tied weights count once), and every tensor in the file must be used.
Nothing in a run folder executes on resume: weights are safetensors, and the `.pt` files hold only tensors and
plain Python data (RNG states as tensors; `save_checkpoint` converts numpy scalars and refuses anything else), read with
`torch.load(weights_only=True)`. A file holding other objects (a planted pickle) is refused with a ValueError.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from engine.runtime.lora import is_peft, save_adapter
from models.files import reading, weight_files

COMPLETE = "COMPLETE"
LATEST = "latest"


def _fsync_tree(folder: Path, recursive: bool = True) -> None:
    """Flush every file (and the folder entries) to disk so that a power loss after the rename cannot expose
    a folder whose COMPLETE marker made it to disk but whose weights did not."""
    inside = sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True) if recursive else []
    for path in inside + [folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _step_dirs(root: Path) -> list[Path]:
    """Complete step_* folders, oldest step first."""
    dirs = [p for p in root.glob("step_*") if (p / COMPLETE).is_file() and p.name[5:].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[5:]))


PLAIN = (str, int, float, bool, type(None))  # exactly these types: a numpy float is a float subclass that pickles
                                            # as a numpy object, which weights_only=True refuses


def to_plain(value, where: str):
    """`value` as tensors and plain data (dict/list/tuple of str, int, float, bool, None): what
    `torch.load(weights_only=True)` reads back. Numpy scalars become Python numbers; anything else is a
    ValueError naming where it is, raised before writing, so a save never writes what the resume would refuse."""
    if isinstance(value, dict):
        bad = next((k for k in value if type(k) not in (str, int)), None)
        if bad is not None:
            raise ValueError(f"{where}: key {bad!r} is a {type(bad).__name__}; checkpoint keys are str or int")
        return {k: to_plain(v, f"{where}.{k}") for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(to_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, torch.Tensor) or type(value) in PLAIN:
        return value
    if isinstance(value, np.generic) and value.ndim == 0 and value.dtype.kind in "biuf":
        return value.item()
    raise ValueError(f"{where}: a {type(value).__name__} cannot go into a checkpoint (tensors and plain data "
                     "only, so that resuming never unpickles code)")


def load_plain(file: Path):
    """torch.load with weights_only=True: tensors and plain data only. Anything else is refused, not run.
    Tensors come back on the CPU, whatever device saved them (a GPU run's AdamW state resumes on a CPU-only machine;
    optimizer.load_state_dict moves each state tensor to its parameter's device)."""
    try:
        with reading(file, "this checkpoint file", "this checkpoint is damaged", passthrough=(pickle.UnpicklingError,)):
            return torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        detail = next((line for line in str(exc).splitlines() if "GLOBAL" in line), None)
        if detail is None:  # not a refused object: bytes that are no pickle at all (garbage, a cut file)
            raise ValueError(f"{file}: cannot read this checkpoint file (its bytes are not a torch.save file: cut "
                             "short or overwritten); this checkpoint is damaged") from None
        raise ValueError(f"{file}: refused: it holds Python objects, not only tensors and plain data, and loading "
                         f"it could run code ({detail.strip()}). This engine never writes such files: do not "
                         "resume from a run folder you did not make unless you know what changed it") from None


def save_checkpoint(run_dir: str | Path, step: int, *, model, tokenizer=None, image_processor=None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None, extra_state: dict,
                    config_toml: str, keep_last: int = 2, model_state: dict | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Write run_dir/checkpoints/step_{step:06d}/ atomically, point `latest` at it, prune old ones.
    `model_state` / `optimizer_state`: full state dicts to write instead of the objects' own (FSDP)."""
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: keep at least 1 checkpoint (the one just written)")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # a crashed save's leftovers; never referenced by `latest`
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step_{step:06d}"
    extra_state = to_plain(extra_state, "extra_state")
    tmp, final, aside = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root)), root / name, None
    try:
        if is_peft(model):  # the adapter only; save_adapter also names the class FSDP wrapped, not FSDP<Class>
            save_adapter(model, tmp / "model", state_dict=model_state)
        else:
            model.save_pretrained(tmp / "model", state_dict=model_state, safe_serialization=True)
        for extra in (tokenizer, image_processor):
            if extra is not None:
                extra.save_pretrained(tmp / "model")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        elif optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(extra_state, tmp / "state.pt")
        (tmp / "config.toml").write_text(config_toml, encoding="utf-8")
        _fsync_tree(tmp)
        _write_atomic(tmp / COMPLETE, json.dumps({"step": step}) + "\n")
        _fsync_tree(tmp, recursive=False)
        if final.exists():  # re-saving a step (resumed from an older one): move the old copy aside first
            aside = Path(tempfile.mkdtemp(prefix=f".tmp-old-{name}-", dir=root)) / name
            final.rename(aside)
        tmp.rename(final)
        _fsync_tree(root, recursive=False)  # make the rename durable before `latest` names it
    except BaseException:
        if aside is not None and aside.exists() and not final.exists():
            aside.rename(final)  # put the old copy back: `latest` may name it
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomic(root / LATEST, name + "\n")
    others = [p for p in _step_dirs(root) if p.name != name]  # the one just written always stays
    for old in others[:max(0, len(others) - (keep_last - 1))]:
        shutil.rmtree(old)
    for stale in root.glob(".tmp-old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's complete checkpoint folders, oldest step first."""
    root = Path(run_dir) / "checkpoints"
    return _step_dirs(root) if root.is_dir() else []


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder `latest` names, or None when there is no `latest` yet (a fresh run). A `latest` naming a
    missing or incomplete folder is an error that offers the newest complete checkpoint."""
    root = Path(run_dir) / "checkpoints"
    if not (root / LATEST).is_file():
        return None
    with reading(root / LATEST, "the name of the newest checkpoint", "write the name of a complete step_* folder "
                 "into it"):
        name = (root / LATEST).read_text(encoding="utf-8").strip()
    path = root / name
    if not name or "/" in name or not (path / COMPLETE).is_file():
        complete = _step_dirs(root)
        offer = (f"the newest complete checkpoint is {complete[-1].name}: resume from it with `echo "
                 f"{complete[-1].name} > {root / LATEST}` (the steps after it are trained again)") if complete else \
            "no complete checkpoint is left: start the run afresh (train.overwrite) or in another train.out_dir"
        raise ValueError(f"{root / LATEST} names {name!r}, which is missing or incomplete; {offer}")
    return path


def _hub_view(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under the key names (and layouts) save_pretrained writes; values are views of
    the model's own tensors, so copying into them loads in place."""
    state = model.state_dict()
    try:
        from transformers import PreTrainedModel
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # older transformers: save_pretrained writes state_dict keys as they are
        return state
    return revert_weight_conversion(model, state) if isinstance(model, PreTrainedModel) else state


def _read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in weight_files(model_dir):  # model.safetensors, or the shards its index names
        with reading(file, "the checkpoint's weights", "this checkpoint is damaged"):
            out.update(load_file(file))
    return out


def _load_full(model: torch.nn.Module, model_dir: Path) -> None:
    saved, views = _read_weights(model_dir), _hub_view(model)
    own = {t.untyped_storage().data_ptr(): (k, t.numel()) for k, t in model.state_dict().items()}
    unexpected = sorted(set(saved) - set(views))
    if unexpected:
        raise ValueError(f"{model_dir}: weights the model does not have: {unexpected[:5]}")
    covered: dict[int, int] = {}
    with torch.no_grad():
        for key, view in views.items():
            ptr = view.untyped_storage().data_ptr()
            if ptr not in own:  # a conversion that copies (not views) would need transformers' own loader
                raise RuntimeError(f"{key}: save_pretrained's layout is not a view of the model; cannot load in place")
            if key in saved:
                if saved[key].shape != view.shape:
                    raise ValueError(f"{model_dir}: {key} has shape {tuple(saved[key].shape)}, "
                                     f"the model expects {tuple(view.shape)}")
                view.copy_(saved[key])
                covered[ptr] = covered.get(ptr, 0) + view.numel()
    missing = sorted(k for ptr, (k, n) in own.items() if covered.get(ptr, 0) < n)
    if missing:
        raise ValueError(f"{model_dir}: checkpoint lacks weights for {missing[:5]} ({len(missing)} in all)")


def _load_adapter(model, model_dir: Path) -> None:
    from peft import set_peft_model_state_dict

    with reading(model_dir / "adapter_model.safetensors", "the checkpoint's LoRA adapter", "this checkpoint is damaged"):
        saved = load_file(model_dir / "adapter_model.safetensors")
    result = set_peft_model_state_dict(model, saved)
    if result.unexpected_keys:
        raise ValueError(f"{model_dir}: adapter weights the model does not have: {result.unexpected_keys[:5]}")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable & set(result.missing_keys))
    if missing:
        raise ValueError(f"{model_dir}: adapter checkpoint lacks {missing[:5]} ({len(missing)} in all)")


def load_checkpoint(path: str | Path, *, model, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None) -> dict[str, Any]:
    """Load weights (in place; model=None: skip them), optimizer and scheduler state; return the saved
    extra_state. `optimizer` takes the plain `optimizer.state_dict()` format; a full (FSDP-format) one is read
    with `read_optimizer_state` and loaded with engine.runtime.distributed.load_optimizer_state_dict."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")
    if model is None:
        pass
    elif (path / "model" / "adapter_model.safetensors").is_file():
        if not hasattr(model, "peft_config"):
            raise ValueError(f"{path}/model holds a peft adapter, but the model is not a peft model")
        _load_adapter(model, path / "model")
    else:
        _load_full(model, path / "model")
    for obj, file in ((optimizer, "optimizer.pt"), (scheduler, "scheduler.pt")):
        if obj is not None:
            if not (path / file).is_file():
                raise ValueError(f"{path}: no {file} to restore the {type(obj).__name__} from")
            obj.load_state_dict(load_plain(path / file))
    return load_plain(path / "state.pt")


def read_optimizer_state(path: str | Path) -> dict[str, Any]:
    """The optimizer state saved in a checkpoint, as written."""
    file = Path(path) / "optimizer.pt"
    if not file.is_file():
        raise ValueError(f"{path}: no optimizer.pt to restore the optimizer from")
    return load_plain(file)


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """States of python `random`, numpy's global RNG, torch CPU (and every CUDA device), and named generators,
    as tensors and plain numbers (so that they load with weights_only=True). Each named generator's state is a CPU
    uint8 tensor from `get_state()`, a CUDA generator's too, with its device type beside it: a CUDA state does not
    fit a CPU generator, see `generator_device`."""
    generators = generators or {}
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": (version, torch.tensor(internal, dtype=torch.int64), gauss),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
             "torch": torch.get_rng_state(),
             "generators": {name: g.get_state() for name, g in generators.items()},
             "generator_devices": {name: g.device.type for name, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of capture_rng; the named generators must be the ones that were captured, on the same device type."""
    generators = generators or {}
    if set(generators) != set(state["generators"]):
        raise ValueError(f"restore_rng: checkpoint has generators {sorted(state['generators'])}, "
                         f"got {sorted(generators)}")
    for name, g in generators.items():
        if generator_device(state, name) != g.device.type:
            raise ValueError(f"restore_rng: generator {name!r} was saved on {generator_device(state, name)} and is "
                             f"restored into a {g.device.type} generator; reseed it instead")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])


def generator_device(state: dict[str, Any], name: str) -> str:
    """Device type ("cpu", "cuda") of a generator captured by capture_rng (checkpoints from before this field: cpu)."""
    return state.get("generator_devices", {}).get(name, "cpu")
