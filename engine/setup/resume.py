"""Resume keeps the run what it was: its own settings, its own data, a checkpoint that loads.

    base = run_config(run_dir)                  # train.py --resume RUN builds the config over the run's own
    plan = ResumePlan.read(run_dir)             # that config and the newest checkpoint (its state and headers)
    plan.check_config(cfg)                      # before anything loads: refused changes, listed
    plan.check_data({"data.train": fingerprint(train_set)})   # after the data loads, before the model

What may differ from the run's own config.toml without a word (`FREE`): where files go and how often (out_dir,
save/log/sample/eval intervals, checkpoints kept, TensorBoard, threads), how fast the same maths runs
(attention kernel, gradient checkpointing, micro-batch and log-prob chunk sizes, CUDA graphs, deterministic
kernels), and held-out evaluation (data.eval, eval.metrics). Budgets may be raised, never lowered (`BUDGETS`;
a stage list may grow at its end). Where the training data is read from may change when the content is the same
(`DATA`: judged by the content fingerprint, not the path). Anything else alters the run and is refused with the
list of differences, unless named in `train.resume_changes` (a component's own section, `[algo.gspo]`, changes with
its selection, `algo.loss`: naming the selection accepts both). The data fingerprint hashes every training example
(question, answers, boxes, targets, metadata) and the bytes of every image it uses, in order; it is saved in each
checkpoint, so a different dataset of the same size is caught. Nothing here writes: the trainer writes only
once the resume is accepted. Tested in tests/test_resume.py and tests/test_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from engine.config import plugins
from engine.config.parsing import build_config, differences, to_dict
from engine.config.settings import Config
from engine.runtime.checkpoint import COMPLETE, complete_checkpoints, latest_checkpoint, load_plain
from models.files import check_weights, reading

FREE = frozenset({
    "train.out_dir", "train.resume", "train.resume_changes", "train.overwrite", "train.threads", "train.tensorboard",
    "train.save_every", "train.keep_checkpoints", "train.log_every", "train.sample_every", "train.eval_every",
    "train.deterministic", "model.attn_implementation", "model.gradient_checkpointing", "model.logprob_chunk_tokens",
    "optim.micro_batch_tokens", "rollout.cuda_graph", "rollout.vllm_kv_cache_gib", "data.eval", "data.eval_split",
    "data.num_eval_examples", "eval.metrics", "train.eval_at_start"})
BUDGETS = ("sft.steps", "rl.steps", "sft.epochs", "rl.epochs")
DATA = {"data.train": "data.train", "data.image_root": "data.train", "data.train_split": "data.train",
        "data.skip_bad": "data.train", "data.max_image_pixels": "data.train", "data.oversized_images": "data.train",
        "sft.final_train": "sft.final_train"}  # where data comes from -> the fingerprint that judges it


def run_config(run_dir: str | Path) -> Config:
    """The run's own resolved settings: RUN/config.toml (else its newest checkpoint's), its plugins imported first;
    not validated (the flags given beside --resume go on top, then the whole is)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.toml"
    if not path.is_file():
        ckpt = latest_checkpoint(run_dir) if (run_dir / "checkpoints").is_dir() else None
        if ckpt is None or not (ckpt / "config.toml").is_file():
            raise ValueError(f"--resume {run_dir}: no run here (no config.toml and no complete checkpoint): name the "
                             "folder a run wrote (its train.out_dir)")
        path = ckpt / "config.toml"
    with reading(path, "the run's settings", "restore it from the run's newest checkpoint (checkpoints/step_*/"
                 "config.toml), or start a new run"):
        text = path.read_text(encoding="utf-8")
    try:
        plugins.load_all(plugins.listed_in(text, str(path)))  # the run's own losses, rewards, ... and their settings
        return build_config(Config, toml_text=text, validate=False)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def fingerprint(examples) -> str:
    """A content hash of `examples` in order: each one's text fields and the bytes of each image it uses."""
    digest, images = hashlib.sha256(), {}
    for e in examples:
        fields = {"question": e.question, "answers": e.answers, "boxes": e.boxes, "choices": e.choices,
                  "reference_steps": e.reference_steps, "target": e.target, "metadata": e.metadata}
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
        for src in e.images:
            if isinstance(src, bytes):
                digest.update(hashlib.sha256(src).digest())
                continue
            if src not in images:
                with reading(src, "an image of the training data", "check the data with python -m data.check"):
                    images[src] = hashlib.sha256(Path(src).read_bytes()).digest()
            digest.update(images[src])
    return digest.hexdigest()[:16]


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value)


def _stages_grown(old: str, new: str) -> bool:
    """A stage list that keeps the run's stages, in order, and adds some at its end (sft -> sft,rl)."""
    before, after = old.split(","), new.split(",")
    return after[:len(before)] == before


@dataclass
class ResumePlan:
    run_dir: Path
    run_cfg: Config
    checkpoint: Path
    state: dict  # the checkpoint's state.pt (stage, steps, data position, RNG, summary, data fingerprints)

    @classmethod
    def read(cls, run_dir: str | Path) -> "ResumePlan":
        """The run's config and its newest complete checkpoint, checked to be readable (its state and the headers
        of its weights: a damaged one is named, with the newest other complete checkpoint to fall back to)."""
        run_dir = Path(run_dir)
        run_cfg = run_config(run_dir)
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise ValueError(f"--train.resume: no complete checkpoint in {run_dir}/checkpoints to resume from; start "
                             "the run afresh (train.overwrite) or in another train.out_dir")
        fallback = fall_back_hint(run_dir, ckpt)
        try:
            state = load_plain(ckpt / "state.pt")
            model = ckpt / "model"
            if not (model / "adapter_model.safetensors").is_file():
                check_weights(model, fix="this checkpoint is damaged")
            for name in ("optimizer.pt", "scheduler.pt"):  # read in full later (they may be large): the index now
                check_archive(ckpt / name)
        except ValueError as exc:
            raise ValueError(f"{exc}. {fallback}") from None
        return cls(run_dir=run_dir, run_cfg=run_cfg, checkpoint=ckpt, state=state)

    def changes(self, cfg: Config) -> tuple[list[str], list[str]]:
        """(refused, accepted) differences between the run's settings and `cfg`, each as 'key: old -> new'."""
        refused, accepted = [], []
        named = set(cfg.train.resume_changes)
        both = to_dict(self.run_cfg).keys() & to_dict(cfg).keys()  # a component's own section exists only while
        for key, old, new in differences(self.run_cfg, cfg):        # it is selected: its change is the selection's
            line = f"{key}: {_shown(old)} -> {_shown(new)}"
            if key in FREE or key in DATA or key not in both or key in BUDGETS:
                continue
            if key == "train.stage" and _stages_grown(old, new):
                continue
            (accepted if key in named else refused).append(line)
        for stage in ("sft", "rl"):  # a stage's budget: its epochs when it has them (its steps follow), else its steps
            was, now = getattr(self.run_cfg, stage), getattr(cfg, stage)
            key = f"{stage}.epochs" if now.epochs > 0 else f"{stage}.steps"
            old, new = (was.epochs, now.epochs) if now.epochs > 0 else (was.steps, now.steps)
            lowered = new < old and not (now.epochs > 0 and was.epochs == 0)  # steps -> epochs: judged by the data
            if lowered:
                line = f"{key}: {_shown(old)} -> {_shown(new)} (a budget may be raised, not lowered)"
                (accepted if key in named else refused).append(line)
        return refused, accepted

    def check_config(self, cfg: Config) -> list[str]:
        """ValueError listing the refused changes; returns the accepted ones (train.resume_changes)."""
        refused, accepted = self.changes(cfg)
        different = {k for k, _, _ in differences(self.run_cfg, cfg)}
        idle = [k for k in cfg.train.resume_changes if k not in different and k not in DATA.values()]
        if idle:
            raise ValueError(f"train.resume_changes names {', '.join(idle)}, which the flags do not change (a "
                             "setting that does nothing is an error): drop it")
        if refused:
            keys = ",".join(line.split(":")[0] for line in refused)
            raise ValueError(f"resume of {self.run_dir} refused: {len(refused)} setting(s) differ from the run's own "
                             f"({self.run_dir}/config.toml): {'; '.join(refused)}. A resume continues the run as it "
                             f"was made: drop those flags, or accept the changes with --train.resume_changes {keys}")
        return accepted

    def check_data(self, fingerprints: dict[str, str], named: list[str]) -> list[str]:
        """Compare the data's content with what the checkpoint recorded; ValueError unless the changed ones are
        named in train.resume_changes. Returns the accepted changes ('the content of data.train')."""
        saved = self.state.get("data_fingerprint")
        if saved is None:  # a checkpoint from before fingerprints: nothing to compare with (Claim says so)
            return []
        changed = [k for k, v in fingerprints.items() if saved.get(k) not in (None, v)]
        refused = [k for k in changed if k not in named]
        if refused:
            raise ValueError(f"resume of {self.run_dir} refused: the content of {', '.join(refused)} differs from "
                             f"what the run trained on (fingerprint {saved[refused[0]]} then, "
                             f"{fingerprints[refused[0]]} now), even where the path and size are the same. Point it "
                             "at the run's data, or accept the change with --train.resume_changes "
                             f"{','.join(refused)}")
        return [f"the content of {k} (fingerprint {saved[k]} -> {fingerprints[k]})" for k in changed]


def check_archive(file: Path) -> None:
    """A torch.save file (a zip archive) whose index reads: a cut or overwritten file fails here, before the model
    loads; the tensors themselves are read when the resume restores them."""
    with reading(file, "this checkpoint file", "this checkpoint is damaged"):
        with zipfile.ZipFile(file) as archive:
            if not archive.namelist():
                raise ValueError("an empty archive")


def fall_back_hint(run_dir: Path, ckpt: Path) -> str:
    """What to do when checkpoint `ckpt` cannot be used: the newest other complete checkpoint, or a fresh start."""
    others = [p for p in complete_checkpoints(run_dir) if p != ckpt and (p / COMPLETE).is_file()]
    if not others:
        return (f"No other complete checkpoint in {run_dir}/checkpoints: start afresh (--train.overwrite true) or in "
                "another train.out_dir")
    newest = others[-1]
    return (f"The newest other complete checkpoint is {newest.name}: resume from it with `echo {newest.name} > "
            f"{run_dir}/checkpoints/latest` (the steps after it are trained again)")
