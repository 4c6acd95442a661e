"""Data-parallel training with FSDP2, torch-native: torchrun's environment, `fully_shard`, a few collectives.

    torchrun --nproc_per_node 2 train.py --config configs/demo.toml      # gloo on CPU, nccl on CUDA
    python train.py ...                                                   # the same calls, single process

    dist = init()                                  # reads RANK / WORLD_SIZE / LOCAL_RANK; no-op without torchrun
    dist = init(world_of_one=True)                 # without torchrun: a group of this process alone (FSDP2 in one
                                                   # process, for bf16 mixed precision with fp32 master weights)
    shard_model(model, mixed_precision="bfloat16") # vision blocks, vision tower, decoder layers, then the root
    mine = [prompts[i] for i in shard_indices(len(prompts), dist.rank, dist.world)]
    num_tokens = all_reduce_sum(local_tokens)      # the step's GLOBAL loss-token count, before the loss
    metrics = all_reduce_metrics(metrics)          # mean over ranks, one collective
    state = full_state_dict(model)                 # every rank calls; only rank 0 gets the tensors
    optim = full_optimizer_state_dict(model, opt)  # likewise; load_*_state_dict broadcast rank 0's copy back

Without torchrun every collective is the identity and `shard_model` returns the model untouched, so a single
CPU process runs exactly the code a multi-GPU run does. One process that wants FSDP2's mixed precision
(bf16 compute, fp32 master weights and optimizer state: train.mixed_precision) joins a group of one
(`init(world_of_one=True)`, an in-process store, no ports) and is sharded like one rank of many: the same policy
as under torchrun, every collective a copy.

Gradients are SUMMED over ranks, not averaged (FSDP2's default): every loss in this engine is already divided by
the global token / sequence count of the optimizer step, so per-rank gradients add up to the full-batch
gradient; averaging would scale every step's gradient by 1/world.

FSDP2 runs collectives inside every sharded forward and backward, so all ranks must make the same number of
calls. Two places where ranks naturally differ: generation (different stop steps, different tool rounds) —
run it inside `unsharded(model)`, which gathers the parameters once and makes forwards local; and packed
micro-batches (different row counts) — take `max_over_ranks(len(rows))` rows on every rank, padding with
zero-weight rows.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_JOINED = False  # init() joined torchrun's group (an in-process vLLM engine creates a world-1 group of its own)


def active() -> bool:
    return _JOINED and dist.is_initialized()


def init(*, world_of_one: bool = False) -> Dist:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA); without torchrun, a single-process Dist, which
    with `world_of_one` is also a process group of this process alone (so that FSDP2 can shard it)."""
    cuda = torch.cuda.is_available()
    global _JOINED
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        if active() and not world_of_one:  # a group of one that an earlier run in this process left (it crashed)
            close()
        if world_of_one and not active():  # (an earlier run's group of one is reused as is)
            if dist.is_initialized():
                raise ValueError("a torch.distributed group already exists in this process (an in-process vLLM "
                                 "engine?): train.mixed_precision in one process needs its own group of one")
            if cuda:
                torch.cuda.set_device(device)
            # An in-process store: nothing listens on a port, and two runs on one machine never collide.
            dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
            _JOINED = True
        return Dist(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    _JOINED = True
    return Dist(rank=rank, world=world, local_rank=local, device=device)


def close() -> None:
    global _JOINED
    if active():
        dist.destroy_process_group()
    _JOINED = False


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _hf_root(model) -> torch.nn.Module:
    """The Hugging Face model inside a peft wrapper (FSDP shards that, never the wrapper)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _units(hf) -> tuple[list[torch.nn.Module], torch.nn.Module | None, list[torch.nn.Module]]:
    """(vision blocks, vision tower, decoder layers) of a Qwen-VL-style model (transformers 5 layout)."""
    inner = getattr(hf, "model", None)
    lm = getattr(inner, "language_model", None)
    if lm is None or not hasattr(lm, "layers"):
        raise ValueError(f"{type(hf).__name__}: expected model.language_model.layers (Qwen2/2.5/3-VL layout in "
                         "transformers 5); shard_model does not know how to split this model")
    visual = getattr(inner, "visual", None)
    blocks = list(getattr(visual, "blocks", [])) if visual is not None else []
    return blocks, visual, list(lm.layers)


def shard_model(model, *, mixed_precision: str | None = None):
    """FSDP2 over all ranks: each vision block, the vision tower as a unit (transformers' generate() runs the
    encoder outside the root's forward: without its own unit that gives "mixed Tensor and DTensor", docs/PLATFORM.md;
    models.generation passes pixel_values through the root and works either way), each decoder layer, then the
    HF model as root. Modifies `model` in place and returns it (a PeftModel stays a PeftModel). Single process:
    returns the model untouched. Call after loading weights (checkpoints load full tensors) and before building
    the optimizer (it must hold the sharded parameters)."""
    if mixed_precision is not None and mixed_precision not in DTYPES:
        raise ValueError(f"mixed_precision {mixed_precision!r} unknown; choose one of {sorted(DTYPES)} or None")
    if not active():
        if mixed_precision is not None:
            raise ValueError("mixed_precision shards the model with FSDP2: launch with torchrun, or in one process "
                             "call init(world_of_one=True) first (the trainer does for train.mixed_precision)")
        return model
    master = {p.dtype for p in model.parameters()}
    if mixed_precision is not None and master != {torch.float32}:
        raise ValueError(f"mixed_precision {mixed_precision!r} keeps fp32 master weights, but the model's parameters "
                         f"are {sorted(map(str, master))}: load the model in float32 (model.dtype = float32)")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    hf = _hf_root(model)
    mesh = init_device_mesh(_comm_device().type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy() if mixed_precision is None else MixedPrecisionPolicy(
        param_dtype=DTYPES[mixed_precision], reduce_dtype=torch.float32)
    blocks, visual, layers = _units(hf)
    for unit in blocks + ([visual] if visual is not None else []) + layers + [hf]:
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    for m in hf.modules():  # sum, not mean, over ranks: losses are already divided by GLOBAL counts
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return model


def parameter_groups(model) -> list[list[tuple[str, torch.nn.Parameter]]]:
    """The model's parameters (state-dict names, tied ones under each name) split as `shard_model` splits them into
    FSDP2 units, in its order: each vision block, the rest of the vision tower, each decoder layer, then the rest of
    the model (embeddings, final norm, LM head). A decoder layer's fused groups (q/k/v, gate/up) and its LoRA
    adapters are in one group. Sharded or not: the same groups in one process. Under FSDP2 every unit is
    resharded first (local), so a group holds the shards the optimizer steps, never a unit a forward left gathered."""
    if active():
        _resharded(model)
    hf = _hf_root(model)
    blocks, visual, layers = _units(hf)
    units = blocks + ([visual] if visual is not None else []) + layers + [hf]
    owner: dict[int, int] = {}  # parameter -> its innermost unit (inner units come first in `units`)
    for i, unit in enumerate(units):
        for p in unit.parameters():
            owner.setdefault(id(p), i)
    groups: list[list[tuple[str, torch.nn.Parameter]]] = [[] for _ in units]
    for name, p in model.named_parameters(remove_duplicate=False):
        groups[owner[id(p)]].append((name, p))
    return [g for g in groups if g]


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP2-sharded) parameter, on its device: an all-gather for a DTensor shard
    (collective: every rank calls it, in the same order), the tensor itself otherwise (no copy)."""
    from torch.distributed.tensor import DTensor

    return p.full_tensor().detach() if isinstance(p, DTensor) else p.detach()


@contextlib.contextmanager
def unsharded(model):
    """Gather every sharded parameter once and keep it gathered: forwards inside make no collectives, so ranks
    may run different numbers of them (generation). Costs one full copy of the parameters per rank (in the
    mixed-precision dtype). A no-op when the model is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    hf = _hf_root(model)
    if not isinstance(hf, FSDPModule):
        yield model
        return
    units = [m for m in hf.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield model
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(m is not hf, recurse=False)  # FSDP2's defaults: the root keeps its params


def all_reduce_sum(x) -> torch.Tensor:
    """Sum of a number or tensor over ranks (a tensor of x's dtype, on the communication device)."""
    t = torch.as_tensor(x).detach().clone()
    if not active():
        return t
    t = t.to(_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def max_over_ranks(x: int) -> int:
    """The largest of an int over ranks (sync point: .item())."""
    if not active():
        return int(x)
    t = torch.tensor(int(x), device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _scalar(v) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        from torch.distributed.tensor import DTensor

        if isinstance(v, DTensor):  # e.g. clip_grad_norm_'s total norm over sharded gradients
            v = v.full_tensor()
        return v.detach().reshape(()).to(torch.float64)
    return torch.tensor(float(v), dtype=torch.float64)


def all_reduce_metrics(metrics: dict) -> dict[str, float]:
    """Mean over ranks of each scalar metric, in ONE collective (sync point: one .tolist()). Every rank must
    pass the same keys (checked: a fingerprint of the key names travels with the values)."""
    keys = sorted(metrics)
    if not keys:
        return {}
    device = _comm_device() if active() else torch.device("cpu")
    values_M = torch.stack([_scalar(metrics[k]).to(device) for k in keys])
    if not active():
        return dict(zip(keys, values_M.tolist()))
    fingerprint = float(zlib.crc32("\n".join(keys).encode()))  # < 2**32: exact in float64, and so is its sum
    t = torch.cat([values_M, torch.tensor([fingerprint], dtype=torch.float64, device=device)])
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    out = (t / dist.get_world_size()).tolist()
    if out[-1] != fingerprint:
        raise ValueError(f"all_reduce_metrics: ranks passed different metric names (rank {dist.get_rank()} had "
                         f"{keys}); give every rank the same keys, e.g. 0 for a count it did not see")
    return dict(zip(keys, out[:-1]))


def rank() -> int:
    """This process's rank (0 in one process)."""
    return dist.get_rank() if active() else 0


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order; [obj] in one process. For small things only (metric key
    names, reward lists for logging): it pickles through the communication device."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """The items this rank takes: a contiguous block; sizes differ by at most one (the first n % world ranks
    take one more). Whole prompts go to one rank, so a prompt's group of samples never spans ranks."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0..{world - 1}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (rank < extra)))


def _resharded(model):
    """FSDP2 leaves the root's parameters gathered after a forward until the next backward (and for good after
    a no_grad forward): state-dict code would then see plain tensors in place of the optimizer's shards
    (get_optimizer_state_dict fails with a KeyError). Resharding is local: no collective."""
    from torch.distributed.fsdp import FSDPModule

    for m in _hf_root(model).modules():
        if isinstance(m, FSDPModule):
            m.reshard()
    return model


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """Unsharded CPU tensors under the model's own keys (a PeftModel's keys for a PeftModel). Collective: every
    rank calls it; rank 0 gets the tensors, other ranks an empty dict."""
    if not active():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    _resharded(model)

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (full_state_dict's keys) into a model sharded the same way, e.g. a frozen
    reference built from the policy (FSDP modules refuse deepcopy). Every rank calls it; under torchrun only
    rank 0 needs `state` (it is broadcast and each rank keeps its shard)."""
    if not active():
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    _resharded(model)
    # A copy of the mapping: set_model_state_dict replaces the entries of the dict it is given (the caller's
    # tensors would be left with freed storage).
    set_model_state_dict(model, dict(state),
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def full_optimizer_state_dict(model, optimizer) -> dict:
    """The optimizer's state keyed by parameter names, unsharded on rank 0 (collective, like full_state_dict).
    Load it back with load_optimizer_state_dict on a model sharded (or not) the same way."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if active():
        _resharded(model)
    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=active()))


def load_optimizer_state_dict(model, optimizer, state: dict) -> None:
    """Every rank calls it; under torchrun only rank 0 needs `state` (it is broadcast). Clears the gradients:
    torch initialises a fresh optimizer's state (a zero-lr step) only when no parameter holds a gradient."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    optimizer.zero_grad(set_to_none=True)
    if active():
        _resharded(model)
    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=active()))


def barrier() -> None:
    if active():
        dist.barrier()
