"""engine.rollout.rollout.rollout end to end with a tool call, on the real tiny model steered by a scripted wrapper.

The wrapper adds +1e4 to one logit whenever (last input token, its position) is a step of the script
"Look. <tool_call>[28, 21, 84, 63]</tool_call>" right after a prompt; everywhere else the real model's logits
pass through untouched. So round 0 writes the call (both samples of both prompts), the inline protocol injects
the crop, and round 1 re-prefills the whole sequence (two images, left-padded across prompts of different
lengths) and samples FREELY from the real model. Checked:
- each trajectory: the script, then exactly the crop block of ITS prompt's image (mask 0), then free tokens
  (mask 1), within the token budget; one successful crop record; stop classified;
- the sampler's log-probs of the free round-1 tokens equal the trainer's (pack + row_logps on the real model),
  up to the documented renormalisation over the banned vision ids: the re-prefill's positions and images are what
  the trainer sees (docs/PLATFORM.md: cached rope_deltas would not be);
- a trajectory whose call used the last token of its budget cannot continue; its call must not be run again in
  a later tool round started by another trajectory.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_engine_rollout.py
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.forward.packing import pack, row_logps
from engine.config.settings import RolloutConfig
from engine.rollout.rollout import rollout
from engine.rollout.tool_calls import make_protocol
from models.generation import generate
from models.vision import image_block, rope_positions
from tests.engine_helpers import encode, load_tiny, make_prompt, plain_logits

SCRIPT = "Look. <tool_call>[28, 21, 84, 63]</tool_call>"  # resized-frame box = original [25, 20, 75, 60]
FREE = 6  # tokens left for round 1


class ScriptedPolicy(torch.nn.Module):
    """The real model, plus +1e4 on rules[(last input token, its text position)] for the next token."""

    def __init__(self, real, rules: dict[tuple[int, int], int]):
        super().__init__()
        self.real = real
        self.rules = rules

    @property
    def model(self):  # what models.vision.rope_positions reaches for (get_rope_index)
        return self.real.model

    @property
    def dtype(self):
        return self.real.dtype

    def forward(self, **kw):
        out = self.real(**kw)
        ids_BT, pos_B = kw["input_ids"], kw["position_ids"][0, :, -1]
        for b in range(ids_BT.shape[0]):
            nxt = self.rules.get((int(ids_BT[b, -1]), int(pos_B[b])))
            if nxt is not None:
                out.logits[b, -1, nxt] += 1e4
        return out


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


def scripted_vlm(vlm, prompts, scripts: list[list[int]]):
    """vlm with its model wrapped so that prompt k's answer starts with scripts[k] (then the real model goes on)."""
    rules: dict[tuple[int, int], int] = {}
    for p, script in zip(prompts, scripts):
        p0 = int(rope_positions(vlm.model, p.ids, p.grid_thw, vlm.family).max()) + 1  # first answer position
        prev = [p.ids[-1]] + script[:-1]
        for k, (a, b) in enumerate(zip(prev, script)):
            assert rules.setdefault((a, p0 + k - 1), b) == b, "script keys of two prompts collide"
    return replace(vlm, model=ScriptedPolicy(vlm.model, rules))


@pytest.fixture(scope="module")
def prompts(vlm):
    # same 100x80 size (resized 112x84, where the box is valid), different noise, very different prompt lengths
    return [make_prompt(vlm, (100, 80), "What is in the box?", 0),
            make_prompt(vlm, (100, 80), "Look at the whole picture very carefully, then tell me: what exactly "
                                        "is drawn inside the marked box in the middle?", 1)]


@pytest.fixture(scope="module")
def setup(vlm, prompts):
    script = encode(vlm, SCRIPT)
    scripted = scripted_vlm(vlm, prompts, [script, script])
    settings = RolloutConfig(group_size=2, temperature=1.0, max_new_tokens=len(script) + FREE, max_total_tokens=4096,
                             max_tool_calls=1, max_images=4)
    g = torch.Generator().manual_seed(0)
    trajs = rollout(scripted, prompts, settings, protocol=make_protocol("inline", scripted), generator=g)
    return prompts, script, trajs


def test_rollout_injects_each_prompts_crop(vlm, setup):
    prompts, script, trajs = setup
    assert [t.group for t in trajs] == [0, 0, 1, 1]
    for traj in trajs:
        p = prompts[traj.group]
        L, m = len(p.ids), len(script)
        assert traj.prompt is p and traj.ids[:L] == p.ids
        assert traj.ids[L:L + m] == script
        assert len(traj.tool_calls) == 1 and traj.tool_calls[0].ok and traj.tool_calls[0].name == "crop"
        assert traj.images[1].tobytes() == p.images[0].crop((25, 20, 75, 60)).tobytes()
        block = image_block(traj.grid_thw[1], vlm.family)
        assert traj.ids[L + m:L + m + len(block)] == block
        free = traj.ids[L + m + len(block):]
        assert 1 <= len(free) <= FREE
        assert traj.mask == [0] * L + [1] * m + [0] * len(block) + [1] * len(free)
        assert traj.num_sampled <= m + FREE
        assert not set(free) & vlm.family.vision_ids  # the rollout bans placeholder tokens
        if traj.stop == "eos":
            assert free[-1] in vlm.family.eos_ids
        elif traj.stop == "length":
            assert len(free) == FREE
        else:  # a second call, over max_tool_calls = 1
            assert traj.stop == "limit" and free[-1] == vlm.family.tool_call_end_id
        assert traj.text.startswith(SCRIPT)
        assert traj.positions.shape == (3, len(traj.ids))


def test_round_one_sampler_logps_equal_trainer_logps(vlm, setup):
    """The sampler records log p under the distribution it drew from: the rollout bans the 4 vision placeholder
    ids, so its log-prob is the trainer's minus log(1 - P(banned)). In a trained model P(banned) ~ 0; in this
    near-uniform tiny model it is ~4/1010, a 4e-3 shift, so the expected value includes it explicitly."""
    prompts, script, trajs = setup
    (row,) = pack(trajs, 10**6)  # one row: 4 sequences, 8 images
    with torch.no_grad():
        logp_K, _ = row_logps(vlm.model, row)  # the REAL model (no script boost)
    banned = sorted(vlm.family.vision_ids)
    m = len(script)
    for i, traj in enumerate(trajs):
        mine = row.seq_K == i
        offsets = row.offset_K[mine]
        sampler = torch.tensor([traj.sampler_logp[o] for o in offsets.tolist()])
        # the first m predicted tokens were forced by the +1e4 boost (sampler logp ~ 0); the rest are free
        assert torch.all(sampler[:m] > -1e-3)
        # P(banned) at each free token's predicting position, from a plain forward of the finished trajectory
        with torch.no_grad():
            logits_TV = plain_logits(vlm, traj.ids, traj.pixel_values, traj.grid_thw)
        p_banned = torch.softmax(logits_TV[offsets[m:] - 1], -1)[:, banned].sum(-1)
        expected = logp_K[mine][m:] - torch.log1p(-p_banned)
        torch.testing.assert_close(sampler[m:], expected, rtol=0, atol=1e-5)
        assert (logp_K[mine][m:] < -1).all()  # a near-uniform tiny model: these are not boosted tokens


def test_call_at_the_token_budget_runs_once(vlm, prompts):
    """Prompt 0 writes its call with the LAST token of its budget, so it cannot continue; prompt 1 calls earlier
    and continues, which starts a second tool round. The budget-capped trajectory must not have its (same, old)
    call run again in that round: one call record, at most one tool image."""
    long, short = encode(vlm, SCRIPT), encode(vlm, SCRIPT[len("Look. "):])
    assert len(short) < len(long)
    scripted = scripted_vlm(vlm, prompts, [long, short])
    settings = RolloutConfig(group_size=1, temperature=1.0, max_new_tokens=len(long), max_total_tokens=4096,
                             max_tool_calls=2, max_images=4)
    g = torch.Generator().manual_seed(0)
    capped, cont = rollout(scripted, prompts, settings, protocol=make_protocol("inline", scripted), generator=g)
    assert cont.num_sampled > len(short)  # prompt 1 really went on sampling: a second tool round happened
    assert capped.num_sampled == len(long)
    # A call written with the last token of the budget is not run (its result could never be read), and it is
    # never handled again in later rounds while other trajectories continue.
    assert len(capped.tool_calls) == 0, f"the call ran {len(capped.tool_calls)} times"
    assert len(capped.images) == 1 and capped.stop == "limit"


def test_per_prompt_seeds_are_the_vllm_samplers_and_state_free(vlm, prompts):
    from engine.rollout.rollout import prompt_seeds
    from models.generation import GenRequest

    a = prompt_seeds(0, 5, 4)
    assert a == prompt_seeds(0, 5, 4) and len(set(a)) == 4 and all(0 <= s < 2**30 for s in a)
    assert a != prompt_seeds(0, 6, 4) and a != prompt_seeds(1, 5, 4)  # another step or run: other seeds
    with pytest.raises(ValueError, match="per-prompt seeds are the vLLM sampler's"):
        rollout(vlm, prompts[:1], RolloutConfig(group_size=2), protocol=None, seeds=[1])
    with pytest.raises(ValueError, match="per-request seeds are the vLLM sampler's"):
        generate(vlm.model, [GenRequest(ids=[1, 2], positions=torch.zeros(3, 2, dtype=torch.long), seed=3)],
                 RolloutConfig(), pad_id=0, max_new_tokens=2)
