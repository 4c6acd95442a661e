"""Token selections: which loss tokens carry the policy-gradient term (`algo.token_selection`).

    stats = entry.traits["step_pass"](tokens, settings)            # once per step, over every loss token (optional)
    weight = entry.fn(entropy=..., mask=..., stats=stats, settings=settings)   # per row; None: every token

engine/algo/objective.py multiplies the surrogate (after truncated IS, before the KL term) by the weight, so a
deselected token gets no policy gradient but still counts in the aggregation's normaliser and still feels the KL
anchor. The weight is logged per token as `selected` (train/selected, and per token class train/tokens/<class>/selected).

- "all": every loss token (the default; nothing is multiplied, so the update is exactly the one without selection).
- "top_entropy": "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement Learning for
  LLM Reasoning" (Wang et al., arXiv 2506.01939): the policy gradient only on the top `frac` of the step's loss
  tokens by the behaviour policy's entropy (the paper's ρ = 0.2), the threshold computed over the whole step (every
  micro-batch and rank, as the paper's "in each batch"); the normaliser stays the count of all loss tokens, as in
  the paper's objective. Entropy is taken at the rollout temperature (the distribution the tokens were sampled
  from). Departure: the paper keeps H ≥ τ with τ the batch's (1 − ρ) quantile; here τ is the k-th largest entropy,
  k = ceil(ρ·N), so exactly k tokens are kept unless entropies tie at τ (ties are all kept).
- "classes": only the tokens of the token classes named in `[algo.classes] names` (engine/rollout/token_classes.py:
  tool, answer, text), e.g. ["tool"]: the policy gradient on the tool calls alone. A diagnostic as much as a
  method: it tells whether the other classes' gradients get in the way of what the named ones must learn.
Shapes: N loss tokens of the step, token tensors of one row any shape (flat [K] in the step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.rollout.token_classes import TOKEN_CLASSES

from engine.algo.losses import StepTokens
from engine.config.parsing import doc
from engine.config.registries import TOKEN_SELECTIONS


@TOKEN_SELECTIONS.register("all")
def all_tokens(*, entropy, mask, token_class, stats, settings):
    """Every loss token: no weight (None), so the loss is left exactly as it was."""
    return None


@dataclass
class TopEntropySettings:
    frac: float = doc(0.2, "Fraction of the step's loss tokens, highest entropy first, that carry the policy gradient (the paper's rho: 0.2).", gt=0.0, le=1.0)


def entropy_threshold(tokens: StepTokens, s: TopEntropySettings) -> dict[str, Tensor]:
    """The k-th largest entropy over the step's N loss tokens, k = ceil(frac·N) (at least 1)."""
    if tokens.entropy is None:
        raise ValueError("token selection 'top_entropy' needs the step's entropies (StepTokens.entropy)")
    entropy_N = tokens.entropy.float()
    if entropy_N.numel() == 0:
        return {"entropy_threshold": torch.tensor(float("inf"))}
    k = max(1, math.ceil(s.frac * entropy_N.numel() - 1e-9))
    return {"entropy_threshold": torch.topk(entropy_N, k).values.min()}


@TOKEN_SELECTIONS.register("top_entropy", settings=TopEntropySettings, step_pass=entropy_threshold)
def top_entropy(*, entropy: Tensor, mask: Tensor, token_class, stats: dict[str, Tensor], settings: TopEntropySettings):
    """1 on loss tokens whose entropy reaches the step's threshold, 0 elsewhere (padding included)."""
    threshold = stats["entropy_threshold"].to(entropy.device)
    return ((mask > 0) & (entropy.float() >= threshold)).to(entropy.dtype)


@dataclass
class ClassesSettings:
    names: list[str] = doc(["tool"], "Token classes whose tokens carry the policy gradient (tool, answer, text).")


def _check_classes(algo) -> None:
    names = algo.settings("classes").names
    if not names or any(n not in TOKEN_CLASSES for n in names):
        raise ValueError(f"[algo.classes] names = {names}: name one or more token classes of {', '.join(TOKEN_CLASSES)}")


@TOKEN_SELECTIONS.register("classes", settings=ClassesSettings, check=_check_classes)
def classes(*, entropy: Tensor, mask: Tensor, token_class, stats, settings: ClassesSettings):
    """1 on loss tokens of the named classes, 0 elsewhere (an unclassified token is never selected)."""
    if token_class is None:
        raise ValueError("token selection 'classes' needs the token classes of the trajectories; this row has none")
    wanted = torch.tensor([TOKEN_CLASSES.index(n) for n in settings.names], device=token_class.device)
    return ((mask > 0) & torch.isin(token_class.to(mask.device), wanted.to(mask.device))).to(mask.dtype)
