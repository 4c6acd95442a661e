"""The FSDP2 worker that tests/test_distributed.py launches, and the single-process reference it is compared with.

    torchrun --nproc_per_node 2 --master_port 29511 tests/dist_worker.py OUT_DIR

Every rank builds the SAME 4 SFT trajectories (data.synth `colors`, fixed seed), takes its share with
shard_indices, and runs one optimizer step of token-mean cross-entropy −Σ logp / (GLOBAL token count,
all-reduced), clip_grad_norm_, AdamW. Three runs:
- full fine-tune (`run_full`): greedy generation of each rank's own prompts inside `unsharded` with a per-rank
  length (ranks make different numbers of forwards there), then the step, then sharded greedy generation;
- LoRA on LM + vision attention (`run_lora`): the PeftModel's HF model is sharded; after the step the
  adapters-off log-probs must equal the base model's, and rank 0 writes the adapter and the merged export
  from the gathered full state dict;
- bf16 mixed precision (`run_mixed_precision`, torchrun only): the same step, loss close to fp32's.
Rank r writes OUT/rank{r}.json; rank 0 also OUT/state.safetensors (full fine-tune, after the step),
OUT/adapter/ and OUT/merged/.

The test imports `run_full` / `run_lora` and calls them without torchrun (init() gives a single-process Dist):
the same code on all 4 trajectories is the reference. Trajectories 0-1 have long targets and 2-3 short ones,
and the row budget packs 2-3 into one row but not 0-1: rank 0 has two rows, rank 1 one, so rank 1 runs one
zero-weight padding row.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

if __name__ == "__main__":  # torchrun runs this file as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.distributed.fsdp import FSDPModule

from data.example import Example
from data.synth import generate as synth
from engine.runtime.distributed import (Dist, all_gather_objects, all_reduce_metrics, all_reduce_sum, barrier,
                                full_optimizer_state_dict, full_state_dict, init, load_full_state_dict,
                                load_optimizer_state_dict, max_over_ranks, shard_indices, shard_model, unsharded)
from engine.runtime.lora import adapters_disabled, apply_lora, merged_export, save_adapter
from engine.forward.packing import pack, row_logps
from models.generation import generate
from engine.algo.sft import sft_trajectory
from engine.rollout.trajectory import build_prompt
from tests.engine_helpers import SYSTEM, gen_args, load_tiny, request

NUM = 4
LR = 1e-3
MAX_GRAD_NORM = 1.0  # below the measured norm (~5.7): the global clip scales every shard by the same factor
TARGETS = ["<think>the square is drawn in one solid colour on a light background so I name it</think>"
           "<answer>{a}</answer>"] * 2 + ["<answer>{a}</answer>"] * 2


def examples() -> list[Example]:
    out = []
    for i, s in enumerate(synth("colors", NUM, seed=3)):
        buf = io.BytesIO()
        s.image.save(buf, format="PNG")
        out.append(Example(question=s.question, answers=[s.answer], images=[buf.getvalue()], origin=f"synth:{i}"))
    return out


def trajectories(vlm):
    prompts = [build_prompt(e, vlm, system_prompt=SYSTEM, question_template="{question}") for e in examples()]
    trajs = [sft_trajectory(p, t.format(a=p.example.answer), vlm) for p, t in zip(prompts, TARGETS)]
    return prompts, trajs


def row_budget(trajs) -> int:
    """Room for both short trajectories in one row, never for both long ones."""
    n = [len(t.ids) for t in trajs]
    budget = n[2] + n[3]
    assert n[0] <= budget and n[1] <= budget and n[0] + n[1] > budget, n
    return budget


def train_step(model, optimizer, trajs, budget: int, d: Dist) -> dict:
    mine = [trajs[i] for i in shard_indices(len(trajs), d.rank, d.world)]
    local_tokens = sum(sum(t.mask[1:]) for t in mine)
    num_tokens = all_reduce_sum(local_tokens)  # GLOBAL loss tokens of the step: every rank divides by it
    rows = pack(mine, budget)
    num_rows = max_over_ranks(len(rows))  # FSDP: every rank runs as many forwards/backwards as the busiest
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros(())
    for i in range(num_rows):
        row, weight = (rows[i], 1.0) if i < len(rows) else (rows[-1], 0.0)  # padding row: gradient 0
        logp_K, _ = row_logps(model, row)
        loss = -logp_K.sum() / num_tokens * weight
        loss.backward()
        loss_sum += loss.detach()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    optimizer.step()
    metrics = all_reduce_metrics({"grad_norm": grad_norm, "rows": float(len(rows))})
    return {"loss": float(all_reduce_sum(loss_sum)), "grad_norm": metrics["grad_norm"],
            "rows_mean": metrics["rows"], "num_tokens": int(num_tokens), "local_rows": len(rows),
            "num_rows": num_rows}


def greedy(vlm, prompts, indices: list[int], max_new_tokens: int) -> dict[int, dict]:
    """Per prompt: the greedy tokens and their log-probs (the log-probs pin the sharded forward far more tightly
    than the argmax does)."""
    params = gen_args(max_new_tokens=max_new_tokens, temperature=0.0)
    outs = generate(vlm.model, [request(prompts[i], vlm) for i in indices], **params,
                    pad_id=vlm.tokenizer.pad_token_id)
    return {i: {"tokens": o.tokens, "logps": o.logps} for i, o in zip(indices, outs)}


def run_full(d: Dist) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(results, full state dict after the step (rank 0; empty on others), state dict before the step)."""
    torch.manual_seed(0)
    vlm = load_tiny()  # eval mode: no dropout, so every rank and the reference compute the same function
    initial = {k: v.detach().clone() for k, v in vlm.model.state_dict().items()}
    prompts, trajs = trajectories(vlm)
    budget = row_budget(trajs)
    shard_model(vlm.model)
    optimizer = torch.optim.AdamW([p for p in vlm.model.parameters() if p.requires_grad], lr=LR)
    mine = shard_indices(len(prompts), d.rank, d.world)
    # Before the step, so the step also proves that leaving `unsharded` restores FSDP's state. Rank r stops
    # after 4 - 2r tokens: ranks make different numbers of forwards, which only works without collectives.
    with unsharded(vlm.model):
        before_step = greedy(vlm, prompts, mine, 4 - 2 * d.rank)
    result = train_step(vlm.model, optimizer, trajs, budget, d)
    result["greedy_unsharded"] = before_step
    result["greedy"] = greedy(vlm, prompts, mine, 4)  # sharded: every rank makes the same 4 forwards
    result["fsdp_units"] = [n for n, m in vlm.model.named_modules() if isinstance(m, FSDPModule)]
    try:
        all_reduce_metrics({f"only_on_rank{d.rank}": 1.0})
        result["metric_names_checked"] = False
    except ValueError:
        result["metric_names_checked"] = True
    result["gathered"] = all_gather_objects({"rank": d.rank})
    result["rank"], result["world"] = d.rank, d.world
    state = full_state_dict(vlm.model)
    # A frozen reference of the current policy (KL): a fresh model, sharded, loaded from rank 0's full state.
    reference = shard_model(load_tiny().model).requires_grad_(False)
    load_full_state_dict(reference, state)
    with torch.no_grad():
        (row,) = pack([trajs[i] for i in mine], 10_000)  # one row on every rank: the same number of forwards
        result["reference_equals_policy"] = torch.equal(row_logps(reference, row)[0], row_logps(vlm.model, row)[0])
    optim_state = full_optimizer_state_dict(vlm.model, optimizer)  # for a checkpoint: rank 0 gets it all
    for name, s in optim_state.get("state", {}).items():
        state[f"exp_avg:{name}"] = s["exp_avg"]  # compared with the reference like every parameter
    # Resume: a fresh optimizer loads it (rank 0's copy, broadcast) and holds the same shards.
    fresh = torch.optim.AdamW([p for p in vlm.model.parameters() if p.requires_grad], lr=LR)
    load_optimizer_state_dict(vlm.model, fresh, optim_state)
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731 (DTensor shard or plain)
    result["optimizer_reloaded"] = all(
        torch.equal(local(optimizer.state[p][k]), local(fresh.state[p][k]))
        for p in optimizer.state for k in ("exp_avg", "exp_avg_sq"))
    return result, state, initial


def run_lora(d: Dist, out: Path) -> dict:
    torch.manual_seed(0)
    vlm = load_tiny()
    _, trajs = trajectories(vlm)
    budget = row_budget(trajs)
    rows = pack([trajs[i] for i in shard_indices(len(trajs), d.rank, d.world)], budget)
    with torch.no_grad():
        base_K = [row_logps(vlm.model, r)[0] for r in rows]  # the plain model, before any adapter
    model = shard_model(apply_lora(vlm.model, r=4, alpha=8, dropout=0.0, target="language+vision"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    result = train_step(model, optimizer, trajs, budget, d)
    with torch.no_grad():  # same number of forwards on every rank: FSDP gathers inside each
        n = max_over_ranks(len(rows))
        with adapters_disabled(model):
            off_K = [row_logps(model, rows[min(i, len(rows) - 1)])[0] for i in range(n)][:len(rows)]
        on_K = [row_logps(model, rows[min(i, len(rows) - 1)])[0] for i in range(n)][:len(rows)]
    result["off_equals_base"] = all(torch.equal(a, b) for a, b in zip(off_K, base_K))
    result["on_minus_base"] = max((a - b).abs().max().item() for a, b in zip(on_K, base_K))
    state = full_state_dict(model)  # collective; rank 0 gets the tensors
    if d.is_main:
        save_adapter(model, out / "adapter", state_dict=state)
        merged_export(model, out / "merged", vlm.tokenizer, vlm.image_processor, state_dict=state)
    barrier()
    return result


def run_mixed_precision(d: Dist) -> dict:
    """bf16 compute, fp32 master weights and gradient reduction: the loss must move off the fp32 value a little."""
    vlm = load_tiny()
    _, trajs = trajectories(vlm)
    model = shard_model(vlm.model, mixed_precision="bfloat16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    result = train_step(model, optimizer, trajs, row_budget(trajs), d)
    result["param_dtype"] = str(next(model.parameters()).dtype)
    result["grad_dtype"] = str(next(p for p in model.parameters() if p.grad is not None).grad.dtype)
    return result


def main(out: str) -> None:
    from safetensors.torch import save_file

    d = init()
    out_dir = Path(out)
    result, state, _ = run_full(d)
    result["lora"] = run_lora(d, out_dir)
    result["mixed_precision"] = run_mixed_precision(d)
    (out_dir / f"rank{d.rank}.json").write_text(json.dumps(result))
    if d.is_main:
        save_file({k: v.contiguous() for k, v in state.items()}, out_dir / "state.safetensors")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
