"""The training run: set up once, then the stages (sft, rl) in order, with evaluation after each stage,
checkpoints, resume, progress bar, TensorBoard and a summary.

    python train.py --config configs/demo.toml                         # one process (see train.py)
    torchrun --nproc_per_node N train.py --config configs/demo.toml    # FSDP2 over N processes
    python train.py --config configs/demo.toml --lora.r 8              # LoRA (either way)

One code path for 1 and N processes (engine/runtime/distributed.py; without torchrun every collective is the identity):
- Every rank reads the same data stream and takes its contiguous share (shard_indices) of each step's prompts or
  SFT examples, so a prompt's group stays on one rank; rollout.prompts_per_step and sft.batch_size are global.
- Rank r samples with its own generator, seeded train.seed + 1000·r (rank 0 = the one-process run); every rank
  has the same global torch seed, so LoRA adapters start identical everywhere. With rollout.sampler = vllm each
  rank runs its own vLLM engine (vLLM's external_launcher, rollout.vllm_tp ranks per engine) and every prompt has
  its own seed (engine/rollout/rollout.py prompt_seeds): N processes sample what one would, prompt by prompt.
- Only rank 0 writes: config, metrics, TensorBoard, progress bar, prints, checkpoints, rollout dumps, summary.
- The policy is loaded (and a checkpoint resumed into it, full tensors) before FSDP shards it.
- train.mixed_precision = bf16 (bf16 compute, fp32 master weights and AdamW state) is FSDP2's policy: one process
  joins a process group of itself alone for it, so 1 and N processes train under the same numerics.
- The sampling generator lives on the model's device (a CUDA generator on a GPU) and its state is checkpointed with
  its device type; resumed on another device type, the run continues with a fresh stream (correct, not bitwise).
- Checkpoints hold full weights (or the LoRA adapter), the optimizer state in the full format (keyed by
  parameter name, one format for any number of processes), every rank's RNG and the global data position: a run
  resumes on any number of processes (every rank reads the checkpoint: out_dir must be visible to every node).
  Rank r restores rank r's RNG; a rank beyond those saved seeds its generator train.seed + 1000·r +
  7919·global_step. On a different number of processes the run continues correctly, not bitwise: the prompts'
  split over ranks and the sampling streams change (SFT, which samples nothing, continues exactly).
- KL reference: with LoRA, the policy with its adapters off (the base model, i.e. the model before any SFT);
  for a full fine-tune, a frozen copy of the policy as RL starts: a fresh model, sharded like the policy and
  loaded from its full state (FSDP modules cannot be deep-copied). When SFT ran first, rank 0 also writes that
  copy to out_dir/reference/, so that a run resumed mid-RL anchors to it and not to the resumed weights.
- With LoRA the run ends with a merged export (out_dir/merged/, a plain HF folder; summary.json names it).
- Nothing lost, nothing silent (engine/runtime/guard.py): the run folder appears only once setup worked; SIGTERM/SIGINT
  save and stop (exit 128 + signal); NaN/inf updates are skipped and counted, a streak stops the run (exit 3); an
  unwritable checkpoint is a clear error, the previous one intact; a run that fails leaves a FAILED note. Resume
  continues a finished stage to a raised step count, and says so when nothing is left.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from engine import run_checkpoints as ckpt
from engine.runtime import distributed as D
from engine.config.settings import Config
from engine.config.parsing import to_toml
from engine.setup.run_data import load_run_data
from engine.setup.run_folder import Claim
from engine.setup.data_stream import DataStream
from engine.setup.limits import check_token_limits
from engine.report.evaluate import evaluate, headline, metric_caveats, prompts_for
from engine.runtime.guard import NonFinite, RunStopped, StopSignals, check_out_dir, clear_failed, mark_failed, stages_left
from engine.runtime.lora import apply_lora, is_peft
from engine.runtime.log import MetricsLogger, progress
from engine.report.rollout_dump import dump_rollouts
from engine.setup.run_setup import (_check_world, _optimizer, check_launch,  # noqa: F401 (re-exported)
                                    enable_gradient_checkpointing, load_policy, with_start_model)
from engine.algo.sft import sft_step, sft_trajectory, target_text
from engine.algo.step import RLState, model_device, reward_context, rl_step
from engine.rollout.rollout import prompt_seeds
from engine.rollout.weight_sync import policy_weights
from engine.report.no_signal import NoSignalMonitor
from engine.report.tool_health import ToolCallMonitor
from engine.rollout.tool_calls import make_protocol
from engine.algo.update import due
from models.generation import StopRequested
from rewards.setup import setup_rewards


STEPS_FLAG = {"sft": "sft.steps", "rl": "rl.steps"}  # the setting that gives each stage's step count


class Run:
    """Everything a run holds between steps. Methods are the stages; `main` is the order."""

    def __init__(self, cfg: Config):
        # train.mixed_precision shards with FSDP2 in one process too: a process group of one (engine/runtime/distributed.py)
        self.dist = D.init(world_of_one=bool(cfg.train.mixed_precision))
        self.main_rank = self.dist.is_main
        cfg = with_start_model(cfg, verbose=self.main_rank)  # model.path naming a run or checkpoint: its model folder
        self.dir = Path(cfg.train.out_dir)
        check_out_dir(self.dir)  # now, before data or model
        # The folder is this run's (a LOCK), and the start or resume is accepted, before anything else is written.
        self.claim = Claim.take(self.dir, cfg, self.dist)
        try:
            self._setup(cfg)
        except BaseException:
            self.claim.release()
            raise

    def _setup(self, cfg: Config) -> None:
        # The model's tokenizer and processor (no weights yet), then the data held to them: a record the model
        # would refuse fails (or is skipped, named) here, before the model loads; epochs become step counts here.
        data = load_run_data(cfg, verbose=self.main_rank)
        self.cfg = cfg = data.cfg
        self.train_set, self.eval_set, self.final_set = data.train, data.held_out, data.final
        self.fingerprints, self.eval_overlap = data.fingerprints, data.eval_overlap
        self.claim.check_data(self.fingerprints, cfg)  # a resume: the same data, by content
        for note in self.claim.notes:
            self.say(note)
        check_launch(cfg, self.dist.world, self.dist.device.type == "cuda")  # vLLM's settings too: not after SFT
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            # cuBLAS reads its workspace setting when it first starts: a process that already ran a CUDA matmul
            # keeps its old one (set the variable in the environment to be sure).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.vlm = load_policy(cfg, device=str(self.dist.device), processing=data.processing)
        # Prompts and SFT targets against the token limits, once, before step 1 (refused, or cut: data.overlong).
        stages = cfg.train.stage.split(",")
        check_token_limits(self.train_set + self.final_set, self.vlm, cfg, what="training", targets="sft" in stages,
                           verbose=self.main_rank)
        check_token_limits(self.eval_set, self.vlm, cfg, what="held-out", targets=False, verbose=self.main_rank)
        # Seeded after loading (building an uncached tiny model reseeds the global RNG), the same on every rank:
        # LoRA's initial adapters must be identical on all ranks before FSDP shards them.
        torch.manual_seed(cfg.train.seed)
        lo = cfg.lora
        if lo.r:
            self.vlm.model = apply_lora(self.vlm.model, r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target=lo.target)
            n = sum(p.numel() for p in self.vlm.model.parameters() if p.requires_grad)
            self.say(f"lora: r={lo.r}, {lo.target}, {n} trainable parameters")
        if cfg.model.gradient_checkpointing:
            enable_gradient_checkpointing(self.vlm.model)
        # The sentence embedder and the model scorer, checked against the weighted rewards.
        self.scorer = setup_rewards(cfg.reward, self.vlm, dtype=cfg.model.dtype,
                                    device=str(model_device(self.vlm.model)))
        if self.dist.world > 1 and (bare := next((e for e in self.train_set if not e.images), None)):
            raise ValueError(f"{bare.origin}: a training example without an image; under torchrun every rank must "
                             "run the vision tower in each training forward (FSDP collectives): train text-only "
                             "examples in one process or give them an image")
        self.protocol = make_protocol(cfg.rollout.protocol, self.vlm, tools=cfg.rollout.tools)
        # On the model's device: torch.multinomial on CUDA probabilities needs a CUDA generator.
        self.generator = torch.Generator(device=model_device(self.vlm.model))
        self.generator.manual_seed(cfg.train.seed + 1000 * self.dist.rank)
        self.summary: dict = {"done_stages": [], "steps": {}}
        self.resume_from = None
        self.global_step = 0
        if cfg.train.resume:
            ckpt.resume(self)  # full weights (or the adapter) into the model before it is sharded
        self.mixed_precision = {None: None, "bf16": "bfloat16"}[cfg.train.mixed_precision]
        D.shard_model(self.vlm.model, mixed_precision=self.mixed_precision)
        self.signals, self.nonfinite = StopSignals(), NonFinite(cfg.optim.max_skipped_updates)
        # One process abandons a step mid-rollout on a signal; under torchrun ranks stop together at step ends.
        self.should_stop = self.signals.pending if self.dist.world == 1 else None
        self.last_saved: tuple[int, Path] | None = None  # (global step, folder) of this session's newest save
        self.last_step = None  # (trajectories, rewards, advantages) of the last step, for _dump_final
        self.sampler = None  # the vLLM engine (rollout.sampler = vllm), from the RL stage on; closed by close()
        self.logger = None
        if self.main_rank:  # setup worked and the start was accepted: only now is the run folder written
            if self.claim.clear_earlier_run():
                print(f"train.overwrite: deleted the earlier run's files in {self.dir}")
            clear_failed(self.dir)
            # the run's own record of how it is made (what the next --resume starts from)
            made = replace(cfg, train=replace(cfg.train, resume_changes=[], overwrite=False))
            (self.dir / "config.toml").write_text(to_toml(made))
            self.logger = MetricsLogger(self.dir, tensorboard=cfg.train.tensorboard, start_step=self.global_step)
        for line in self.claim.accepted:
            self.say(f"resume: accepted change (train.resume_changes): {line}")
        if self.claim.accepted:
            self.summary.setdefault("resume_changes", []).extend(self.claim.accepted)

    # ------------------------------------------------------------------------------------- rank-0 output
    def say(self, msg: str) -> None:
        if self.main_rank:
            print(msg)

    def _log(self, step: int, metrics: dict) -> None:
        if self.logger is not None:
            self.logger.log(step, metrics)

    def _bar(self, total: int, initial: int, desc: str) -> tqdm:
        return progress(total, initial=initial, desc=desc) if self.main_rank else tqdm(total=total, disable=True)

    def _after_step(self, stage: str, done: int, metrics: dict, save) -> None:
        """Count a skipped (NaN/inf) update, stopping on a streak; on SIGTERM/SIGINT, save (`save(done)`) and
        stop. `done` is the stage's step count so far."""
        key = {"sft": "sft/skipped_update", "rl": "train/skipped_update"}[stage]  # absent: no update was made
        warning = self.nonfinite.update(metrics.get(key, 0) > 0, f"{stage} step {done}")
        self.summary["skipped_updates"] = self.nonfinite.total
        if warning and self.main_rank:
            tqdm.write(f"warning: {warning}")
            self.logger.log_text(self.global_step, "warnings/nonfinite", warning)
        if self.signals.requested():
            fresh = self.last_saved is not None and self.last_saved[0] == self.global_step
            path = self.last_saved[1] if fresh else save(done)
            raise self.signals.stopped(f"after {stage} step {done} of {self.stage_steps(stage)}", path)

    def stage_steps(self, stage: str) -> int:
        return self.cfg.sft.steps if stage == "sft" else self.cfg.rl.steps

    def _sampler(self):
        """rollout.sampler = vllm: a vLLM engine in this process (under torchrun, one per process joining its group,
        or one per rollout.vllm_tp processes), holding the policy's CURRENT weights: built from the model folder,
        then pushed what SFT or a resume made of them. None: the native sampler."""
        r = self.cfg.rollout
        if r.sampler != "vllm":
            return None
        from engine.rollout.vllm_sampler import VLLMSampler

        # Mixed precision computes in bf16: the engine samples in it too (the trainer still scores every token).
        dtype = "bfloat16" if self.cfg.train.mixed_precision == "bf16" else self.cfg.model.dtype
        sampler = VLLMSampler(self.vlm.path, max_model_len=r.max_total_tokens, kv_cache_gib=r.vllm_kv_cache_gib,
                              seed=self.cfg.train.seed, limit_images=r.max_images, dtype=dtype,
                              gpu_memory_utilization=r.vllm_gpu_memory_utilization, tensor_parallel=r.vllm_tp,
                              sleep=r.vllm_sleep)
        sampler.push_weights(policy_weights(self.vlm.model))
        return sampler

    def close(self) -> None:
        """Free the vLLM engine (after the run's last collective: vLLM's shutdown destroys the process group), close
        the logger (its TensorBoard thread must not outlive the run) and give the run folder back (its LOCK)."""
        try:
            if self.sampler is not None:
                self.sampler.close()
                self.sampler = None
        finally:
            if self.logger is not None:
                self.logger.close()  # idempotent
            self.claim.release()

    # ------------------------------------------------------------------------------------- stages
    def _mine(self, examples: list) -> list:
        """This rank's contiguous share of a step's examples (all of them in one process)."""
        return [examples[i] for i in D.shard_indices(len(examples), self.dist.rank, self.dist.world)]

    def evaluate(self, tag: str) -> None:
        if not self.eval_set:
            return
        result = evaluate(self.vlm, self.eval_set, self.cfg, self.protocol, scorer=self.scorer, dist=self.dist,
                          should_stop=self.should_stop)
        for name in self.cfg.eval.metrics:  # the task's headline metrics, by name: accuracy_after_rl, iou_after_rl
            self.summary[f"{name}_{tag}"] = result.metrics[name]
        self.summary["num_eval_examples"] = result.metrics["num_examples"]
        self.summary["eval_overlaps_train"] = self.eval_overlap
        self.summary[f"eval_{tag}"] = result.metrics
        if not self.main_rank:
            return
        self._log(self.global_step, {f"eval/{k}": v for k, v in result.metrics.items()})
        with open(self.dir / f"eval_{tag}.jsonl", "w") as f:
            for rec in result.records:
                f.write(json.dumps(rec) + "\n")
        print(f"eval {tag}: {headline(result.metrics, self.cfg.eval.metrics)} on {result.metrics['num_examples']} "
              "examples")
        if tag.startswith("after_"):  # where the user reads the stage's result
            for note in metric_caveats(self.cfg):
                print(note)

    def sft(self) -> None:
        cfg, s = self.cfg, self.cfg.sft
        model = self.vlm.model
        optimizer, scheduler = _optimizer(model, cfg, s.lr, s.steps)
        stream = DataStream(len(self.train_set), cfg.train.seed + 1)
        start = ckpt.take_resume(self, "sft", model, optimizer, scheduler, stream)
        # The last sft.final_steps steps draw from sft.final_train, in an order of their own; on a resume inside that
        # phase its stream is replayed to where it was (the checkpoint holds data.train's stream only).
        first_final = s.steps - s.final_steps if self.final_set else s.steps
        final = DataStream(len(self.final_set), cfg.train.seed + 3) if self.final_set else None
        if final is not None and start > first_final:
            final.take((start - first_final) * s.batch_size)
        model.train()
        bar = self._bar(s.steps, initial=start, desc="sft")
        for step in range(start, s.steps):
            if step < first_final:
                examples = self._mine([self.train_set[i] for i in stream.take(s.batch_size)])
            else:
                examples = self._mine([self.final_set[i] for i in final.take(s.batch_size)])
            cut = cfg.rollout.max_new_tokens if cfg.data.overlong == "truncate" else 0
            trajs = [sft_trajectory(p, target_text(e, cfg.data.sft_template, p, self.vlm), self.vlm, max_sampled=cut)
                     for p, e in zip(prompts_for(examples, self.vlm, cfg), examples)]
            metrics = sft_step(model, optimizer, scheduler, trajs, micro_batch_tokens=cfg.optim.micro_batch_tokens,
                               chunk_tokens=cfg.model.logprob_chunk_tokens,
                               max_grad_norm=cfg.optim.max_grad_norm)
            self.global_step += 1
            self.last_step = (trajs, None, None)
            self._log(self.global_step, metrics)
            bar.set_postfix(loss=f"{float(metrics['sft/loss']):.3f}")  # host sync, once per step
            bar.update(1)
            self._periodic("sft", step + 1, s.steps, optimizer, scheduler, stream)
            self._after_step("sft", step + 1, metrics, lambda n: ckpt.save(self, "sft", n, optimizer, scheduler, stream))
        bar.close()
        self._finish_stage("sft", s.steps, optimizer, scheduler, stream)

    def rl(self) -> None:
        cfg = self.cfg
        model = self.vlm.model
        optimizer, scheduler = _optimizer(model, cfg, cfg.rl.lr, cfg.rl.steps * cfg.algo.num_updates)
        # LoRA: the reference is the policy with its adapters off (engine/algo/step.py); no copy.
        reference = ckpt.reference(self) if cfg.algo.kl_beta > 0 and not is_peft(model) else None
        state = RLState(cfg=cfg, policy=self.vlm, reference=reference, optimizer=optimizer, scheduler=scheduler,
                        generator=self.generator, protocol=self.protocol, scorer=self.scorer,
                        should_stop=self.should_stop)
        stream = DataStream(len(self.train_set), cfg.train.seed + 2)
        start = ckpt.take_resume(self, "rl", model, optimizer, scheduler, stream)
        state.sampler = self.sampler = self._sampler()
        bar = self._bar(cfg.rl.steps, initial=start, desc="rl")
        monitor = ToolCallMonitor() if cfg.rollout.protocol is not None else None
        no_signal = NoSignalMonitor()
        n = cfg.rollout.prompts_per_step
        save = lambda k: ckpt.save(self, "rl", k, optimizer, scheduler, stream)  # noqa: E731
        for step in range(start, cfg.rl.steps):
            mark = ckpt.mark(self, stream)
            examples = self._mine([self.train_set[i] for i in stream.take(n)])
            # vLLM: each prompt's seed from the step and its place in the batch, so the samples do not depend on the
            # number of processes, and a resume samples what the uninterrupted run would.
            seeds = self._mine(prompt_seeds(cfg.train.seed, self.global_step, n)) if self.sampler else None
            try:
                metrics, trajs, rewards, adv = rl_step(state, prompts_for(examples, self.vlm, cfg), seeds)
            except StopRequested:
                raise ckpt.abandon(self, "rl", step, mark, save, stream) from None
            self.global_step += 1
            self.last_step = (trajs, rewards, adv)
            warnings = {"warnings/no_signal": no_signal.update(metrics)}  # RL that cannot learn: say so, once
            if monitor is not None:  # RL with tools often stops calling them: say so when it happens
                warnings["warnings/tools"] = monitor.update(metrics["tools/call_rate"])
                metrics["tools/call_rate_avg"] = monitor.average
            for tag, warning in warnings.items():
                if warning and self.main_rank:
                    bar.write(f"step {self.global_step}: warning: {warning}")
                    self.logger.log_text(self.global_step, tag, warning)
            if (step + 1) % cfg.train.log_every == 0:
                self._log(self.global_step, metrics)
            if cfg.train.sample_every and (step + 1) % cfg.train.sample_every == 0 and self.main_rank:
                self._log_samples(trajs, rewards, adv)  # rank 0's own share
            bar.set_postfix(reward=f"{metrics['reward/total']:.3f}", loss=f"{float(metrics.get('train/loss', 0)):.4f}")
            bar.update(1)
            self._periodic("rl", step + 1, cfg.rl.steps, optimizer, scheduler, stream)
            self._after_step("rl", step + 1, metrics, save)
        bar.close()
        self._finish_stage("rl", cfg.rl.steps, optimizer, scheduler, stream)

    def _periodic(self, stage: str, done: int, total: int, optimizer, scheduler, stream: DataStream) -> None:
        """After step `done` of `total`: evaluate and save when due (`engine.algo.update.due`, the one rule for both
        stages); the last step's are `_finish_stage`'s, so the final weights are evaluated and saved once. A signal
        during that evaluation drops it (the step's checkpoint is written by the stop)."""
        if due(done, self.cfg.train.eval_every, total):
            try:
                self.evaluate(f"{stage}_step{done}")
            except StopRequested:
                pass  # _after_step saves and stops
        if due(done, self.cfg.train.save_every, total):
            ckpt.save(self, stage, done, optimizer, scheduler, stream)

    def _finish_stage(self, stage: str, total: int, optimizer, scheduler, stream: DataStream) -> None:
        self.summary["steps"][stage] = total
        try:
            self.evaluate(f"after_{stage}")
        except StopRequested:  # the stage's weights are final: saved as not yet done, so a resume evaluates them
            path = ckpt.save(self, stage, total, optimizer, scheduler, stream)
            raise self.signals.stopped(f"while evaluating after {stage} (it runs again on resume)", path) from None
        self.summary["done_stages"].append(stage)
        ckpt.save(self, stage, total, optimizer, scheduler, stream)

    def _dump(self, trajs, rewards=None, adv=None) -> None:
        dump_rollouts(self.dir, self.global_step, trajs, rewards, adv, box_frame=self.vlm.family.box_frame,
                      weights=self.cfg.reward.weights, contexts=[reward_context(t, self.vlm) for t in trajs])

    def _dump_final(self) -> None:
        """The viewer works on every run: when no step's rollouts were dumped (train.sample_every 0, or fewer RL
        steps than it; an SFT-only run), the last step's are (an SFT step's: its targets)."""
        if self.main_rank and self.last_step is not None and not any((self.dir / "rollouts").glob("step_*.jsonl")):
            self._dump(*self.last_step)

    def _log_samples(self, trajs, rewards, adv, k: int = 4) -> None:
        self._dump(trajs, rewards, adv)
        for i in range(min(k, len(trajs))):
            parts = ", ".join(f"{n}={v[i]:.2f}" for n, v in rewards.parts.items())
            text = (f"Q: {trajs[i].prompt.example.question}\nA*: {trajs[i].prompt.example.answer}\n"
                    f"response: {trajs[i].text}\nreward {rewards.total[i]:.3f} ({parts}), adv {float(adv[i]):+.3f}")
            self.logger.log_text(self.global_step, f"samples/{i}", text)

    def main(self) -> dict:
        start = time.time()
        stages = self.cfg.train.stage.split(",")
        left, said = stages_left(stages, self.summary, self.resume_from[1] if self.resume_from else {},
                                 {s: self.stage_steps(s) for s in stages}, STEPS_FLAG)
        for line in said:
            self.say(line)
        if not left:  # a finished run resumed as it was: change nothing
            self.logger.close() if self.logger else None
            return {**self.summary, "final_checkpoint": str(self.resume_from[0])}
        with self.signals:
            if self.cfg.train.eval_at_start and not self.summary["done_stages"] and self.resume_from is None:
                self.evaluate("before")
            for stage in left:
                if self.signals.requested() and self.last_saved is not None:  # between stages: that save is current
                    raise self.signals.stopped(f"before stage {stage}", self.last_saved[1])
                getattr(self, stage)()
        self._dump_final()
        if is_peft(self.vlm.model):
            self.summary["merged_model"] = str(ckpt.export_merged(self))
        self.summary["steps"] = {s: self.summary["steps"].get(s, 0) for s in ("sft", "rl")}  # steps trained
        self.summary["final_checkpoint"] = str(self.last_saved[1])
        self.summary["seconds"] = round(time.time() - start, 1)  # this invocation's wall time
        if self.main_rank:
            (self.dir / "summary.json").write_text(json.dumps(self.summary, indent=2))
            self.logger.close()
        return self.summary


def run(cfg: Config) -> dict:
    """Set up (nothing is written if that fails), run the stages, and leave a FAILED note in the run folder if
    they stop on an error (not on a signal: that stop wrote its checkpoint and is a normal end)."""
    deterministic = torch.are_deterministic_algorithms_enabled()  # train.deterministic sets it for the run only
    try:
        r = Run(cfg)
        try:
            summary = r.main()
        except BaseException as exc:
            stopped = isinstance(exc, KeyboardInterrupt) or (isinstance(exc, RunStopped) and exc.code >= 128)
            if r.main_rank and not stopped:  # a signal's stop is a normal end: its checkpoint is complete
                mark_failed(r.dir, exc)
            raise
        finally:
            r.close()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    D.close()  # torchrun, or a group of one (mixed precision): leave the process group cleanly
    return summary
