"""Claiming a run folder before a run writes to it: one run at a time (engine/runtime/run_lock.py), a fresh start
never mixed into an earlier run's files, a resume only as the run was made (engine/setup/resume.py).

    claim = Claim.take(run_dir, cfg, dist)     # ValueError (nothing written) when refused
    ...setup...; claim.check_data(fingerprints)
    claim.clear_earlier_run()                  # train.overwrite, once setup worked
    ...the run...
    claim.release()                            # always: on success, on errors, on signals

Order, so that a refused start or resume changes nothing in the folder: the LOCK is taken (creating the folder if
needed; the only file written before acceptance, removed again on refusal, with the folder if this claim made it),
then the start is judged: a resume's plan is read (the run's config.toml and newest checkpoint, read-only) and its
flags compared with the run's own; a fresh start into a folder holding an earlier run is refused unless
train.overwrite. Under torchrun rank 0 holds the lock and every rank learns its outcome.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engine.config.settings import Config
from engine.runtime import distributed as D
from engine.runtime.checkpoint import complete_checkpoints
from engine.runtime.run_lock import LOCK, RunLock
from engine.setup.resume import ResumePlan

# What a run writes into its folder (config, checkpoints, logs, exports): an earlier run's, cleared by overwrite.
RUN_FILES = ("config.toml", "checkpoints", "metrics.jsonl", "samples.jsonl", "summary.json", "FAILED", "reference",
             "merged", "tb", "rollouts")


def earlier_run(folder: Path) -> str | None:
    """What shows that `folder` holds an earlier run, or None."""
    ckpts = complete_checkpoints(folder)
    if ckpts:
        return f"checkpoints up to {ckpts[-1].name}"
    shown = [name for name in ("config.toml", "metrics.jsonl", "summary.json") if (folder / name).exists()]
    return ", ".join(shown) if shown else None


@dataclass
class Claim:
    folder: Path
    plan: ResumePlan | None  # the run being resumed, None for a fresh start
    accepted: list[str] = field(default_factory=list)  # 'key: old -> new' changes train.resume_changes accepted
    lock: RunLock | None = None  # rank 0's
    made: bool = False  # this claim created the folder
    notes: list[str] = field(default_factory=list)

    @classmethod
    def take(cls, folder: Path, cfg: Config, dist: D.Dist) -> "Claim":
        claim = cls(folder=folder, plan=None, made=dist.is_main and not folder.exists())
        error = None
        if dist.is_main:
            try:
                claim.lock = RunLock.take(folder)
            except ValueError as exc:
                error = str(exc)
        if dist.world > 1:  # one outcome for every rank
            error = D.all_gather_objects(error)[0]
        try:
            if error:
                raise ValueError(error)
            plan = claim.plan = ResumePlan.read(folder) if cfg.train.resume else None  # read-only, on every rank
            if claim.lock is not None and claim.lock.took_over:
                claim.notes.append(f"note: {folder}/{LOCK} was {claim.lock.took_over}: taken over")
            if plan is None and not cfg.train.overwrite and (seen := earlier_run(folder)):
                raise ValueError(f"train.out_dir {folder} holds an earlier run ({seen}): continue it with --resume "
                                 f"{folder}, start afresh there with --train.overwrite true (its files are deleted), "
                                 "or choose another train.out_dir")
            claim.accepted = plan.check_config(cfg) if plan is not None else []
        except BaseException:
            claim.release()
            raise
        return claim

    def check_data(self, fingerprints: dict[str, str], cfg: Config) -> None:
        """A resume's data compared by content with what the checkpoint recorded (ValueError when refused)."""
        if self.plan is None:
            return
        if "data_fingerprint" not in self.plan.state:
            self.notes.append(f"note: {self.plan.checkpoint.name} records no data fingerprint (saved by an older "
                              "version): the training data is not compared with the run's")
        self.accepted += self.plan.check_data(fingerprints, cfg.train.resume_changes)

    def clear_earlier_run(self) -> bool:
        """train.overwrite on a fresh start: delete what an earlier run wrote (only the run's own files)."""
        if self.plan is not None or earlier_run(self.folder) is None:
            return False
        for name in RUN_FILES:
            path = self.folder / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        for path in self.folder.glob("eval_*.jsonl"):
            path.unlink()
        return True

    def release(self) -> None:
        """Give the folder back; a folder this claim made and nothing else wrote to is removed again."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.made:
            try:
                self.folder.rmdir()  # only when empty: a run that wrote anything keeps its folder
            except OSError:
                pass
