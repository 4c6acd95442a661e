"""vLLM as the rollout sampler (`rollout.sampler = "vllm"`), with the same contract as models/generation.py.

    sampler = VLLMSampler(model_dir, max_model_len=4096, seed=0, limit_images=4)
    outs = sampler.generate(requests, cfg.rollout, max_new_tokens=32, stop_ids=eos, expand=G,
                            images_per_request=images)
    with sampler.awake():                                      # the rollout; asleep (memory free) outside it
        ...
    sampler.push_weights(weight_sync.policy_weights(model))    # after every optimizer step (LoRA: merged weights)

Runs vllm.LLM in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: ~4 s to start instead of ~30 s, 1.8 GB instead
of 3 GB), eager (no CUDA graphs / inductor: TORCH_COMPILE_DISABLE=1 saves a 20-45 s compile on CPU), fp32 on CPU.
Needs the separate venv built by scripts/install_vllm.sh; `import vllm` happens in the constructor only, so this
file imports anywhere.

Under torchrun every process runs its own engine with vLLM's `external_launcher` executor (TRL's "colocate"
mode): the engine joins the process group the trainer already made instead of making its own, and samples
only this process's prompts. `tensor_parallel` N > 1 shards one engine over N consecutive ranks (rank // N is
the engine): those ranks then submit the same requests - each gathers the others' (all_gather_object over a gloo
group of the N) and keeps its own outputs - and make every call together (`any_live` keeps their tool rounds
in step).

Where it departs from vLLM's defaults, on purpose (facts in docs/PLATFORM.md, "vLLM on CPU"):
- Log-probs: `logprobs_mode="processed_logprobs"`, i.e. log_softmax of the logits after the banned-id mask and
  the temperature: exactly models.generation's definition (and the trainer's row_logps at the same temperature).
  vLLM's default ("raw_logprobs") is the log-softmax BEFORE temperature. Greedy (temperature 0) gives
  log_softmax(logits) as ours does. Processed log-probs are renormalised over the top-k / top-p set, which ours
  are not, so top_k / top_p raise here instead of returning log-probs of another distribution.
- Banned ids: `allowed_token_ids` = every other id, a -inf mask applied before the temperature, as ours.
- Stops: `ignore_eos=True` + `stop_token_ids = stop_ids`, so a row stops on exactly our stop ids (the
  rollout puts the eos ids there) and the stop token is the last one returned, as in ours.
- Greedy with expand=G: vLLM refuses n > 1 when greedy, so one sample is copied G times (what ours returns).
- Images: vLLM's Qwen-VL processor replaces ONE `<|image_pad|>` per image by the image's expanded run, computed
  from the image itself. Our sequences hold the expanded runs, so each run is collapsed to one pad before it goes
  in, and the prompt vLLM rebuilds is checked token for token against ours: the sampled tokens continue exactly
  our sequence (a processor that resized differently would fail loudly here, not silently). vLLM computes the
  mrope positions itself; multi-image sequences (tool rounds) match the trainer's log-probs too.
- Randomness: a request's own seed (`GenRequest.seed`; the trainer gives each prompt one that depends on the run's
  seed, the step and the prompt's place in the step's batch, engine/rollout/rollout.py) or else one drawn from
  `generator` (or the sampler's own, seeded at construction); vLLM gives the k-th of n samples seed + k. The same
  seeds give the same samples whatever else is in the batch, and on whichever process samples them.
- Weights: `push_weights` streams (name, tensor) pairs in Hugging Face checkpoint naming through ONE
  `reload_weights(is_checkpoint_format=True)` call (plain `load_weights` fails on CPU: weights are repacked after
  loading), consumed lazily: engine/rollout/weight_sync.py gathers each parameter group from FSDP2's shards when
  vLLM reaches it. Then it resets the encoder cache (stale vision embeddings; without it the next image request
  kills the engine) and the prefix cache (KV blocks computed with old weights would be reused silently). Pass
  whole fused groups (q/k/v, gate/up): a layer is loaded when all its tensors arrived.
- Memory between phases (`sleep`, GPU): outside `awake()` the engine sleeps at vLLM's level 1 - the KV cache is
  dropped and the weights wait in host memory - so the reference forward and the update get its GPU memory;
  `push_weights` wakes the weights, `awake()` the KV cache. Level 2 (weights discarded) is not used: vLLM
  documents it as losing buffers such as rotary caches (vllm#29341; NeMo-RL#2631 saw corrupted VLM rollouts).
  vLLM has no sleep mode on a CPU: there `sleep` is off and must not be asked for.

What an in-process engine does to the process it lives in (measured here; the trainer owns these, so):
- its CPU worker reseeds torch's global RNG at start and its CPU sampler draws from it at every step: both run
  under `torch.random.fork_rng`, so the trainer's global RNG never moves;
- it replaces `torch.set_num_threads` with a no-op for the rest of the process: put back after construction;
- in one process it creates a world-1 torch.distributed process group (gloo on CPU) unless one exists; under
  torchrun it joins torchrun's. Either way `close()` (vLLM's shutdown) destroys the default group: close the
  sampler after the run's last collective. Code that takes "a process group exists" for "launched by torchrun"
  must not (engine.runtime.distributed.active() counts only the group its init() joined); it also sets a NUMA
  membind policy for the process (one node: no effect).
Shapes: T tokens, G samples per prompt.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from engine.runtime import distributed as D
from engine.setup.run_setup import check_vllm_settings as check_settings  # noqa: F401 (its old home)
from models.generation import GenOutput, GenRequest, Sampling

_DTYPES = ("float32", "bfloat16", "float16")


def collapse_image_runs(ids: list[int], image_token_id: int) -> list[int]:
    """Each run of consecutive `image_token_id` becomes one token (vLLM's processor expands it again).
    Consecutive image blocks are always separated by <|vision_end|><|vision_start|>, so runs never merge."""
    out: list[int] = []
    for t in ids:
        if t == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(t)
    return out


def check_params(sampling: Sampling) -> None:
    if sampling.top_k > 0 or sampling.top_p < 1.0:
        raise ValueError(
            f"rollout.sampler = vllm with top_k={sampling.top_k}, top_p={sampling.top_p}: vLLM's processed log-probs "
            "are renormalised over the top-k/top-p set, not the full temperature-scaled distribution the trainer "
            "scores; use top_k=0, top_p=1 with vllm, or the native sampler")


class _BufferOnlyReloadNotice(logging.Filter):
    """Drops vLLM's "<Layer>: Failed to load weights" at every push for layers that hold only derived buffers no
    checkpoint carries, which vLLM puts back itself: rotary cos/sin caches and the image input normalisation
    (mean/std). A layer with real weights that did not load still warns."""

    BUFFER_ONLY = ("RotaryEmbedding", "MRotaryEmbedding", "FusedMMInputNorm")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.getMessage() == f"{name}: Failed to load weights" for name in self.BUFFER_ONLY)


_BUFFER_ONLY_NOTICE = _BufferOnlyReloadNotice()  # one instance: addFilter ignores it when already there


@dataclass
class _Job:
    """One request as the engine runs it (picklable: processes sharing an engine exchange them)."""

    prompt: dict  # {"prompt_token_ids": ids with each image run collapsed, "multi_modal_data"?: {"image": [PIL]}}
    limit: int  # new tokens at most
    seed: int


def _torchrun_world() -> int:
    """The number of processes the trainer's own process group spans (1 without torchrun)."""
    return dist.get_world_size() if D.active() else 1


class VLLMSampler:
    def __init__(self, model_dir: str | Path, *, max_model_len: int, kv_cache_gib: int = 1, seed: int = 0,
                 limit_images: int = 4, dtype: str = "float32", gpu_memory_utilization: float = 0.4,
                 tensor_parallel: int = 1, sleep: bool | None = None):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: choose one of {_DTYPES}")
        world = _torchrun_world()
        if tensor_parallel < 1 or world % tensor_parallel:
            raise ValueError(f"rollout.vllm_tp = {tensor_parallel} must divide the {world} processes (each engine "
                             "is sharded over that many consecutive ranks)")
        # Read by vLLM when the engine is built (set before the import so every vllm.envs read sees them).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ["TORCH_COMPILE_DISABLE"] = "1"
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines would bury the progress bar
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as e:
            raise ValueError("rollout.sampler = vllm needs vLLM: build .venv-vllm with `bash scripts/install_vllm.sh` "
                             f"and run with .venv-vllm/bin/python ({e})") from e
        can_sleep = current_platform.is_sleep_mode_available()
        if sleep and not can_sleep:
            raise ValueError("rollout.vllm_sleep = true: vLLM has no sleep mode on this platform "
                             f"({current_platform.device_type}); leave it at none (on where vLLM has it) or false")
        self.sleeps = can_sleep if sleep is None else sleep
        self._vllm = vllm
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_BUFFER_ONLY_NOTICE)
        self.model_dir = Path(model_dir)
        self.tp = tensor_parallel
        self.tp_group, self.tp_rank = self._tensor_parallel_group(world)
        # Under torchrun the engine joins the trainer's process group (vLLM's "external_launcher": torchrun's RANK,
        # LOCAL_RANK, MASTER_ADDR / PORT); the processes of one sharded engine get one engine seed.
        launcher = {"distributed_executor_backend": "external_launcher"} if world > 1 else {}
        engine_seed = seed + (dist.get_rank() // tensor_parallel if world > 1 else 0)
        # In-process, vLLM's CPU worker reseeds torch's global RNG and replaces torch.set_num_threads with a
        # no-op for the rest of the process: the trainer owns both, so both are put back.
        set_num_threads = torch.set_num_threads
        with torch.random.fork_rng(devices=[]):
            try:
                self.llm = vllm.LLM(
                    model=str(self.model_dir), dtype=dtype, seed=engine_seed, max_model_len=max_model_len,
                    enforce_eager=True, limit_mm_per_prompt={"image": limit_images, "video": 0},
                    logprobs_mode="processed_logprobs", gpu_memory_utilization=gpu_memory_utilization,
                    tensor_parallel_size=tensor_parallel, enable_sleep_mode=self.sleeps, **launcher)
            finally:
                torch.set_num_threads = set_num_threads
        config = self.llm.llm_engine.model_config.hf_config
        self.image_token_id = int(config.image_token_id)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self.generator = torch.Generator().manual_seed(seed)
        self._allowed: dict[tuple, list[int]] = {}  # (banned ids, num_token_ids) → allowed ids, built once each
        self._asleep: list[str] = []  # what vLLM's sleep released and no wake_up has brought back yet

    def _tensor_parallel_group(self, world: int):
        """(a gloo group of the processes sharing this engine, this one's place in it); (None, 0) when unshared.
        Collective: every process makes every group (torch.distributed's rule), in the same order."""
        if self.tp == 1:
            return None, 0
        ranks = [list(range(start, start + self.tp)) for start in range(0, world, self.tp)]
        group, _ = dist.new_subgroups_by_enumeration(ranks, backend="gloo")  # objects (PIL images) travel on CPU
        return group, dist.get_rank() % self.tp

    # ------------------------------------------------------------------------------------- sampling
    def _sampling_params(self, sampling: Sampling, job: _Job, n: int, *, stop_ids: frozenset[int],
                         banned_ids: frozenset[int], num_token_ids: int):
        allowed = None
        num_ids = min(num_token_ids or self.vocab_size, self.vocab_size)
        if banned_ids or num_ids < self.vocab_size:  # masked before temperature, as ours: logps are over them
            key = (banned_ids, num_ids)
            if key not in self._allowed:
                self._allowed[key] = [i for i in range(num_ids) if i not in banned_ids]
            allowed = self._allowed[key]
        return self._vllm.SamplingParams(
            n=n, temperature=max(sampling.temperature, 0.0), max_tokens=job.limit, logprobs=0, seed=job.seed,
            stop_token_ids=sorted(stop_ids), ignore_eos=True, allowed_token_ids=allowed, detokenize=False,
            skip_special_tokens=False)

    def _jobs(self, requests: list[GenRequest], images_per_request: list[list], max_new_tokens: int,
              gen: torch.Generator) -> list[_Job]:
        # Requests without their own seed draw one: room for seed + k, k < G, on the generator's device (the
        # trainer's is the policy's, maybe CUDA); host sync: .tolist(), once per call (vLLM takes Python seeds).
        unseeded = sum(r.seed is None for r in requests)
        drawn = iter(torch.randint(0, 2**30, (unseeded,), generator=gen, device=gen.device).tolist()
                     if unseeded else [])
        jobs = []
        for r, images in zip(requests, images_per_request):
            n_img = 0 if r.grid_thw is None else len(r.grid_thw)
            if len(images) != n_img:
                raise ValueError(f"a request has {n_img} image blocks but {len(images)} images")
            prompt = {"prompt_token_ids": collapse_image_runs(list(r.ids), self.image_token_id)}
            if images:
                prompt["multi_modal_data"] = {"image": list(images)}
            jobs.append(_Job(prompt=prompt, limit=min(r.max_new_tokens or max_new_tokens, max_new_tokens),
                             seed=r.seed if r.seed is not None else next(drawn)))
        return jobs

    def _engine_jobs(self, jobs: list[_Job]) -> tuple[list[_Job], int]:
        """(the jobs the engine runs, where this process's start): its own, or with an engine sharded over several
        processes, every one of theirs in rank order (they must all submit the same requests)."""
        if self.tp_group is None:
            return jobs, 0
        gathered: list = [None] * self.tp
        dist.all_gather_object(gathered, jobs, group=self.tp_group)
        return [j for part in gathered for j in part], sum(len(part) for part in gathered[:self.tp_rank])

    def generate(self, requests: list[GenRequest], sampling: Sampling, *, max_new_tokens: int,
                 stop_ids: frozenset[int] = frozenset(), banned_ids: frozenset[int] = frozenset(),
                 num_token_ids: int = 0, expand: int = 1, images_per_request: list[list],
                 generator: torch.Generator | None = None) -> list[GenOutput]:
        """Continue every request; with expand=G each request yields G outputs (request-major order), as
        models.generation.generate. `images_per_request[i]` are request i's PIL images in sequence order (those
        its `grid_thw` rows were encoded from). `positions` / `pixel_values` of the requests are not used:
        vLLM computes both from the ids and the images. With a sharded engine every process sharing it must call
        this together (with its own requests, possibly none)."""
        check_params(sampling)
        if len(images_per_request) != len(requests):
            raise ValueError(f"{len(requests)} requests but images for {len(images_per_request)}")
        if not requests and self.tp_group is None:
            return []
        greedy = sampling.temperature <= 0  # vLLM refuses n > 1 when greedy: sample once, copy G times
        n = 1 if greedy else expand
        mine = self._jobs(requests, images_per_request, max_new_tokens,
                          generator if generator is not None else self.generator)
        jobs, offset = self._engine_jobs(mine)
        sps = [self._sampling_params(sampling, j, n, stop_ids=stop_ids, banned_ids=banned_ids,
                                     num_token_ids=num_token_ids) for j in jobs]
        with torch.random.fork_rng(devices=[]):  # vLLM's CPU sampler draws from the global RNG
            results = self.llm.generate([j.prompt for j in jobs], sps, use_tqdm=False) if jobs else []
        outs: list[GenOutput] = []
        for r, res in zip(requests, results[offset:offset + len(requests)]):
            if list(res.prompt_token_ids) != list(r.ids):
                raise RuntimeError("vLLM expanded the image placeholders differently from our sequence "
                                   f"({len(res.prompt_token_ids)} vs {len(r.ids)} tokens): its image processor "
                                   "resized an image to another grid than models.vision.encode_images did")
            assert len(res.outputs) == n
            for c in sorted(res.outputs, key=lambda c: c.index):
                tokens = list(c.token_ids)
                logps = [float(lp[t].logprob) for t, lp in zip(tokens, c.logprobs)]
                stop = "stop" if c.finish_reason == "stop" and tokens and tokens[-1] in stop_ids else "length"
                for _ in range(expand if greedy else 1):
                    outs.append(GenOutput(tokens=list(tokens), logps=list(logps), stop=stop))
        return outs

    def any_live(self, local: bool) -> bool:
        """Whether any process sharing this engine has requests for the next round (`local`: this one has)."""
        if self.tp_group is None:
            return local
        flag = torch.tensor([int(local)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.tp_group)
        return bool(flag.item())  # host sync: the answer decides whether this process calls generate

    # ------------------------------------------------------------------------------------- weights and memory
    @torch.no_grad()
    def push_weights(self, named_tensors) -> None:
        """Load new policy weights: (name, tensor) pairs in HF checkpoint naming, consumed once, in order
        (engine/rollout/weight_sync.py's policy_weights, or a state dict's items()). Then drop every cache
        computed with the old ones. Wakes the engine's weights first when it sleeps (its KV cache stays asleep)."""
        self._wake(["weights"])
        weights = iter(named_tensors)  # detached already (a state dict's, or weight_sync's): passed on as they are
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()

    @contextlib.contextmanager
    def awake(self):
        """The engine holds its GPU memory (weights and KV cache) inside, and sleeps after (vLLM level 1: the KV
        cache dropped, the weights moved to host memory), leaving the memory to the trainer. Without sleep mode
        (CPU, or rollout.vllm_sleep false): nothing happens."""
        self._wake(["weights", "kv_cache"])
        try:
            yield self
        finally:
            if self.sleeps:
                self.llm.sleep(level=1)
                self._asleep = ["weights", "kv_cache"]

    def _wake(self, tags: list[str]) -> None:
        tags = [t for t in tags if t in self._asleep]
        if not tags:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the trainer's cached blocks back to the driver, where vLLM allocates
        self.llm.wake_up(tags=tags)
        self._asleep = [t for t in self._asleep if t not in tags]

    def close(self) -> None:
        """Free the engine (KV cache, weights). Its shutdown also destroys the default torch.distributed group -
        the world-1 group vLLM made in one process, torchrun's under torchrun: call it after the last collective."""
        engine = getattr(self.llm, "llm_engine", None)
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()
        self.llm = None
