"""The training run: set up once, then the stages (sft, rl) in order, with evaluation after each stage,
checkpoints, resume, progress bar, TensorBoard and a summary.

    python train.py --config configs/demo.toml          # see train.py
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from data import load_examples
from engine.checkpoint import capture_rng, latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from engine.config import Config
from engine.configlib import to_toml
from engine.data_stream import DataStream
from engine.evaluate import evaluate, prompts_for
from engine.losses import LossConfig
from engine.metrics import MetricsLogger, progress
from engine.optim import build_optimizer, build_scheduler
from engine.rollout_dump import dump_rollouts
from engine.sft import sft_step, sft_trajectory, target_text
from engine.step import RLState, rl_step
from engine.tool_health import ToolCallMonitor
from engine.tool_protocols import make_protocol
from models.load import VLM, load_vlm
from models.tiny import tiny_model_dir
from rewards.scorer import build_scorer


def loss_config(cfg: Config) -> LossConfig:
    a = cfg.algo
    norm_len = (a.norm_len or cfg.rollout.max_new_tokens) if a.aggregation == "seq_mean_token_sum_norm" else None
    return LossConfig(name=a.loss, aggregation=a.aggregation, clip_low=a.clip_low, clip_high=a.clip_high,
                      dual_clip_c=a.dual_clip_c or None, kl_beta=a.kl_beta, kl_estimator=a.kl_estimator,
                      tis_cap=a.tis_cap or None, norm_len=norm_len)


def load_policy(cfg: Config) -> VLM:
    path = cfg.model.path or tiny_model_dir(cfg.model.tiny_arch, seed=cfg.train.seed)
    return load_vlm(path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                    device="cuda" if torch.cuda.is_available() else "cpu", box_frame=cfg.model.box_frame or None)


def load_data(cfg: Config):
    d = cfg.data
    root = d.image_root or None
    # Splits only exist in folder formats; a JSONL file is one split already.
    def split(path: str, name: str) -> str | None:
        return name if Path(path).is_dir() else None

    train = load_examples(d.train, image_root=root, split=split(d.train, d.train_split), skip_bad=d.skip_bad)
    for msg in train.skipped:
        print(f"skipped: {msg}")
    evals = []
    if d.eval:
        result = load_examples(d.eval, image_root=root, split=split(d.eval, d.eval_split), skip_bad=d.skip_bad)
        evals = result.examples[: d.num_eval_examples or None]
    print(f"data: {len(train.examples)} training examples ({train.format}), {len(evals)} held-out")
    return train.examples, evals


def _optimizer(model, cfg: Config, lr: float, total: int):
    o = cfg.optim
    opt = build_optimizer(model.parameters(), lr=lr, weight_decay=o.weight_decay, betas=(o.beta1, o.beta2))
    sched = build_scheduler(opt, warmup_steps=o.warmup_steps, total_steps=total, schedule=o.schedule,
                            min_ratio=o.min_lr_ratio)
    return opt, sched


class Run:
    """Everything a run holds between steps. Methods are the stages; `main` is the order."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.dir = Path(cfg.train.out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.toml").write_text(to_toml(cfg))
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.vlm = load_policy(cfg)
        r = cfg.reward
        self.scorer = build_scorer(self.vlm, r.weights, kind=r.scorer, teacher_path=r.teacher_path,
                                   clip_path=r.clip_path, max_new_tokens=r.scorer_max_new_tokens,
                                   dtype=cfg.model.dtype, device=str(next(self.vlm.model.parameters()).device))
        self.train_set, self.eval_set = load_data(cfg)
        self.protocol = make_protocol(cfg.rollout.protocol, self.vlm)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.logger = MetricsLogger(self.dir, tensorboard=cfg.train.tensorboard)
        self.summary: dict = {"done_stages": []}
        self.resume_from = None
        self.global_step = 0
        if cfg.train.resume:
            self._resume()

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.dir)
        if ckpt is None:
            raise ValueError(f"--train.resume: no complete checkpoint in {self.dir}/checkpoints to resume from")
        state = load_checkpoint(ckpt, model=self.vlm.model)
        self.summary, self.global_step = state["summary"], state["global_step"]
        self.resume_from = (ckpt, state)
        print(f"resuming from {ckpt} (stage {state['stage']}, step {state['stage_step']})")

    def _take_resume(self, stage: str, model, optimizer, scheduler, stream: DataStream) -> int:
        """If resuming inside this stage, restore its optimizer, schedule, data position and RNG: the steps
        that follow are the ones the uninterrupted run would have taken."""
        if self.resume_from is None or self.resume_from[1]["stage"] != stage:
            return 0
        ckpt, state = self.resume_from
        load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
        stream.load_state_dict(state["data"])
        restore_rng(state["rng"], {"sampler": self.generator})
        self.resume_from = None
        return state["stage_step"]

    def _save(self, stage: str, stage_step: int, optimizer, scheduler, stream: DataStream) -> Path:
        extra = {"stage": stage, "stage_step": stage_step, "global_step": self.global_step,
                 "data": stream.state_dict(), "rng": capture_rng({"sampler": self.generator}),
                 "summary": self.summary}
        return save_checkpoint(self.dir, self.global_step, model=self.vlm.model, tokenizer=self.vlm.tokenizer,
                               image_processor=self.vlm.image_processor, optimizer=optimizer,
                               scheduler=scheduler, extra_state=extra, config_toml=to_toml(self.cfg),
                               keep_last=self.cfg.train.keep_checkpoints)

    def evaluate(self, tag: str) -> None:
        if not self.eval_set:
            return
        result = evaluate(self.vlm, self.eval_set, self.cfg, self.protocol, scorer=self.scorer)
        self.summary[f"accuracy_{tag}"] = result.metrics["accuracy"]
        self.summary["num_eval_examples"] = result.metrics["num_examples"]
        self.summary[f"eval_{tag}"] = result.metrics
        self.logger.log(self.global_step, {f"eval/{k}": v for k, v in result.metrics.items()})
        with open(self.dir / f"eval_{tag}.jsonl", "w") as f:
            for rec in result.records:
                f.write(json.dumps(rec) + "\n")
        print(f"eval {tag}: accuracy {result.metrics['accuracy']:.3f} on {result.metrics['num_examples']} examples")

    def sft(self) -> None:
        cfg, s = self.cfg, self.cfg.sft
        model = self.vlm.model
        optimizer, scheduler = _optimizer(model, cfg, s.lr, s.steps)
        stream = DataStream(len(self.train_set), cfg.train.seed + 1)
        start = self._take_resume("sft", model, optimizer, scheduler, stream)
        model.train()
        bar = progress(s.steps, initial=start, desc="sft")
        for step in range(start, s.steps):
            examples = [self.train_set[i] for i in stream.take(s.batch_size)]
            trajs = [sft_trajectory(p, target_text(e, cfg.data.sft_template), self.vlm)
                     for p, e in zip(prompts_for(examples, self.vlm, cfg), examples)]
            metrics = sft_step(model, optimizer, scheduler, trajs, micro_batch_tokens=cfg.optim.micro_batch_tokens,
                               max_grad_norm=cfg.optim.max_grad_norm)
            self.global_step += 1
            self.logger.log(self.global_step, metrics)
            bar.set_postfix(loss=f"{metrics['sft/loss']:.3f}")
            bar.update(1)
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < s.steps:
                self.evaluate(f"sft_step{step + 1}")
            if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and step + 1 < s.steps:
                self._save("sft", step + 1, optimizer, scheduler, stream)
        bar.close()
        self.summary["done_stages"].append("sft")
        self.evaluate("after_sft")
        self.summary["final_checkpoint"] = str(self._save("sft", s.steps, optimizer, scheduler, stream))

    def rl(self) -> None:
        cfg = self.cfg
        model = self.vlm.model
        optimizer, scheduler = _optimizer(model, cfg, cfg.optim.lr, cfg.train.steps * cfg.algo.num_updates)
        reference = None
        if cfg.algo.kl_beta > 0:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        state = RLState(cfg=cfg, policy=self.vlm, reference=reference, optimizer=optimizer, scheduler=scheduler,
                        generator=self.generator, protocol=self.protocol, loss_cfg=loss_config(cfg),
                        scorer=self.scorer)
        stream = DataStream(len(self.train_set), cfg.train.seed + 2)
        start = self._take_resume("rl", model, optimizer, scheduler, stream)
        bar = progress(cfg.train.steps, initial=start, desc="rl")
        monitor = ToolCallMonitor() if cfg.rollout.protocol != "none" else None
        for step in range(start, cfg.train.steps):
            examples = [self.train_set[i] for i in stream.take(cfg.rollout.prompts_per_step)]
            metrics, trajs, rewards, adv = rl_step(state, prompts_for(examples, self.vlm, cfg))
            self.global_step += 1
            if monitor is not None:  # RL with tools often stops calling them: say so when it happens
                warning = monitor.update(metrics["tools/call_rate"])
                metrics["tools/call_rate_avg"] = monitor.average
                if warning:
                    bar.write(f"step {self.global_step}: warning: {warning}")
                    self.logger.log_text(self.global_step, "warnings/tools", warning)
            if (step + 1) % cfg.train.log_every == 0:
                self.logger.log(self.global_step, metrics)
            if cfg.train.sample_every and (step + 1) % cfg.train.sample_every == 0:
                self._log_samples(trajs, rewards, adv)
            bar.set_postfix(reward=f"{metrics['reward/total']:.3f}", loss=f"{float(metrics.get('train/loss', 0)):.4f}")
            bar.update(1)
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0:
                self.evaluate(f"rl_step{step + 1}")
            if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and step + 1 < cfg.train.steps:
                self._save("rl", step + 1, optimizer, scheduler, stream)
        bar.close()
        self.summary["done_stages"].append("rl")
        self.evaluate("after_rl")
        self.summary["final_checkpoint"] = str(self._save("rl", cfg.train.steps, optimizer, scheduler, stream))

    def _log_samples(self, trajs, rewards, adv, k: int = 4) -> None:
        dump_rollouts(self.dir, self.global_step, trajs, rewards, adv)
        for i in range(min(k, len(trajs))):
            parts = ", ".join(f"{n}={v[i]:.2f}" for n, v in rewards.parts.items())
            text = (f"Q: {trajs[i].prompt.example.question}\nA*: {trajs[i].prompt.example.answer}\n"
                    f"response: {trajs[i].text}\nreward {rewards.total[i]:.3f} ({parts}), adv {float(adv[i]):+.3f}")
            self.logger.log_text(self.global_step, f"samples/{i}", text)

    def main(self) -> dict:
        start = time.time()
        stages = self.cfg.train.stage.split(",")
        if self.cfg.train.eval_at_start and not self.summary["done_stages"] and self.resume_from is None:
            self.evaluate("before")
        for stage in stages:
            if stage in self.summary["done_stages"]:
                continue
            getattr(self, stage)()
        self.summary["steps"] = {"sft": self.cfg.sft.steps if "sft" in stages else 0,
                                 "rl": self.cfg.train.steps if "rl" in stages else 0}
        self.summary["seconds"] = round(time.time() - start, 1)
        (self.dir / "summary.json").write_text(json.dumps(self.summary, indent=2))
        self.logger.close()
        return self.summary


def run(cfg: Config) -> dict:
    return Run(cfg).main()
