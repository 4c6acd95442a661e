"""The one typed config tree. Defaults live here; TOML presets in configs/ override them; dotted CLI flags
(`--rollout.group_size 8`) override both. The resolved tree is written to the run folder as config.toml.

    python train.py --config configs/demo.toml --rollout.group_size 8 --rl.lr 1e-5
    python train.py --help-config        # every key, its type, default and meaning

The sections are the runtime objects: the rollout reads `cfg.rollout` (sampling and limits), every loss reads
`cfg.algo`; nothing copies their fields into a second dataclass. A new setting is one field here. Fixed choices are
`Literal[...]` (configlib checks them); a setting that can be off is `X | None` (TOML and the CLI write "none").
Names that forks extend (loss, advantage, aggregation, KL estimator, tool protocol, reward) are checked against
their registries by `validate`, i.e. when the config is parsed, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from engine.config.parsing import doc
from engine.config.registries import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, LOSSES, TOKEN_SELECTIONS
from rewards.registry import REWARDS
from tools.protocols import PROTOCOLS
from tools.schema import check_tool_names


def _choose(key: str, value, registry) -> None:
    """ValueError naming the setting and the valid choices when `value` is not a key of `registry`."""
    if value not in registry:
        raise ValueError(f"{key} = {value!r} is unknown; choose one of {', '.join(sorted(registry))}")


@dataclass
class ModelConfig:
    path: str = doc("", "Local Hugging Face VLM folder, or a run folder (its merged/ export or latest checkpoint) or a run's checkpoint folder: train.py starts from that model and records its folder here (a LoRA adapter is refused: engine/setup/model_source.py start_from). Empty: build the tiny model named by `tiny_arch` (cached).")
    tiny_arch: str = doc("qwen2_5_vl", "Tiny offline model to build when `path` is empty: qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe (models/tiny.py ARCHS).")
    dtype: Literal["float32", "bfloat16", "float16"] = doc("float32", "Parameter dtype (bf16 is slow on CPUs without bf16 units).")
    attn_implementation: Literal["auto", "sdpa", "eager", "varlen", "flash_attention_2"] = doc("auto", "Attention kernel. auto: varlen on a CUDA GPU of compute capability >= 8.0 with bf16 / fp16 weights, sdpa elsewhere (the faster measured there). varlen (GPU: torch's variable-length flash attention, or flash-attn's when installed): packed rows without masks, one call per vision block. sdpa / eager score each micro-batch as a right-padded batch. Under auto, sdpa, eager and varlen, where a micro-batch holds several samples of one prompt and nothing else forbids it (gradient checkpointing while training, FSDP), its prompts run once and their samples on their KV cache (the prefix layout, engine/forward/layouts.py). flash_attention_2: transformers' flash-attn path (GPU, flash-attn installed). sdpa on a CPU runs models/attention.py's sdpa_gqa: the same kernel, grouped-query heads not repeated under a mask.")
    box_frame: Literal["pixels", "resized", "norm1000"] | None = doc(None, "Coordinate frame the model writes boxes in (none: the family's own).")
    logprob_chunk_tokens: int = doc(2048, "Log-probs and entropy are computed from the LM head this many tokens at a time, and recomputed in the backward: peak logits memory ~ this × vocabulary × 4 bytes, whatever the micro-batch (Qwen's 151,936-token vocabulary: ~1.2 GB at 2048). 0: all kept tokens at once (autograd keeps their [tokens, vocab] logits).", ge=0)
    gradient_checkpointing: bool = doc(False, "Recompute each decoder layer's and vision block's activations in the backward pass instead of storing them: less activation memory for about one extra forward per update.")

    def validate(self) -> None:
        from models.tiny import ARCHS

        if not self.path:
            _choose("model.tiny_arch", self.tiny_arch, ARCHS)


@dataclass
class DataConfig:
    train: str = doc("", "Training data: a JSONL file, seed-001 JSONL, datasets.save_to_disk folder or Geometry3K parquet folder.")
    eval: str = doc("", "Held-out data in any of the same formats (empty: no evaluation).")
    image_root: str = doc("", "Folder that relative image paths are under (default: the data file's folder).")
    train_split: str = doc("", "Split of `train` to read when it has splits (a DatasetDict folder, a parquet folder); empty: train. Data without splits (a JSONL or parquet file, a single save_to_disk Dataset) is read whole, and naming a split for it is an error.")
    eval_split: str = doc("", "Split of `eval` to read when it has splits; empty: test. For data without splits (a JSONL or parquet file, a single save_to_disk Dataset) given as both `train` and `eval`, 'test' is the held-out part of eval_fraction (0.1 when that is 0, said in one line) and training reads the rest.")
    eval_fraction: float = doc(0.0, "Hold out this fraction of `train` as the evaluation set (data.eval stays empty): examples are chosen by a hash of their image bytes and question, so the same ones on every run and any number of processes, and training never reads them. 0: off.", ge=0.0, lt=1.0)
    num_samples: int = doc(0, "Train on N training examples drawn at random (seeded by train.seed), in data order (0: all).", ge=0)
    max_pixels: int = doc(0, "Largest pixel count the image processor resizes an image to (Qwen's max_pixels; 0: the model folder's own).", ge=0)
    min_pixels: int = doc(0, "Smallest pixel count the image processor resizes an image to (Qwen's min_pixels; 0: the model folder's own).", ge=0)
    image_short_side: int = doc(0, "Resize each question image so its shorter side is this many pixels, keeping the aspect ratio, before the image processor sees it (seed 001: 448); crops are still cut from the original. 0: as is.", ge=0)
    skip_bad: bool = doc(False, "Skip malformed records (each is reported) instead of stopping at the first. Every image is decoded in full at load either way, so a broken one is found before training, never at step N.")
    max_image_pixels: int = doc(4096 * 4096, "Pixel cap per image file at load (width x height; 0: none), before anything else reads it: above it an image is downsized to fit, its boxes and SFT crop targets scaled with it, or refused (oversized_images); said per record. Guards memory against huge files; the image processor's own resize is max_pixels.", ge=0)
    oversized_images: Literal["downsize", "refuse"] = doc("downsize", "What happens to an image over max_image_pixels: downsize (aspect kept) or refuse (a bad record).")
    num_eval_examples: int = doc(0, "Evaluate on the first N held-out examples (0: all).", ge=0)
    overlong: Literal["refuse", "truncate"] = doc("refuse", "Checked at load, before step 1: an SFT target longer than rollout.max_new_tokens, or a prompt that leaves less than rollout.max_new_tokens before rollout.max_total_tokens. refuse: stop with their count, the longest, and the setting to raise. truncate: SFT targets are cut to rollout.max_new_tokens (as a length stop cuts a sample) and such prompts are answered in the room they leave; each kind counted in one line.")
    system_prompt: str = doc("", "System message; empty uses the chat template's default.")
    question_template: str = doc("{question}", "User text around the question; may use {question}, {choices} (the options as 'A. x, B. y', empty when there are none) and {options} (the sentence 'Options: A. x, B. y.', or nothing at all for an example without choices).")
    prefill: str = doc("", "Text placed at the start of the assistant turn (e.g. '<think>'); rewards see it too.")
    sft_template: str = doc("<think>{reasoning}</think><answer>{answer}</answer>",
                            "SFT target for examples without one; {answer}, {reasoning} (the reference steps joined, or a default sentence), {steps_json} (the reference steps as a JSON list, one item per step), {answer_json} (the answer as a JSON string), {box} (the first box in the model's frame, [x1, y1, x2, y2]).")

    def validate(self) -> None:
        if self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"data.min_pixels {self.min_pixels} is above data.max_pixels {self.max_pixels}")


@dataclass
class RolloutConfig:
    """Sampling and rollout limits: `engine.rollout.rollout.rollout` and `models.generation.generate` read this object."""

    sampler: Literal["native", "vllm"] = doc("native", "Sampler: native (our batched KV-cache sampler) or vllm (vLLM inside each training process, engine/rollout/vllm_sampler.py: run under .venv-vllm from scripts/install_vllm.sh, or a CUDA vllm on a GPU; one process or torchrun, top_k 0, top_p 1; the policy's weights are pushed to it after every optimizer step, one parameter group at a time).")
    vllm_kv_cache_gib: int = doc(1, "KV-cache size of the vllm sampler in GiB on a CPU (rollout.sampler = vllm only; on a GPU the KV cache is what vllm_gpu_memory_utilization leaves).", ge=1)
    vllm_gpu_memory_utilization: float = doc(0.3, "Fraction of each GPU's memory the vllm sampler's engine may take: its copy of the weights, its activations and its KV cache, which gets the rest (vLLM's gpu_memory_utilization; GPU only). The memory planner counts it (python -m engine.setup.memory --rollout.sampler vllm).", gt=0.0, le=1.0)
    vllm_tp: int = doc(1, "Processes one vllm engine is sharded over (tensor parallel; consecutive ranks, a divisor of the number of processes): for a model whose engine does not fit one GPU beside the training state. 1: every process runs its own engine.", ge=1)
    vllm_sleep: bool | None = doc(None, "Release the vllm engine's GPU memory outside the rollout (vLLM sleep level 1: KV cache dropped, weights parked in host memory), so the reference forward and the update can use it; woken before the weight push and the next rollout. none: on where vLLM has sleep mode (CUDA), off on a CPU (it has none: true is an error there).")
    group_size: int = doc(8, "Samples per prompt (G).", ge=1)
    prompts_per_step: int = doc(4, "Prompts per optimizer step over all processes (torchrun: a multiple of the number of processes, which split them).", ge=1)
    max_new_tokens: int = doc(64, "Sampled tokens per trajectory, over all tool rounds.", ge=1)
    max_total_tokens: int = doc(4096, "Cap on a trajectory's whole length: prompt, response and injected tool results.", ge=2)
    temperature: float = doc(1.0, "Sampling temperature; the trainer scores tokens under the same temperature.", gt=0.0)
    top_p: float = doc(1.0, "Nucleus sampling threshold (1: off).", gt=0.0, le=1.0)
    top_k: int = doc(0, "Top-k sampling (0: off).", ge=0)
    cuda_graph: bool = doc(True, "Native sampler on a GPU: capture the decoding step as a CUDA graph and replay it (fixed-shape KV cache, models/decode_graph.py; the same tokens as eager decoding, ~10x fewer kernel launches). false: decode eagerly. No effect on CPU or with the vllm sampler.")
    protocol: str | None = doc(None, "Tool protocol (tools/protocols.py PROTOCOLS): none, inline (<tool_call>…</tool_call> inside the answer) or multiturn (<tool>…</tool> ends the turn).")
    tools: list[str] = doc([], "Tools the model may call (names from `python -m tools.run --list`): the system prompt then lists their signatures and the protocol's call format (Qwen's `# Tools` convention, tools/schema.py), and a call to any other tool is answered with an error. Empty: every tool may run and the prompt lists none (write your own instructions in data.question_template or system_prompt). Needs protocol inline or multiturn.")
    max_tool_calls: int = doc(2, "Tool calls allowed per trajectory.", ge=0)
    max_images: int = doc(4, "Images per trajectory, the original included.", ge=1)

    def validate(self) -> None:
        if self.protocol is not None:
            _choose("rollout.protocol", self.protocol, PROTOCOLS)
        if self.sampler == "vllm" and (self.top_k > 0 or self.top_p < 1):
            raise ValueError("rollout.sampler = vllm needs top_k = 0 and top_p = 1: vLLM's log-probs are renormalised "
                             "over the top-k/top-p set, not the distribution the trainer scores")
        defaults = RolloutConfig.__dataclass_fields__
        vllm_set = [k for k in ("vllm_kv_cache_gib", "vllm_gpu_memory_utilization", "vllm_tp", "vllm_sleep")
                    if getattr(self, k) != defaults[k].default]
        if self.sampler != "vllm" and vllm_set:
            raise ValueError(f"rollout.{', rollout.'.join(vllm_set)} set but rollout.sampler is {self.sampler!r}: "
                             "they size the vllm sampler; set rollout.sampler = vllm or leave them at their defaults")
        if self.tools and self.protocol is None:
            raise ValueError("rollout.tools is set but rollout.protocol is none: choose inline or multiturn")
        check_tool_names(self.tools)



# The classes of a trajectory's sampled tokens (engine/rollout/token_classes.py assigns them); named here, on the
# config floor, because algo.entropy_bonus and the token selections are keyed by them.
TOKEN_CLASSES = ("tool", "answer", "text")

@dataclass
class AlgoConfig:
    """The advantage estimator and everything that shapes the policy loss. A registered loss, estimator or
    aggregation that owns settings has its own section under this one (`[algo.ppo_clip] clip_high = 0.28`,
    `--algo.grpo.eps 1e-4`), filled with its defaults when selected; `--help-config` lists them all."""

    COMPONENTS: ClassVar[dict] = {"advantage": ADVANTAGES, "loss": LOSSES, "aggregation": AGGREGATIONS,
                                  "kl_estimator": KL_ESTIMATORS, "token_selection": TOKEN_SELECTIONS}

    advantage: str = doc("grpo", "Advantage estimator, one of the registered names (docs/ALGORITHMS.md defines each; docs/PLUGINS.md adds one).")
    loss: str = doc("ppo_clip", "Policy loss, one of the registered names (docs/ALGORITHMS.md defines each, and when the clip ranges act; docs/PLUGINS.md adds one).")
    aggregation: str = doc("token_mean", "How per-token losses are reduced, one of the registered names.")
    token_selection: str = doc("all", "Which loss tokens carry the policy-gradient term, one of the registered names: all, or top_entropy (only the step's highest-entropy tokens, arXiv 2506.01939; docs/ALGORITHMS.md).")
    call_credit: Literal["trajectory", "first_call", "first_call_centred"] = doc("trajectory", "trajectory: one advantage per trajectory. first_call: split at the first tool call - its tokens get the estimator on the mean reward of the group's samples that made the same call, the tokens after the tool's result the estimator within those samples. first_call_centred: first_call with each call's advantage centred over the step's samples that made the same call for other prompts (engine/algo/call_credit.py, docs/ALGORITHMS.md).")
    entropy_bonus: dict[str, float] = doc({}, "Entropy bonus per token class: coef × the policy's entropy is subtracted from the loss of each token of the class (tool: the tool call's tokens, answer, text; engine/rollout/token_classes.py), e.g. {tool = 0.05}. Empty: none.")
    imitation: float = doc(0.0, "Best-of-group imitation weight: λ × the mean negative log-likelihood of the sampled tokens of each group's highest-reward trajectories is added to the policy loss (RAFT-style; engine/algo/imitation.py, docs/ALGORITHMS.md). 0: off.", ge=0.0)
    imitation_span: Literal["trajectory", "first_call"] = doc("trajectory", "Which tokens of the imitated trajectories algo.imitation trains: trajectory (all its sampled tokens, RAFT) or first_call (those up to the end of its first tool call: the choice of call only, the answer left to the policy gradient).")
    kl_beta: float = doc(0.0, "KL penalty weight to the frozen reference (0: no reference model is loaded).", ge=0.0)
    kl_estimator: str = doc("k3", "KL estimator, one of the registered names; acts only when kl_beta > 0.")
    tis_cap: float | None = doc(None, "Truncated importance-sampling cap on exp(old_logp − sampler_logp), for sampler/trainer mismatch (none: off; verl uses 2).", gt=0.0)
    num_updates: int = doc(1, "Optimizer updates per rollout (>1 computes old log-probs once, PPO-style; the clip ranges act only then, or when the sampler differs from the trainer).", ge=1)
    drop_uniform_groups: bool = doc(False, "Drop groups whose rewards are all equal (zero advantage: no signal) from the update; the batch shrinks (batch/kept_fraction). DAPO's dynamic sampling also samples more prompts to refill the batch; this does not.")
    components: dict = field(default_factory=dict, metadata={"components": True})  # [algo.<name>] settings

    def validate(self) -> None:
        for name, coef in self.entropy_bonus.items():
            if name not in TOKEN_CLASSES or not coef >= 0:
                raise ValueError(f"algo.entropy_bonus {{{name} = {coef}}}: each key must be a token class "
                                 f"({', '.join(TOKEN_CLASSES)}) and each coefficient >= 0")
        for key, registry in self.COMPONENTS.items():
            name = getattr(self, key)
            if name not in registry:
                raise ValueError(registry.unknown(name))
            check = registry.entry(name).traits["check"]
            if check is not None:  # what the component needs of the rest of [algo]
                check(self)

    def settings(self, name: str):
        """The settings of the component `name`: as configured, else its defaults (None when it declares none)."""
        if name in self.components:
            return self.components[name]
        owner = next(r for key, r in self.COMPONENTS.items() if getattr(self, key) == name)
        cls = owner.entry(name).settings
        return None if cls is None else cls()


@dataclass
class OptimConfig:
    weight_decay: float = doc(0.0, "AdamW weight decay.", ge=0.0)
    beta1: float = doc(0.9, "AdamW β1.", ge=0.0, lt=1.0)
    beta2: float = doc(0.999, "AdamW β2.", ge=0.0, lt=1.0)
    warmup_steps: int = doc(0, "Linear warmup steps.", ge=0)
    schedule: Literal["cosine", "constant"] = doc("cosine", "LR schedule after warmup: cosine (to min_lr_ratio) or constant.")
    min_lr_ratio: float = doc(0.1, "Cosine floor as a fraction of the stage's lr (sft.lr, rl.lr).", ge=0.0, le=1.0)
    max_grad_norm: float = doc(1.0, "Clip the global gradient norm to this (0: no clipping).", ge=0.0)
    micro_batch_tokens: int = doc(8192, "Token budget of one packed micro-batch row (activation memory scales with it).", ge=1)
    max_skipped_updates: int = doc(5, "An update whose loss or gradient is NaN/inf is skipped (weights, optimizer state and lr schedule untouched; counted as train/skipped_update, sft/skipped_update and skipped_updates in the summary); the run stops with exit status 3 after this many in a row (0: never stops).", ge=0)


@dataclass
class RewardConfig:
    """The reward mix. A registered reward that owns settings has its own section under this one when weighted
    (`[reward.judge] url = ...`); `--help-config` lists every registered reward's section."""

    COMPONENTS: ClassVar[dict] = {"weights": REWARDS}

    weights: dict[str, float] = doc({"format": 0.2, "accuracy": 1.0}, "Reward components and their weights (rewards.registry.REWARDS; --help-config lists their sections). A weight of 0 logs a reward without training on it.")
    debug_path: str = doc("", "Write every sample's text and reward parts to this JSONL (empty: off).")
    scorer: Literal["policy"] | None = doc(None, "Model handle for the model-based rewards (those that need a scorer; the error names them when one is weighted without it): none, or policy (the policy itself, asked under no_grad in eval mode).")
    teacher_path: str = doc("", "Local VLM folder that image_teacher asks (needs scorer = policy; empty: none).")
    clip_path: str = doc("", "Local CLIP folder for image_embedding, read by clip_backend (needs scorer = policy; empty: none).")
    clip_backend: Literal["transformers", "open_clip"] = doc("transformers", "Library that reads clip_path: transformers (a CLIPModel folder) or open_clip (an open_clip local-dir folder: open_clip_config.json + weights; needs scripts/install_openclip.sh).")
    scorer_max_new_tokens: int = doc(128, "Tokens the scorer may generate per reply (the blind pass of 'blind').", ge=1)
    embedder_path: str = doc("", "Local sentence-embedding model folder (a transformers text encoder, e.g. a sentence-transformers model): 'reasoning' then matches steps by the cosine of mean-pooled embeddings instead of word F1 (needs 'reasoning' weighted; empty: word F1).")
    components: dict = field(default_factory=dict, metadata={"components": True})  # [reward.<name>] settings

    def validate(self) -> None:
        from rewards.setup import check_reward_config

        if self.clip_backend != "transformers" and not self.clip_path:
            raise ValueError("reward.clip_backend is set but reward.clip_path is empty: set clip_path or leave "
                             "clip_backend at its default")
        check_reward_config(self)  # reward names, and the embedder/scorer options they need


@dataclass
class SftConfig:
    steps: int = doc(0, "SFT optimizer steps (stage sft).", ge=0)
    batch_size: int = doc(8, "Examples per SFT step over all processes (torchrun: a multiple of the number of processes).", ge=1)
    lr: float = doc(1e-4, "SFT peak learning rate (AdamW; optim holds the settings both stages share).", gt=0.0)
    epochs: float = doc(0.0, "Passes over the training set; when > 0 it sets sft.steps to ceil(epochs x examples / batch_size).", ge=0.0)
    final_train: str = doc("", "A second SFT dataset, read like data.train, for the stage's last sft.final_steps steps: a curriculum's last phase (configs/zoom_tools.toml: own-cell crops after random ones). Empty: data.train throughout.")
    final_steps: int = doc(0, "How many of the sft.steps, at the end, draw their examples from sft.final_train instead of data.train.", ge=0)

    def validate(self) -> None:
        if bool(self.final_steps) != bool(self.final_train):
            raise ValueError("sft.final_train and sft.final_steps go together: set both (a dataset and how many of "
                             "the last SFT steps read it) or neither")


@dataclass
class RlConfig:
    steps: int = doc(10, "RL optimizer steps (stage rl).", ge=0)
    lr: float = doc(1e-5, "RL peak learning rate (AdamW; optim holds the settings both stages share).", gt=0.0)
    epochs: float = doc(0.0, "Passes of RL over the training prompts; when > 0 it sets rl.steps to ceil(epochs x examples / rollout.prompts_per_step).", ge=0.0)


@dataclass
class TrainConfig:
    stage: Literal["rl", "sft", "sft,rl"] = doc("rl", "Stages to run, in order.")
    seed: int = doc(0, "Seed for data order, sampling and initialisation.", ge=0)
    out_dir: str = doc("runs/default", "Run folder: config, checkpoints, metrics, TensorBoard logs.")
    save_every: int = doc(0, "Checkpoint every N steps (0: only at the end).", ge=0)
    keep_checkpoints: int = doc(2, "Checkpoints kept on disk (the newest).", ge=1)
    log_every: int = doc(1, "Write scalar metrics every N steps.", ge=1)
    sample_every: int = doc(10, "Write a few sampled rollouts as text every N steps (0: never).", ge=0)
    eval_every: int = doc(0, "Evaluate held-out accuracy every N steps of each stage (0: only after each stage).", ge=0)
    resume: bool = doc(False, "Continue from the latest checkpoint in out_dir, with the run's own settings (out_dir/config.toml) under the flags given; `train.py --resume RUN` is the same. Flags that change the run are refused, listed, unless named in resume_changes (budgets may always be raised).")
    resume_changes: list[str] = doc([], "Settings a resume may change although they alter the run (e.g. rl.lr,algo.loss; data.train when the training data's content changed): each one named must differ from the run's own, and the accepted changes are printed and kept in summary.json.")
    overwrite: bool = doc(False, "Start afresh in an out_dir that holds an earlier run: its checkpoints, metrics, samples, summary and reference are deleted first. false: such a start is refused (continue the run with --resume, or choose another out_dir).")
    eval_at_start: bool = doc(False, "Also evaluate before the first stage (accuracy_before in the summary).")
    threads: int = doc(0, "torch CPU threads (0: leave torch's default).", ge=0)
    tensorboard: bool = doc(True, "Write TensorBoard scalars to out_dir/tb.")
    deterministic: bool = doc(False, "Deterministic kernels (torch.use_deterministic_algorithms, cuBLAS workspace :4096:8): on a GPU a resumed run then repeats the uninterrupted one bit for bit (atomics in index_add, attention backward and cuBLAS otherwise reorder float sums). Slower; an op without a deterministic kernel raises naming it. CPU runs are deterministic either way.")
    mixed_precision: Literal["bf16"] | None = doc(None, "none (compute in model.dtype) or bf16: bf16 compute with fp32 master weights, fp32 gradients and fp32 AdamW state, in one process or under torchrun alike (FSDP2's MixedPrecisionPolicy; one process joins a process group of one). Needs model.dtype = float32. Pure bf16 weights (model.dtype = bfloat16) instead lose every update smaller than half a bf16 step of the weight.")


@dataclass
class EvalConfig:
    metrics: list[str] = doc(["accuracy"], "What held-out evaluation reports, by reward name (scored with weight 0 when not in the mix): each lands in the summary as <metric>_after_<stage> and is printed at the end; the first is the headline (grounding: iou, iou50; VQA reasoning: accuracy, reasoning = Match-F1).")

    def validate(self) -> None:
        if not self.metrics:
            raise ValueError("eval.metrics is empty: name at least one reward (e.g. accuracy)")


@dataclass
class LoraConfig:
    r: int = doc(0, "LoRA rank (0: off, full fine-tune). With LoRA only the adapters train, the KL reference is the same model with its adapters off, checkpoints hold the adapter and the run ends with a merged export.", ge=0)
    alpha: float = doc(16.0, "LoRA alpha (the update is scaled by alpha / r).", gt=0.0)
    dropout: float = doc(0.0, "Dropout on the adapters' input, in [0, 1).", ge=0.0, lt=1.0)
    target: Literal["language", "language+vision"] = doc("language", "Where adapters go: language (the language model's q/k/v/o projections) or language+vision (also the vision blocks' qkv and proj).")

    def validate(self) -> None:
        if self.r == 0 and (self.alpha, self.dropout, self.target) != (16.0, 0.0, "language"):
            raise ValueError("lora.alpha / dropout / target are set but lora.r is 0 (LoRA off): set --lora.r N "
                             "or leave them at their defaults")


@dataclass
class Config:
    plugins: list[str] = doc([], "Files (.py) or modules imported before the config is parsed: they register losses, estimators, rewards and tools (engine/config/plugins.py). Set with --plugin FILE (repeatable) or here; the run records them as absolute paths, so resume, eval and every torchrun rank import the same.")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    rl: RlConfig = field(default_factory=RlConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    # Keys that moved: configlib names the new place instead of "unknown key".
    MOVED: ClassVar[dict[str, str]] = {
        "train.steps": "rl.steps", "train.epochs": "rl.epochs", "optim.lr": "rl.lr",
        "algo.dynamic_sampling": "algo.drop_uniform_groups", "algo.adv_eps": "algo.grpo.eps",
        "algo.clip_low": "algo.<loss>.clip_low", "algo.clip_high": "algo.<loss>.clip_high",
        "algo.dual_clip_c": "algo.<loss>.dual_clip_c", "algo.norm_len": "algo.seq_mean_token_sum_norm.norm_len",
        **{f"reward.judge_{k}": f"reward.judge.{k}" for k in ("url", "model", "prompt", "timeout_s", "retries",
                                                              "max_concurrency")}}

    def validate(self) -> None:
        stages = self.train.stage.split(",")
        if "sft" in stages and self.sft.steps < 1 and not self.sft.epochs:
            raise ValueError("train.stage includes sft but sft.steps is 0: set --sft.steps N (or --sft.epochs E) or "
                             "drop the sft stage")
        if "rl" in stages and self.rl.steps < 1 and not self.rl.epochs:
            raise ValueError("train.stage includes rl but rl.steps is 0: set --rl.steps N (or --rl.epochs E) or drop "
                             "the rl stage")
        if "rl" in stages and self.rollout.group_size < 2:
            raise ValueError("rollout.group_size 1 gives every sample zero group advantage: use ≥ 2")
        if self.train.mixed_precision and self.model.dtype != "float32":
            raise ValueError(f"train.mixed_precision = {self.train.mixed_precision} keeps fp32 master weights: set "
                             f"model.dtype = float32 (not {self.model.dtype}); the compute runs in bf16 anyway")
        if (self.model.attn_implementation in ("varlen", "flash_attention_2") and self.model.dtype == "float32"
                and not self.train.mixed_precision):
            raise ValueError(f"model.attn_implementation = {self.model.attn_implementation} runs flash kernels, which "
                             "take bf16 / fp16 tensors only: set model.dtype = bfloat16 (or train.mixed_precision = "
                             "bf16), or use sdpa for float32")
        resized = [k for k in ("max_pixels", "min_pixels", "image_short_side") if getattr(self.data, k)]
        if self.rollout.sampler == "vllm" and resized:
            raise ValueError(f"data.{', data.'.join(resized)} with rollout.sampler = vllm: vLLM resizes images with the "
                             "model folder's own processor settings, so its image tokens would not match the "
                             "trainer's; use the native sampler, or write the bounds into preprocessor_config.json")
