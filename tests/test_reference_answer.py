"""engine/algo/reference_answer.py and the `answer_prob` reward: the policy's probability of the reference answer
where its own answer starts, checked against one plain forward of the tiny model (tests/engine_helpers.py
plain_logits: the model's own positions, no packing) on the text cut and re-joined by hand.

- After the reasoning and after a tool result (an injected image and tool text), at the sampler's temperature;
- several references sum over their distinct texts (disjoint answers: the sum stays a probability);
- no `<answer>` after the last tool result, or none at all: 0;
- a token that straddles the end of `<answer>` (a BPE merge, here a toy vocabulary with ">do") is cut on characters;
- score() fills the reward from the same numbers, and the reward refuses a caller that did not compute them.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_reference_answer.py
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import engine.algo.reference_answer as RA
from engine.algo.reference_answer import reference_answer_probs, teacher_forced
from engine.algo.step import score
from engine.rollout.rollout import finish
from engine.rollout.trajectory import Trajectory
from rewards.accuracy import answer_prob_reward
from rewards.registry import RewardContext
from tests.engine_helpers import encode, load_tiny, make_prompt, noise_image, plain_logits


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


def _traj(vlm, prompt, pieces, group=0):
    """A finished trajectory from ("s", sampled text), ("img", image) and ("tool", injected text) pieces."""
    t = Trajectory.start(prompt, group)
    for kind, x in pieces:
        if kind == "s":
            ids = encode(vlm, x)
            t.append_sampled(ids, [0.0] * len(ids))
        elif kind == "img":
            t.append_image(x, vlm)
        else:
            t.append_injected(encode(vlm, x))
    finish(t, vlm)
    return t


def _expected_prob(vlm, context_ids, traj, reference, temperature):
    """p(reference</answer> | context_ids) from one plain forward on the trajectory's images."""
    tail = encode(vlm, reference + "</answer>")
    ids = list(context_ids) + tail
    with torch.no_grad():
        logits_TV = plain_logits(vlm, ids, traj.pixel_values, traj.grid_thw)
    logp = torch.log_softmax(logits_TV / temperature, -1)
    n = len(context_ids)
    return math.exp(sum(logp[n + j - 1, tok].item() for j, tok in enumerate(tail)))


def test_probability_after_reasoning_and_after_a_tool_result(vlm):
    prompt = make_prompt(vlm, (90, 60), "Which pattern?", 0)
    plain = _traj(vlm, prompt, [("s", "<think>look</think><answer>vertical</answer>")])
    crop = noise_image((56, 56), 7)
    tooled = _traj(vlm, prompt, [("s", "<think>zoom</think><tool_call>[0, 0, 56, 56]</tool_call>"), ("img", crop),
                                 ("tool", "cropped"), ("s", "<think>seen</think><answer>dots</answer>")])
    prompt.example.answers = ["checker"]
    got = reference_answer_probs(vlm, [plain, tooled], temperature=0.7)
    want_plain = _expected_prob(vlm, prompt.ids + encode(vlm, "<think>look</think><answer>"), plain, "checker", 0.7)
    cut = len(tooled.ids) - len(encode(vlm, "dots</answer>"))
    want_tooled = _expected_prob(vlm, tooled.ids[:cut], tooled, "checker", 0.7)
    assert got == pytest.approx([want_plain, want_tooled], rel=1e-4)
    assert 0 < got[0] < 1 and got[0] != pytest.approx(got[1], rel=1e-3)  # the crop changed the probability
    greedy = reference_answer_probs(vlm, [plain], temperature=0.0)  # greedy evaluation: temperature 1
    want = _expected_prob(vlm, prompt.ids + encode(vlm, "<think>look</think><answer>"), plain, "checker", 1.0)
    assert greedy == pytest.approx([want], rel=1e-4)


def test_several_references_sum_and_no_answer_scores_zero(vlm):
    prompt = make_prompt(vlm, (56, 112), "Which pattern?", 1)
    prompt.example.answers = ["dots", "checker", "dots", " "]  # distinct, non-blank: dots and checker
    done = _traj(vlm, prompt, [("s", "<think>a</think><answer>dots</answer>")])
    unanswered = _traj(vlm, prompt, [("s", "<think>a</think>")])
    answered_before_tool = _traj(vlm, prompt, [("s", "<answer>dots</answer><tool_call>[0, 0, 9, 9]</tool_call>"),
                                               ("img", noise_image((28, 28), 3)), ("s", "<think>b</think>")])
    got = reference_answer_probs(vlm, [done, unanswered, answered_before_tool], temperature=1.0)
    ctx = prompt.ids + encode(vlm, "<think>a</think><answer>")
    want = sum(_expected_prob(vlm, ctx, done, ref, 1.0) for ref in ("dots", "checker"))
    assert got == pytest.approx([want, 0.0, 0.0], rel=1e-4)


class _ToyTokenizer:
    """Greedy longest-match over a fixed vocabulary that merges ">" with "do" (a straddling BPE token)."""
    VOCAB = ["<answer>", "</answer>", ">do", "<think>", "</think>", "<", "answer", ">", "do", "ts", "dots", "x", "ch",
             "ecker", "checker"]

    def __call__(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            piece = max((v for v in self.VOCAB if text.startswith(v, i)), key=len)
            ids.append(self.VOCAB.index(piece))
            i += len(piece)
        return SimpleNamespace(input_ids=ids)

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.VOCAB[i] for i in ids)

    def batch_decode(self, seqs, skip_special_tokens=False):
        return [self.decode(s) for s in seqs]


def test_a_token_straddling_the_answer_tag_is_cut_on_characters(monkeypatch):
    tok = _ToyTokenizer()
    monkeypatch.setattr(RA, "rope_positions", lambda model, ids, grid, family: torch.zeros(3, len(ids)))
    vlm = SimpleNamespace(tokenizer=tok, model=None, family=None)
    sampled = [tok.VOCAB.index(p) for p in ("<think>", "x", "</think>", "<", "answer", ">do", "ts", "</answer>")]
    prompt = SimpleNamespace(ids=[0, 0])  # any two prompt tokens
    traj = Trajectory(prompt=prompt, group=0, ids=[0, 0] + sampled, mask=[0, 0] + [1] * len(sampled),
                      sampler_logp=[0.0] * 10, images=[], pixel_values=torch.zeros(0), grid_thw=torch.zeros(0, 3))
    forced = teacher_forced(traj, "checker", vlm)
    # kept: prompt, <think> x </think> < answer; then ">" re-tokenised (not scored), "checker" "</answer>" scored
    assert tok.decode(forced.ids[2:]) == "<think>x</think><answer>checker</answer>"
    scored = [tok.VOCAB[i] for i, m in zip(forced.ids, forced.mask) if m]
    assert scored == ["checker", "</answer>"]
    assert forced.ids[:7] == traj.ids[:7]
    sampled_tag = [tok.VOCAB.index(p) for p in ("<think>", "x", "</think>", "<answer>", "dots", "</answer>")]
    traj.ids, traj.mask = [0, 0] + sampled_tag, [0, 0] + [1] * 6
    forced = teacher_forced(traj, "ch", vlm)
    assert [tok.VOCAB[i] for i, m in zip(forced.ids, forced.mask) if m] == ["ch", "</answer>"]
    assert forced.ids[:6] == traj.ids[:6]


def test_score_fills_the_reward_and_the_reward_refuses_without_it(vlm):
    prompt = make_prompt(vlm, (90, 60), "Which pattern?", 2)
    prompt.example.answers = ["dots"]
    trajs = [_traj(vlm, prompt, [("s", "<think>a</think><answer>dots</answer>")]),
             _traj(vlm, prompt, [("s", "<think>b</think><answer>x</answer>")])]
    cfg = SimpleNamespace(reward=SimpleNamespace(weights={"accuracy": 1.0, "answer_prob": 2.0}, components={},
                                                 debug_path=""),
                          rollout=SimpleNamespace(temperature=0.7), optim=SimpleNamespace(micro_batch_tokens=1024),
                          model=SimpleNamespace(logprob_chunk_tokens=0))
    batch = score(trajs, vlm, cfg)
    probs = reference_answer_probs(vlm, trajs, temperature=0.7)
    assert batch.parts["answer_prob"] == pytest.approx(probs, rel=1e-6)
    assert batch.total == pytest.approx([1.0 + 2 * probs[0], 2 * probs[1]], rel=1e-6)
    assert batch.errors.get("answer_prob", 0) == 0
    with pytest.raises(ValueError, match="answer_prob needs the policy's probability"):
        answer_prob_reward("<answer>dots</answer>", prompt.example, RewardContext())
