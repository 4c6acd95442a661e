"""The GPU lane: `make test-gpu` (pytest marker `gpu`) runs these on a CUDA device; without one they are skipped.

Each test runs the engine as a user would on a GPU, on the tiny offline Qwen2.5-VL (trainer.load_policy puts it on
cuda), unless it says otherwise:
- SFT steps; RL steps with a KL reference, full fine-tune and LoRA; evaluation before and after;
- the inline crop protocol and the multi-turn tools through the rollout (first round scripted, continuation sampled
  on the GPU with both images), then a backward pass over the packed trajectories;
- gradient checkpointing gives the same gradients as without it;
- train.mixed_precision bf16 in one process (a process group of one over NCCL) keeps the small update that pure bf16
  weights lose (tests/test_mixed_precision.py's check, on CUDA);
- a crash + resume with train.deterministic repeats the uninterrupted run bit for bit: sampled tokens (the CUDA
  sampling generator's state is in the checkpoint), losses, KL (tests/test_train_e2e.py's check, on CUDA);
- one process under torchrun (NCCL), with bf16 mixed precision;
- one RL step of a Qwen2.5-VL-3B-shaped random model (models.tiny --shape 3b, built in memory) on 448 px images,
  where the padded vocabulary's ids are never sampled; and the sampler refuses a CPU generator for a CUDA model.

    make test-gpu        # GPU_PY (default python3) must have a CUDA torch; see README "Real checkpoints on a GPU"
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.runtime import distributed as D
from engine import trainer
from engine.config.settings import Config, RolloutConfig
from engine.config.parsing import build_config
from engine.forward.packing import pack, row_logps
from engine.rollout.rollout import rollout
from engine.rollout.tool_calls import make_protocol
from models.generation import GREEDY, GenOutput, generate
from tests.engine_helpers import encode, make_prompt, request

SKIP = ("no CUDA device here: the GPU lane runs where torch.cuda.is_available() is true, with `make test-gpu` "
        "(GPU_PY=python3 by default, an environment with a CUDA torch)")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=SKIP)]
ROOT = Path(__file__).resolve().parent.parent
RL = ["--train.stage", "rl", "--rl.steps", "2", "--rollout.prompts_per_step", "2", "--rollout.group_size", "4",
      "--rollout.max_new_tokens", "12", "--rollout.temperature", "1.0", "--algo.kl_beta", "0.04"]


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    out = tmp_path_factory.mktemp("colors")
    subprocess.run([sys.executable, "-m", "data.synth", "colors", "--n", "24", "--out", str(out), "--seed", "3"],
                   check=True, cwd=ROOT, capture_output=True)
    return out / "data.jsonl"


def _cfg(data, out_dir, *extra, eval_data=""):
    return build_config(Config, overrides=[
        "--data.train", str(data), "--data.eval", str(eval_data), "--train.out_dir", str(out_dir),
        "--train.tensorboard", "false", "--train.sample_every", "0", *extra])


def _run(cfg) -> tuple[trainer.Run, dict]:
    run = trainer.Run(cfg)
    try:
        return run, run.main()
    finally:
        D.close()


def _metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in open(Path(out_dir) / "metrics.jsonl")]


def test_sft_steps_on_cuda(colors, tmp_path):
    run, _ = _run(_cfg(colors, tmp_path, "--train.stage", "sft", "--sft.steps", "4", "--sft.batch_size", "4",
                       "--sft.lr", "2e-3"))
    assert next(run.vlm.model.parameters()).is_cuda
    losses = [m["sft/loss"] for m in _metrics(tmp_path) if "sft/loss" in m]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("lora", [[], ["--lora.r", "8"]], ids=["full", "lora"])
def test_rl_steps_with_kl_and_evaluation_on_cuda(colors, tmp_path, lora):
    run, summary = _run(_cfg(colors, tmp_path, *RL, "--train.eval_at_start", "true", "--data.num_eval_examples",
                             "4", *lora, eval_data=colors))
    assert run.generator.device.type == "cuda"  # torch.multinomial on CUDA probabilities needs it
    steps = [m for m in _metrics(tmp_path) if "reward/total" in m]
    assert len(steps) == 2
    for m in steps:
        assert all(math.isfinite(m[k]) for k in ("train/loss", "train/kl", "train/grad_norm", "reward/total"))
    assert steps[0]["train/kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the policy as RL starts
    assert {"accuracy_before", "accuracy_after_rl"} <= set(summary) and summary["num_eval_examples"] == 4


@pytest.mark.parametrize("name,call", [("inline", "Let me look closer. <tool_call>[28, 21, 84, 63]</tool_call>"),
                                       ("multiturn", '<tool>{"name": "adjust_brightness", "args": {"factor": 1.5}}'
                                                     '</tool>')])
def test_tool_protocols_through_the_rollout_on_cuda(name, call):
    """Round 0 is scripted (every sample writes the call), the protocol injects the tool's image, round 1 samples on
    the GPU from the whole sequence with both images, and a backward pass runs over the packed result."""
    vlm = trainer.load_policy(build_config(Config, overrides=["--data.train", "x.jsonl"]))
    assert next(vlm.model.parameters()).is_cuda
    prompt = make_prompt(vlm, (100, 80), "What is in the box?", 0)
    scripted, rounds = encode(vlm, call), []

    class FirstRoundScripted:  # the rollout's sampler hook (engine/rollout/vllm_sampler.py has the same contract)
        def generate(self, requests, sampling, *, images_per_request, expand=1, **call):
            rounds.append(len(requests))
            if len(rounds) == 1:
                return [GenOutput(tokens=list(scripted), logps=[-1.0] * len(scripted), stop="stop")
                        for _ in range(len(requests) * expand)]
            return generate(vlm.model, requests, sampling, pad_id=vlm.family.pad_id, expand=expand, **call)

        def any_live(self, local: bool) -> bool:  # one process, no engine shared with others
            return local

    settings = RolloutConfig(group_size=2, max_new_tokens=40, max_total_tokens=4096, max_tool_calls=1,
                             temperature=1.0)
    trajs = rollout(vlm, [prompt], settings, protocol=make_protocol(name, vlm),
                    generator=torch.Generator(device="cuda").manual_seed(0), sampler=FirstRoundScripted())
    assert rounds == [1, 2]  # both samples called the tool and were continued
    for t in trajs:
        assert [c.ok for c in t.tool_calls] == [True] and len(t.grid_thw) == 2
    vlm.model.train()
    for row in pack(trajs, 4096):
        logp_K, _ = row_logps(vlm.model, row)
        (-logp_K.mean()).backward()
    grads = [p.grad for p in vlm.model.parameters() if p.grad is not None]
    assert grads and all(g.is_cuda and torch.isfinite(g).all() for g in grads)


def test_gradient_checkpointing_gives_the_same_gradients_on_cuda(colors):
    from engine.setup.data_setup import load_data
    from engine.report.evaluate import prompts_for
    from engine.algo.sft import sft_trajectory, target_text

    cfg = build_config(Config, overrides=["--data.train", str(colors)])
    examples, _ = load_data(cfg, verbose=False)
    grads = []
    for checkpointing in (False, True):
        vlm = trainer.load_policy(cfg)
        if checkpointing:
            trainer.enable_gradient_checkpointing(vlm.model)
        vlm.model.train()
        trajs = [sft_trajectory(p, target_text(e, cfg.data.sft_template, p, vlm), vlm)
                 for p, e in zip(prompts_for(examples[:4], vlm, cfg), examples[:4])]
        for row in pack(trajs, 4096):
            (-row_logps(vlm.model, row)[0].sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in vlm.model.parameters() if p.grad is not None]))
    assert grads[0].is_cuda and torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_bf16_mixed_precision_in_one_process_on_cuda(tmp_path):
    import tests.test_mixed_precision as mp

    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "data.synth", "colors", "--n", "16", "--out", str(data), "--seed", "5"],
                   check=True, cwd=ROOT, capture_output=True)
    mp.test_bf16_mixed_precision_keeps_the_small_update_that_pure_bf16_loses(data / "data.jsonl", tmp_path / "runs")


def test_resume_after_crash_is_bitwise_on_cuda(tmp_path, monkeypatch):
    import tests.test_train_e2e as e2e
    from engine.runtime.checkpoint import load_checkpoint

    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "data.synth", "colors", "--n", "48", "--out", str(data), "--seed", "3"],
                   check=True, cwd=ROOT, capture_output=True)
    with e2e.vowel_share_reward() as weights:
        e2e.test_resume_after_crash_reproduces_the_uninterrupted_losses(data / "data.jsonl", tmp_path / "runs",
                                                                        monkeypatch, weights, sft_steps=60)
    state = load_checkpoint(next((tmp_path / "runs" / "crashed" / "checkpoints").glob("step_*")), model=None)
    assert state["rng"][0]["generator_devices"] == {"sampler": "cuda"}  # a CUDA generator's state was restored


def test_a_gpu_checkpoint_resumes_on_the_cpu(colors, tmp_path, monkeypatch):
    """A GPU run stopped after 2 of 3 steps (its checkpoint: CUDA AdamW state, a CUDA sampling generator), resumed
    where no GPU is visible: the state loads onto the CPU and the run ends with a fresh CPU sampling stream."""
    real_step, calls = trainer.rl_step, []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash after step 2")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "rl_step", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(colors, tmp_path, *RL, "--rl.steps", "3", "--train.save_every", "1"))
    cmd = [sys.executable, "train.py", "--data.train", str(colors), "--train.out_dir", str(tmp_path),
           "--train.tensorboard", "false", "--train.sample_every", "0", *RL, "--rl.steps", "3", "--train.resume",
           "true"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "sampled on cuda, this run samples on cpu" in proc.stdout
    assert len([m for m in _metrics(tmp_path) if "reward/total" in m]) == 3


def test_torchrun_one_process_nccl_with_mixed_precision(colors, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train.py",
           "--data.train", str(colors), "--train.out_dir", str(tmp_path),
           "--train.tensorboard", "false", "--train.sample_every", "0", "--train.mixed_precision", "bf16", *RL,
           "--train.stage", "sft,rl", "--sft.steps", "2", "--sft.batch_size", "4"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    steps = [m for m in _metrics(tmp_path) if "reward/total" in m]
    assert len(steps) == 2 and all(math.isfinite(m["train/loss"]) for m in steps)
    assert (tmp_path / "summary.json").is_file()


def test_3b_shape_rl_step_on_448_px_images(tmp_path):
    """The benchmark's model (scripts/bench_gpu.py) in a small step: real dimensions, the padded vocabulary."""
    from scripts.bench_gpu import build_state, make_images_data
    from engine.report.evaluate import prompts_for
    from engine.algo.step import rl_step

    data = make_images_data(tmp_path / "data", side=448, n=4)
    cfg, vlm, state, examples = build_state("qwen2_5_vl", "3b", data, prompts=2, group=2, new_tokens=16,
                                            micro_batch_tokens=8192, checkpointing=True, work=tmp_path / "model")
    assert vlm.model.get_input_embeddings().weight.shape[0] == 151936 > vlm.family.num_token_ids
    metrics, trajs, _, _ = rl_step(state, prompts_for(examples[:2], vlm, cfg))
    assert all(t.grid_thw.tolist() == [[1, 32, 32]] for t in trajs)  # 448 px: 32 x 32 patches, not resized down
    assert max(i for t in trajs for i in t.ids[t.prompt_len:]) < vlm.family.num_token_ids
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["train/kl"])


def test_sampler_refuses_a_cpu_generator_for_a_cuda_model():
    vlm = trainer.load_policy(build_config(Config, overrides=["--data.train", "x.jsonl"]))
    prompt = make_prompt(vlm, (56, 56), "What colour?", 0)
    with pytest.raises(ValueError, match="generator is on cpu and the model on cuda"):
        generate(vlm.model, [request(prompt, vlm)], GREEDY, pad_id=vlm.family.pad_id, max_new_tokens=2,
                 generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("attn,dtype", [("sdpa", "float32"), ("varlen", "bfloat16")])
def test_decoding_step_replayed_as_a_cuda_graph_equals_eager_decoding(attn, dtype):
    """The rollout's default on a GPU (decode "auto" -> "graph"): the same tokens and log-probs as the fixed-shape
    step run eagerly, and (float32) greedy tokens as the dynamic loop's, on a left-padded batch; a graph was
    captured. (bf16 rounds differently over a cache of another length, so only float32 compares with dynamic.)"""
    import warnings

    import models.decode_graph as DG

    vlm = trainer.load_policy(build_config(Config, overrides=["--data.train", "x.jsonl", "--model.dtype", dtype,
                                                              "--model.attn_implementation", attn]))
    reqs = [request(make_prompt(vlm, size, q, seed), vlm) for size, q, seed in
            [((90, 60), "What colour?", 0), ((56, 112), "How many dots are there in the picture?", 1)]]
    captured = []
    real_call = DG.DecodeStep.__call__

    def recording(self, *args):
        out = real_call(self, *args)
        captured.append(self.graph is not None)
        return out

    def run(decode, temperature, seed=0):
        g = torch.Generator(device="cuda").manual_seed(seed)
        return generate(vlm.model, reqs, RolloutConfig(temperature=temperature), pad_id=vlm.family.pad_id,
                        max_new_tokens=16, expand=3, generator=g, decode=decode)

    DG.DecodeStep.__call__ = recording
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graph_sampled, graph_greedy = run("graph", 1.0), run("graph", 0.0)
    finally:
        DG.DecodeStep.__call__ = real_call
    assert captured and all(captured), "the decoding step was not captured as a CUDA graph"
    assert not [w for w in caught if "CUDA graph" in str(w.message)]
    for graph, static in [(graph_sampled, run("static", 1.0)), (graph_greedy, run("static", 0.0))]:
        assert [o.tokens for o in graph] == [o.tokens for o in static]
        for a, b in zip(graph, static):
            torch.testing.assert_close(torch.tensor(a.logps), torch.tensor(b.logps), rtol=0, atol=1e-6)
    assert len({tuple(o.tokens) for o in graph_sampled}) > 2  # real draws
    if dtype != "float32":
        return
    dynamic = run("dynamic", 0.0)
    assert [o.tokens for o in graph_greedy] == [o.tokens for o in dynamic]
    for a, b in zip(graph_greedy, dynamic):
        torch.testing.assert_close(torch.tensor(a.logps), torch.tensor(b.logps), rtol=0, atol=1e-4)
