"""Sentence embeddings for the "reasoning" reward's Match-F1: a local transformers text encoder, mean-pooled.

    embedder = TextEmbedder.load("/models/all-MiniLM-L6-v2")   # reward.embedder_path in a config
    embedder.embed(["the sign is red", "a stop sign"])          # [2, D] numpy, unit rows

`rewards/reasoning.py` uses `ctx.scorer.embed` when the handle has one: cosine similarity replaces the lexical
token F1 (rewards/setup.py puts this embedder on the handle). The folder is any encoder that `AutoTokenizer` and
`AutoModel` read offline (config.json + weights + tokenizer files), e.g. a sentence-transformers model, whose root
is a Hugging Face folder. Pooling is the mean of the last hidden state over real (non-padding) tokens, then L2
normalisation: sentence-transformers' "mean" pooling + Normalize, which most of its models use. A folder whose
`1_Pooling/config.json` asks for another pooling (CLS, max) is refused rather than silently pooled the wrong way.
`build_tiny_text_encoder(DIR)` writes a tiny random BERT with a word-level tokenizer for the tests.
Shapes: N texts, L tokens, D hidden size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.files import reading


def _check_pooling(path: Path) -> None:
    pooling = path / "1_Pooling" / "config.json"
    if not pooling.exists():
        return
    modes = {k: v for k, v in json.loads(pooling.read_text()).items() if k.startswith("pooling_mode_") and v}
    if set(modes) != {"pooling_mode_mean_tokens"}:
        raise ValueError(f"{pooling} asks for {sorted(modes)}; reward.embedder_path supports mean pooling only "
                         "(pooling_mode_mean_tokens)")


@dataclass
class TextEmbedder:
    """A transformers text encoder with its tokenizer; `embed` gives mean-pooled unit vectors."""

    model: torch.nn.Module
    tokenizer: object
    max_length: int
    batch_size: int = 64

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "TextEmbedder":
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").exists():
            raise ValueError(f"reward.embedder_path {path} is not a model folder (no config.json); "
                             "no hub downloads here: point it at a local transformers text encoder")
        _check_pooling(path)
        with reading(path, "the sentence embedder (reward.embedder_path)", passthrough=(MemoryError,)):
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path).to(device).eval().requires_grad_(False)
        limits = [n for n in (tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None))
                  if isinstance(n, int) and 0 < n < 1_000_000]  # tokenizers without a limit report ~1e30
        return cls(model=model, tokenizer=tokenizer, max_length=min(limits, default=512))

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        """[N, D] float32, each row of unit length. Padding does not change a text's vector (masked mean)."""
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(device)
            hidden_NLD = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask_NL1 = batch["attention_mask"].unsqueeze(-1).to(hidden_NLD.dtype)
            mean_ND = (hidden_NLD * mask_NL1).sum(1) / mask_NL1.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(mean_ND.float(), dim=-1).cpu())  # sync point
        hidden = getattr(self.model.config, "hidden_size", 0)
        return torch.cat(out).numpy() if out else np.zeros((0, hidden), dtype=np.float32)


def build_tiny_text_encoder(out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random BERT (hidden 32, 2 layers) with a word-level tokenizer trained on a few sentences,
    in the layout `TextEmbedder.load` (AutoTokenizer / AutoModel) reads. Deterministic for a seed."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = Path(out)
    corpus = ["the sign is red", "the car is parked near the sign", "a dog is sleeping on the road",
              "the hue is crimson", "count the blue squares", "return the answer", "two lines meet at point p"]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    ids = {t: core.token_to_id(t) for t in specials}
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    max_len = 64
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", model_max_length=max_len)
    config = BertConfig(vocab_size=core.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=max_len, pad_token_id=ids["[PAD]"])
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out)  # with its (unused) pooler, so AutoModel reports no missing weights
    tokenizer.save_pretrained(out)
    return out
