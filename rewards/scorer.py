"""The scorer handle that model-based rewards receive as `ctx.scorer`: a VLM asked questions, batched, no_grad.

    scorer = ModelScorer(policy_vlm, teacher=ModelScorer(load_vlm(TEACHER_DIR)), clip=ClipEmbedder.load(CLIP_DIR))
    scorer.prob_yes([[crop]], ["Does this image help? Answer yes or no."])   # one float in [0, 1] per item
    scorer.answer([[]], ["What is 2 + 2? Answer in <answer></answer>."])     # one greedy reply per item

Rewards never see a model, a tokenizer or torch.distributed: they call these methods (rewards/image_rewards.py,
rewards/blind.py). `build_scorer(policy, weights, kind=...)` makes one from the reward config (the trainer's hook)
and checks it against the weighted rewards (`check_scorer_needs`: a missing or an unused scorer, teacher or CLIP model
is a ValueError at start-up, not a stream of per-sample errors).

Methods (each takes per-item image lists and questions; an item's user turn is its images, then its text,
rendered with the chat template like engine/rollout/trajectory.py `build_prompt`, without prefill):
- `prob_yes`: P("yes") / (P("yes") + P("no")) at the first answer position: the softmax over the logits of the
  two tokens that "yes" and "no" START with as the assistant turn's first word (single ids in Qwen tokenizers and
  the tiny one; pass yes="Yes", no="No" for a model that capitalises). One left-padded forward per chunk, the
  same padding as models/generation.py, so a batch gives what one-by-one calls give.
- `answer`: greedy text from models/generation.py `generate` (eos stops; image placeholders never drawn).
- `attention_share`: the item's answer text is appended to its prompt and one forward is run with EAGER attention
  (the model's kernel is switched with `set_attn_implementation("eager")` for the call and switched back after;
  sdpa/flash kernels return no weights). Over every decoder layer, head and answer-token query, it sums the
  attention mass on the placeholder tokens of the PROCESSED images (the item's images from `first_processed` on)
  and on ALL image placeholders, and returns processed / all, in [0, 1]; 0 when the item has no processed image
  or no answer tokens. It is a ratio of image mass, not of total mass, so that attention sinks (mass parked on
  the first tokens) do not swamp it. With uniform attention it equals the processed images' share of image
  tokens. Cost: every layer's [B, H, T, T] weights are kept at once; use a small `batch_size`.
- `embed_text` / `embed_image`: unit CLIP vectors [N, D] (numpy) from the `clip` embedder: by default
  ClipEmbedder, a transformers `CLIPModel` loaded from a local folder; with reward.clip_backend = "open_clip",
  rewards/clip_openclip.py (an optional install: scripts/install_openclip.sh, which patches torchvision to
  import beside CPU torch, docs/PLATFORM.md). `build_tiny_clip(DIR)` writes a tiny random CLIP with a byte
  tokenizer for the tests; a real openai/clip-vit-* folder should load the same way (CLIPTokenizer, and the PIL
  image processor when the fast one needs torchvision), but none was available here to try.
- `embed`: the sentence embedder's `embed(list[str])` when one is attached (reward.embedder_path, set up by
  rewards/setup.py), else None; "reasoning" then compares steps by cosine instead of word F1.
The model is put in eval mode for each call and its training mode restored afterwards.

Under FSDP the policy's forward is collective: every rank must make the same number of scorer forwards (chunks),
which a per-rank batch of different composition does not guarantee. The scorer is single-process for now.
Shapes: B items, T tokens, H heads, V vocab.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.chat import chat_ids
from models.files import reading
from models.generation import GREEDY, GenRequest, concat_images, generate, left_pad
from models.load import VLM
from models.vision import encode_images, expand_image_pads, rope_positions


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _eager_attention(model):
    """Switch the whole model (text and vision) to eager attention for the block, then back."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _first_id(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"the tokenizer encodes {word!r} as no tokens; pick another yes/no word")
    return ids[0]


def _check_items(images_per_item, questions, *more) -> int:
    n = len(questions)
    if len(images_per_item) != n or any(len(m) != n for m in more):
        raise ValueError(f"scorer needs one image list (and answer) per question: got {len(images_per_item)} "
                         f"image lists, {n} questions" + "".join(f", {len(m)}" for m in more))
    return n


class ModelScorer:
    """Questions to a VLM (the policy, or any other) for model-based rewards. See the module docstring."""

    def __init__(self, vlm: VLM, *, system_prompt: str = "", teacher: "ModelScorer | None" = None,
                 clip: "ClipEmbedder | None" = None, embedder=None, batch_size: int = 16, max_new_tokens: int = 128,
                 yes: str = "yes", no: str = "no"):
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("ModelScorer needs batch_size >= 1 and max_new_tokens >= 1")
        self.vlm, self.system_prompt = vlm, system_prompt
        self.teacher, self.clip = teacher, clip  # image_teacher / image_embedding read these
        self.embedder = embedder  # a sentence embedder (rewards/text_embedder.py) for "reasoning", or None
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.yes_id, self.no_id = _first_id(vlm.tokenizer, yes), _first_id(vlm.tokenizer, no)
        if self.yes_id == self.no_id:
            raise ValueError(f"{yes!r} and {no!r} start with the same token; prob_yes cannot tell them apart")

    # -- inputs ------------------------------------------------------------------------------------------------
    def prompt_ids(self, images: list[Image.Image], question: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """(ids ending with the assistant header, pixel_values [P, D], grid_thw [N, 3]) of one user turn."""
        ids = chat_ids(self.vlm.tokenizer, system=self.system_prompt, text=question, num_images=len(images))
        pixel_values, grid = encode_images(self.vlm.image_processor, list(images))
        return expand_image_pads(ids, grid, self.vlm.family), pixel_values, grid

    def _request(self, images, question: str, answer_ids: list[int] = ()) -> GenRequest:
        ids, pixel_values, grid = self.prompt_ids(images, question)
        ids = ids + list(answer_ids)
        model, fam = self.vlm.model, self.vlm.family
        # An image-less item keeps its empty tensors: models.generation.concat_images skips requests without grid rows.
        return GenRequest(ids=ids, positions=rope_positions(model, ids, grid, fam), pixel_values=pixel_values,
                          grid_thw=grid)

    def _forward(self, requests: list[GenRequest], **kwargs):
        """One left-padded forward (models/generation.py's padding); returns (model output, ids_BT)."""
        model = self.vlm.model
        device = next(model.parameters()).device
        ids_BT, mask_BT, pos_3BT = left_pad(requests, self.vlm.family.pad_id)
        pixels, grids = concat_images(requests)
        out = model(input_ids=ids_BT.to(device), attention_mask=mask_BT.to(device), position_ids=pos_3BT.to(device),
                    pixel_values=None if pixels is None else pixels.to(device, dtype=model.dtype),
                    image_grid_thw=None if grids is None else grids.to(device), use_cache=False, **kwargs)
        return out, ids_BT

    def _chunks(self, n: int, size: int | None = None):
        size = size or self.batch_size
        return (range(s, min(s + size, n)) for s in range(0, n, size))

    # -- questions ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prob_yes(self, images_per_item: list[list[Image.Image]], questions: list[str]) -> list[float]:
        """Per item: softmax over the (yes, no) logits at the first answer position, the "yes" entry."""
        n = _check_items(images_per_item, questions)
        probs: list[float] = []
        with _eval_mode(self.vlm.model):
            for chunk in self._chunks(n):
                out, _ = self._forward([self._request(images_per_item[i], questions[i]) for i in chunk],
                                       logits_to_keep=1)
                pair_B2 = out.logits[:, -1, [self.yes_id, self.no_id]].float()
                probs += torch.softmax(pair_B2, dim=-1)[:, 0].tolist()  # host sync: once per chunk
        return probs

    @torch.no_grad()
    def answer(self, images_per_item: list[list[Image.Image]], questions: list[str],
               max_new_tokens: int | None = None) -> list[str]:
        """Greedy reply text per item (special tokens dropped), at most `max_new_tokens` (default: the scorer's)."""
        n = _check_items(images_per_item, questions)
        fam = self.vlm.family
        texts: list[str] = []
        with _eval_mode(self.vlm.model):
            for chunk in self._chunks(n):
                outs = generate(self.vlm.model, [self._request(images_per_item[i], questions[i]) for i in chunk],
                                GREEDY, pad_id=fam.pad_id, max_new_tokens=max_new_tokens or self.max_new_tokens,
                                stop_ids=frozenset(fam.eos_ids), banned_ids=fam.vision_ids,
                                num_token_ids=fam.num_token_ids)
                texts += [self.vlm.tokenizer.decode(o.tokens, skip_special_tokens=True) for o in outs]
        return texts

    @torch.no_grad()
    def attention_share(self, images_per_item: list[list[Image.Image]], questions: list[str], answers: list[str],
                        first_processed: list[int], batch_size: int = 4) -> list[float]:
        """Per item: attention mass from the answer tokens to images[first_processed:] over that to all images."""
        n = _check_items(images_per_item, questions, answers, first_processed)
        fam, tok = self.vlm.family, self.vlm.tokenizer
        shares = [0.0] * n
        todo = [i for i in range(n) if len(images_per_item[i]) > first_processed[i] and answers[i].strip()]
        with _eval_mode(self.vlm.model), _eager_attention(self.vlm.model):
            for chunk in self._chunks(len(todo), batch_size):
                items = [todo[k] for k in chunk]
                answer_ids = [tok(answers[i], add_special_tokens=False).input_ids for i in items]
                requests = [self._request(images_per_item[i], questions[i], a) for i, a in zip(items, answer_ids)]
                out, ids_BT = self._forward(requests, output_attentions=True, logits_to_keep=1)
                # Masks on the model's device: each layer's [B, H, T, T] weights stay where they were computed.
                device = out.attentions[0].device
                ids_BT, T = ids_BT.to(device), ids_BT.shape[1]
                image_BT = ids_BT == fam.image_token_id
                image_index_BT = (ids_BT == fam.vision_start_id).cumsum(1) - 1  # which image a placeholder is in
                first_B1 = torch.tensor([first_processed[i] for i in items], device=device)[:, None]
                processed_BT = image_BT & (image_index_BT >= first_B1)
                num_answer_B1 = torch.tensor([len(a) for a in answer_ids], device=device)[:, None]
                query_BT = torch.arange(T, device=device)[None, :] >= T - num_answer_B1  # left padding: answers last
                to_processed_B = torch.zeros(len(items), device=device)
                to_images_B = torch.zeros(len(items), device=device)
                for attn_BHTT in out.attentions:
                    attn_BHTT = attn_BHTT.float()
                    to_processed_B += ((attn_BHTT * processed_BT[:, None, None, :]).sum((1, 3)) * query_BT).sum(1)
                    to_images_B += ((attn_BHTT * image_BT[:, None, None, :]).sum((1, 3)) * query_BT).sum(1)
                share_B = torch.where(to_images_B > 0, to_processed_B / to_images_B.clamp_min(1e-30), 0.0)
                for i, s in zip(items, share_B.tolist()):  # host sync: once per chunk
                    shares[i] = s
        return shares

    @property
    def embed(self):
        """The sentence embedder's `embed(list[str])`, which "reasoning" uses for cosine Match-F1; None without
        one (reasoning then matches words)."""
        return self.embedder.embed if self.embedder is not None else None

    def embed_text(self, texts: list[str]) -> np.ndarray:
        return self._clip().embed_text(texts)

    def embed_image(self, images: list[Image.Image]) -> np.ndarray:
        return self._clip().embed_image(images)

    def _clip(self) -> "ClipEmbedder":
        if self.clip is None:
            raise ValueError("this scorer has no CLIP model: set reward.clip_path to a local CLIP folder "
                             "(transformers CLIPModel, or open_clip with reward.clip_backend = 'open_clip'), "
                             "e.g. one written by rewards.scorer.build_tiny_clip")
        return self.clip


@dataclass
class ClipEmbedder:
    """A transformers CLIPModel with its tokenizer and image processor; unit-length embeddings."""

    model: torch.nn.Module
    tokenizer: object
    image_processor: object

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "ClipEmbedder":
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
        from transformers.models.clip import CLIPImageProcessorPil

        path = Path(path)
        if not (path / "config.json").exists():
            raise ValueError(f"{path} is not a CLIP folder (no config.json); no hub downloads here")
        with reading(path, "the CLIP model (reward.clip_path)", passthrough=(MemoryError,)):
            try:
                processor = AutoImageProcessor.from_pretrained(path)
            except (ImportError, ValueError, RuntimeError):  # the fast processor needs torchvision
                processor = CLIPImageProcessorPil.from_pretrained(path)
            model = CLIPModel.from_pretrained(path).to(device).eval()
            tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model=model, tokenizer=tokenizer, image_processor=processor)

    @staticmethod
    def _unit(features) -> np.ndarray:
        features = getattr(features, "pooler_output", features)  # transformers 5 returns an output object
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(device)
        return self._unit(self.model.get_text_features(input_ids=batch["input_ids"],
                                                       attention_mask=batch["attention_mask"]))

    @torch.no_grad()
    def embed_image(self, images: list[Image.Image]) -> np.ndarray:
        device = next(self.model.parameters()).device
        pixels = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        return self._unit(self.model.get_image_features(pixel_values=pixels["pixel_values"].to(device)))


def build_tiny_clip(out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random CLIP folder (byte-level tokenizer with no merges, 32x32 images) that
    `ClipEmbedder.load` and `CLIPModel.from_pretrained` read. Deterministic for a seed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast
    from transformers.models.clip import CLIPImageProcessorPil

    out = Path(out)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab = {ch: i for i, ch in enumerate(alphabet)} | {bos: len(alphabet), eos: len(alphabet) + 1}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.add_special_tokens([bos, eos])
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}",
                                                        special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    max_len = 64
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=eos,
                                        model_max_length=max_len)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=max_len, bos_token_id=vocab[bos],
                         eos_token_id=vocab[eos], pad_token_id=vocab[eos]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def check_scorer_needs(weights: dict[str, float], *, scorer: bool, teacher: bool, clip: bool) -> None:
    """Raise ValueError when the weighted rewards and the scorer parts do not fit: a reward needs a scorer, a
    teacher or a CLIP model that is missing, or one is set up that no weighted reward uses (a setting that silently
    does nothing). Each reward says what it needs in its `scorer_needs` attribute ("scorer", "teacher" or "clip");
    rewards without it need nothing. Pure: the config parser calls it before any model loads."""
    from rewards.registry import REWARDS

    needs = {name: getattr(REWARDS[name] if name in REWARDS else None, "scorer_needs", None) for name in weights}
    needs = {name: need for name, need in needs.items() if need}
    if not scorer:
        if teacher or clip:
            raise ValueError("reward.teacher_path / reward.clip_path are set but reward.scorer is none: "
                             "set reward.scorer = 'policy' or clear them")
        if needs:
            raise ValueError(f"reward(s) {sorted(needs)} need a model scorer: set reward.scorer = 'policy'")
        return
    if not needs:
        users = sorted(e.name for e in REWARDS.entries() if getattr(e.fn, "scorer_needs", None))
        raise ValueError(f"reward.scorer is 'policy' but no weighted reward uses it ({', '.join(users)}): set "
                         "reward.scorer = 'none'")
    for part, have, key in (("teacher", teacher, "reward.teacher_path"), ("clip", clip, "reward.clip_path")):
        users = sorted(name for name, need in needs.items() if need == part)
        if users and not have:
            raise ValueError(f"reward(s) {users} need a {part} model: set {key} to a local folder")
        if have and not users:
            raise ValueError(f"{key} is set but no weighted reward uses the {part} model: clear it or weight "
                             f"{'image_teacher' if part == 'teacher' else 'image_embedding'}")


def load_clip(path: str | Path, *, backend: str = "transformers", device: str = "cpu"):
    """A CLIP embedder (`embed_text` / `embed_image`, unit rows) from a local folder: backend "transformers"
    (ClipEmbedder, a CLIPModel folder) or "open_clip" (rewards/clip_openclip.py, an open_clip local-dir folder)."""
    if backend == "open_clip":
        from rewards.clip_openclip import OpenClipEmbedder  # needs scripts/install_openclip.sh

        return OpenClipEmbedder.load(path, device=device)
    if backend != "transformers":
        raise ValueError(f"reward.clip_backend {backend!r}: choose transformers or open_clip")
    return ClipEmbedder.load(path, device=device)


def build_scorer(policy: VLM, weights: dict[str, float], *, kind: str | None, system_prompt: str = "", teacher_path: str = "",
                 clip_path: str = "", clip_backend: str = "transformers", max_new_tokens: int = 128,
                 dtype: str = "float32", device: str = "cpu") -> ModelScorer | None:
    """The trainer's hook (through rewards/setup.py): kind None -> None; "policy" -> a scorer on the policy
    itself, with a teacher VLM (teacher_path) and a CLIP model (clip_path, read by `clip_backend`) when given.
    Checked against the weighted rewards (`check_scorer_needs`); raises ValueError for anything that does not fit."""
    if kind not in (None, "policy"):
        raise ValueError(f"reward.scorer {kind!r}: choose none or policy")
    check_scorer_needs(weights, scorer=kind is not None, teacher=bool(teacher_path), clip=bool(clip_path))
    scorer = None
    if kind == "policy":
        from models.load import load_vlm

        teacher = None
        if teacher_path:
            teacher_vlm = load_vlm(teacher_path, dtype=dtype, device=device)
            teacher_vlm.model.eval().requires_grad_(False)
            teacher = ModelScorer(teacher_vlm, system_prompt=system_prompt, max_new_tokens=max_new_tokens)
        clip = load_clip(clip_path, backend=clip_backend, device=device) if clip_path else None
        scorer = ModelScorer(policy, system_prompt=system_prompt, teacher=teacher, clip=clip,
                             max_new_tokens=max_new_tokens)
    return scorer
