"""The policy's probability of the reference answer where its own answer starts: the `answer_prob` reward.

    probs = reference_answer_probs(vlm, trajs, temperature=0.7)   # one float in [0, 1] per trajectory

For each trajectory the text the policy wrote is cut where the content of its last `<answer>` starts (after its own
reasoning, tool calls and the tools' results), the example's reference answer and `</answer>` are put there instead
of what it sampled, and one forward (packed, engine/forward/packing.py) gives log p(reference, `</answer>` | all that
came before) at the sampler's temperature. That is the expected value of the exact-match accuracy of the answer the
policy would write at that point, without the draw: a right answer after a wrong crop (a guess) no longer looks like
one after the right crop; what the crop showed is what moves it. The same idea as VeriFree (Zhou et al. 2025, arXiv
2505.21493) and RLPR (Yu et al. 2025, arXiv 2506.18254), which score the reference answer's likelihood instead of
a verifier's verdict; here it is one reward among the weighted ones (docs/ALGORITHMS.md, "Expected accuracy").

Rules, each chosen so the number means "expected accuracy of the answer written here":
- no `<answer>` after the last tool result (cut off, malformed, an answer written only before a tool call): 0, as
  the accuracy reward would score it;
- several references (VQA): the sum of their probabilities over the distinct texts, capped at 1;
- the cut is made on characters, not tokens: when a sampled token straddles the end of `<answer>` (a BPE merge of
  ">" with the answer's first letters), the straddling part is re-tokenised with the reference and scored with it;
- temperature 0 (greedy evaluation) scores at temperature 1 (the model's own distribution).
Shapes: B trajectories.
"""

from __future__ import annotations

import torch

from engine.algo.objective import rows_logps
from engine.forward.packing import pack
from engine.rollout.trajectory import Trajectory
from models.load import VLM
from models.vision import rope_positions

OPEN, CLOSE = "<answer>", "</answer>"


def answer_segment_start(traj: Trajectory) -> int:
    """Index of the first token after the last injected one (the last tool result), or the prompt's end."""
    return max((k + 1 for k in range(traj.prompt_len, len(traj.ids)) if not traj.mask[k]), default=traj.prompt_len)


def _prefix_lengths(tokenizer, ids: list[int]) -> list[int]:
    """len(decode(ids[:k])) for k = 0..len(ids) (decoded with special tokens, as the tokenizer writes them)."""
    texts = tokenizer.batch_decode([ids[:k] for k in range(len(ids) + 1)], skip_special_tokens=False)
    return [len(t) for t in texts]


def teacher_forced(traj: Trajectory, reference: str, vlm: VLM) -> Trajectory | None:
    """The trajectory cut where its last answer's content starts, with `reference</answer>` appended as the only
    scored tokens (mask 1); None when no `<answer>` follows the last tool result."""
    tok = vlm.tokenizer
    start = answer_segment_start(traj)
    segment = traj.ids[start:]
    text = tok.decode(segment, skip_special_tokens=False)
    at = text.rfind(OPEN)
    if at < 0:
        return None
    cut_char = at + len(OPEN)
    lengths = _prefix_lengths(tok, segment)
    keep = max(k for k, n in enumerate(lengths) if n <= cut_char)  # whole tokens before the answer's content
    remnant = text[lengths[keep]:cut_char]  # the part of a straddling token that belongs to "<answer>"
    tail = tok(remnant + reference + CLOSE, add_special_tokens=False).input_ids
    tail_lengths = _prefix_lengths(tok, tail)
    first_scored = next(j for j in range(len(tail)) if tail_lengths[j + 1] > len(remnant))
    ids = traj.ids[:start + keep] + tail
    mask = [0] * (start + keep + first_scored) + [1] * (len(tail) - first_scored)
    return Trajectory(prompt=traj.prompt, group=traj.group, ids=ids, mask=mask, sampler_logp=[0.0] * len(ids),
                      images=traj.images, pixel_values=traj.pixel_values, grid_thw=traj.grid_thw,
                      positions=rope_positions(vlm.model, ids, traj.grid_thw, vlm.family))


def references(example) -> list[str]:
    """The distinct non-blank reference answers of an example, in order."""
    return list(dict.fromkeys(a.strip() for a in example.answers if a and a.strip()))


@torch.no_grad()
def reference_answer_probs(vlm: VLM, trajs: list[Trajectory], *, temperature: float, token_budget: int = 1024,
                           chunk_tokens: int = 0) -> list[float]:
    """Per trajectory: p(reference answer | its text up to its last `<answer>`), summed over its distinct references
    and capped at 1; 0 without an answer after its last tool result. See the module docstring."""
    forced, owner = [], []
    for i, t in enumerate(trajs):
        for ref in references(t.prompt.example):
            f = teacher_forced(t, ref, vlm)
            if f is not None:
                forced.append(f)
                owner.append(i)
    probs = [0.0] * len(trajs)
    if not forced:
        return probs
    model = vlm.model
    was_training = model.training
    model.eval()
    try:
        rows = pack(forced, token_budget)
        logps = rows_logps(model, rows, temperature=temperature if temperature > 0 else 1.0, chunk_tokens=chunk_tokens)
    finally:
        model.train(was_training)
    total = torch.zeros(len(forced), dtype=torch.float64)
    for i, row in enumerate(rows):
        total.index_add_(0, row.seq_K, logps[i].double().cpu())
    for f, lp in zip(owner, total.exp().tolist()):
        probs[f] = min(1.0, probs[f] + lp)
    return probs
