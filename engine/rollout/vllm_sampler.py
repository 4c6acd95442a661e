"""vLLM as the rollout sampler (`rollout.sampler = "vllm"`), with the same contract as models/generation.py.

    sampler = VLLMSampler(model_dir, max_model_len=4096, seed=0, limit_images=4)
    outs = sampler.generate(requests, cfg.rollout, max_new_tokens=32, stop_ids=eos, expand=G,
                            images_per_request=images)
    sampler.push_weights(model.state_dict().items())        # after every optimizer step (LoRA: merged weights)

Runs vllm.LLM in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: ~4 s to start instead of ~30 s, 1.8 GB instead
of 3 GB), eager (no CUDA graphs / inductor: TORCH_COMPILE_DISABLE=1 saves a 20-45 s compile on CPU), fp32 on CPU.
Needs the separate venv built by scripts/install_vllm.sh; `import vllm` happens in the constructor only, so this
file imports anywhere.

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
- Randomness: every request gets its own seed drawn from `generator` (or from the sampler's own generator seeded
  at construction); vLLM gives the k-th of n samples seed + k. The same seeds give the same samples whatever else
  is in the batch.
- Weights: `push_weights` streams (name, tensor) pairs in Hugging Face checkpoint naming through
  `reload_weights(is_checkpoint_format=True)` (plain `load_weights` fails on CPU: weights are repacked after
  loading), then resets the encoder cache (stale vision embeddings; without it the next image request kills the
  engine) and the prefix cache (KV blocks computed with old weights would be reused silently). Pass whole fused
  groups (q/k/v, gate/up) - the simplest is the whole state dict.

What an in-process engine does to the process it lives in (measured here; the trainer owns these, so):
- its CPU worker reseeds torch's global RNG at start and its CPU sampler draws from it at every step: both run
  under `torch.random.fork_rng`, so the trainer's global RNG never moves;
- it replaces `torch.set_num_threads` with a no-op for the rest of the process: put back after construction;
- it creates a world-1 torch.distributed process group (gloo on CPU), which lives until `close()`: code that
  takes "a process group exists" for "launched by torchrun" must not (engine.runtime.distributed.active() has to count
  only the group its init() joined); it also sets a NUMA membind policy for the process (one node: no effect).
Shapes: T tokens, G samples per prompt.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

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


class VLLMSampler:
    def __init__(self, model_dir: str | Path, *, max_model_len: int, kv_cache_gib: int = 1, seed: int = 0,
                 limit_images: int = 4, dtype: str = "float32", gpu_memory_utilization: float = 0.4):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: choose one of {_DTYPES}")
        # Read by vLLM when the engine is built (set before the import so every vllm.envs read sees them).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ["TORCH_COMPILE_DISABLE"] = "1"
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines would bury the progress bar
        try:
            import vllm
        except ImportError as e:
            raise ValueError("rollout.sampler = vllm needs vLLM: build .venv-vllm with `bash scripts/install_vllm.sh` "
                             f"and run with .venv-vllm/bin/python ({e})") from e
        self._vllm = vllm
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_BUFFER_ONLY_NOTICE)
        self.model_dir = Path(model_dir)
        # In-process, vLLM's CPU worker reseeds torch's global RNG and replaces torch.set_num_threads with a
        # no-op for the rest of the process: the trainer owns both, so both are put back.
        set_num_threads = torch.set_num_threads
        with torch.random.fork_rng(devices=[]):
            try:
                self.llm = vllm.LLM(
                    model=str(self.model_dir), dtype=dtype, seed=seed, max_model_len=max_model_len,
                    enforce_eager=True, limit_mm_per_prompt={"image": limit_images, "video": 0},
                    logprobs_mode="processed_logprobs", gpu_memory_utilization=gpu_memory_utilization)
            finally:
                torch.set_num_threads = set_num_threads
        config = self.llm.llm_engine.model_config.hf_config
        self.image_token_id = int(config.image_token_id)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self.generator = torch.Generator().manual_seed(seed)
        self._allowed: dict[tuple, list[int]] = {}  # (banned ids, num_token_ids) → allowed ids, built once each

    def _sampling_params(self, sampling: Sampling, r: GenRequest, n: int, seed: int, *, max_new_tokens: int,
                         stop_ids: frozenset[int], banned_ids: frozenset[int], num_token_ids: int):
        limit = min(r.max_new_tokens or max_new_tokens, max_new_tokens)
        allowed = None
        num_ids = min(num_token_ids or self.vocab_size, self.vocab_size)
        if banned_ids or num_ids < self.vocab_size:  # masked before temperature, as ours: logps are over them
            key = (banned_ids, num_ids)
            if key not in self._allowed:
                self._allowed[key] = [i for i in range(num_ids) if i not in banned_ids]
            allowed = self._allowed[key]
        return self._vllm.SamplingParams(
            n=n, temperature=max(sampling.temperature, 0.0), max_tokens=limit, logprobs=0, seed=seed,
            stop_token_ids=sorted(stop_ids), ignore_eos=True, allowed_token_ids=allowed, detokenize=False,
            skip_special_tokens=False)

    def generate(self, requests: list[GenRequest], sampling: Sampling, *, max_new_tokens: int,
                 stop_ids: frozenset[int] = frozenset(), banned_ids: frozenset[int] = frozenset(),
                 num_token_ids: int = 0, expand: int = 1, images_per_request: list[list], generator: torch.Generator | None = None) -> list[GenOutput]:
        """Continue every request; with expand=G each request yields G outputs (request-major order), as
        models.generation.generate. `images_per_request[i]` are request i's PIL images in sequence order (those
        its `grid_thw` rows were encoded from). `positions` / `pixel_values` of the requests are not used:
        vLLM computes both from the ids and the images."""
        check_params(sampling)
        if len(images_per_request) != len(requests):
            raise ValueError(f"{len(requests)} requests but images for {len(images_per_request)}")
        if not requests:
            return []
        greedy = sampling.temperature <= 0  # vLLM refuses n > 1 when greedy: sample once, copy G times
        n = 1 if greedy else expand
        gen = generator if generator is not None else self.generator
        # Room for seed + k, k < G. Drawn on the generator's device (the trainer's is the policy's, maybe CUDA);
        # host sync: .tolist(), once per call, because vLLM takes Python seeds.
        seeds = torch.randint(0, 2**30, (len(requests),), generator=gen, device=gen.device).tolist()
        prompts, sps = [], []
        for r, images, seed in zip(requests, images_per_request, seeds):
            n_img = 0 if r.grid_thw is None else len(r.grid_thw)
            if len(images) != n_img:
                raise ValueError(f"a request has {n_img} image blocks but {len(images)} images")
            prompt = {"prompt_token_ids": collapse_image_runs(list(r.ids), self.image_token_id)}
            if images:
                prompt["multi_modal_data"] = {"image": list(images)}
            prompts.append(prompt)
            sps.append(self._sampling_params(sampling, r, n, seed, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                                             banned_ids=banned_ids, num_token_ids=num_token_ids))
        with torch.random.fork_rng(devices=[]):  # vLLM's CPU sampler draws from the global RNG
            results = self.llm.generate(prompts, sps, use_tqdm=False)
        outs: list[GenOutput] = []
        for r, res in zip(requests, results):
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

    @torch.no_grad()
    def push_weights(self, named_tensors) -> None:
        """Load new policy weights: (name, tensor) pairs in HF checkpoint naming (model.state_dict().items(), or
        lora.merged_state_dict(model).items() under LoRA). Then drop every cache computed with the old ones."""
        weights = ((name, t.detach()) for name, t in named_tensors)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Free the engine (KV cache, weights). Its shutdown also destroys the world-1 torch.distributed group
        that vLLM created in this process (and with it whatever default group there was)."""
        engine = getattr(self.llm, "llm_engine", None)
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()
        self.llm = None
