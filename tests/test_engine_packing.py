"""engine.forward.packing: several multimodal trajectories in one row give the same log-probs as each alone.

- each trajectory packed ALONE == a plain forward of it (the model computing its own mrope positions), 1e-5;
- packed rows == each alone (1e-5, fp32), for trajectories of different lengths and images, one with TWO images
  (a crop injected mid-answer through Trajectory.append_image), in each of engine/forward/layouts.py's layouts
  (one packed sequence, a padded batch, shared prompts + continuations on their KV cache);
- samples sharing prompts (as a rollout's groups do): the "prefix" layout runs each prompt once, gives each
  sample's log-probs alone (1e-5) and the padded batch's gradients, the shared image's included (rtol 1e-4);
  it is the default for such a row, "padded" for a row where no prompt repeats;
- the check has teeth: the same row with row-0 positions running on across sequences (no per-sequence
  restart), or with only the 3 mrope rows, lets sequences attend to each other and the log-probs move > 1e-3;
- plan_rows: a hand-worked first-fit-decreasing example, the budget, every index exactly once, and an
  over-long sequence in a row of its own.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_engine_packing.py
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from engine.forward.layouts import default_layout
from models.attention import VARLEN
from engine.forward.packing import pack, pack_row, plan_rows, row_logps
from engine.rollout.rollout import finish
from engine.rollout.trajectory import Trajectory
from tests.engine_helpers import load_tiny, make_prompt, noise_image, plain_logps

# (width, height), question, seed, sampled-token runs: a run after the first is preceded by an injected crop
SPECS = [((90, 60), "What colour?", 0, [7]),
         ((112, 84), "How many dots are there in the picture?", 1, [4, 5]),  # two images
         ((56, 112), "Is it a cat", 2, [10]),
         ((84, 84), "Where?", 3, [3])]


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


def _random_tokens(g: torch.Generator, n: int) -> list[int]:
    return torch.randint(8, 1000, (n,), generator=g).tolist()  # ordinary tokens: no special, no vision id


@pytest.fixture(scope="module")
def trajs(vlm):
    g = torch.Generator().manual_seed(0)
    out = []
    for i, (size, q, seed, runs) in enumerate(SPECS):
        traj = Trajectory.start(make_prompt(vlm, size, q, seed), i)
        for k, n in enumerate(runs):
            if k:  # a tool's crop, injected with mask 0 (as the inline protocol does)
                traj.append_image(noise_image((40, 50), 100 + i), vlm)
            toks = _random_tokens(g, n)
            traj.append_sampled(toks, [0.0] * n)
        traj.stop = "length"
        finish(traj, vlm)
        out.append(traj)
    assert [len(t.grid_thw) for t in out] == [1, 2, 1, 1]
    assert len({len(t.ids) for t in out}) == len(out)
    return out


@pytest.fixture(scope="module")
def alone(vlm, trajs):
    """Log-probs of each trajectory packed alone, by trajectory."""
    with torch.no_grad():
        return [row_logps(vlm.model, pack_row(trajs, [i]))[0] for i in range(len(trajs))]


def test_alone_equals_plain_forward(vlm, trajs, alone):
    for traj, logp in zip(trajs, alone):
        assert logp.shape == (traj.num_sampled,)
        with torch.no_grad():
            expected = plain_logps(vlm, traj)
        torch.testing.assert_close(logp, expected, rtol=0, atol=1e-5)


def _split(row, logp_K: torch.Tensor, n: int) -> dict[int, torch.Tensor]:
    return {i: logp_K[row.seq_K == i] for i in range(n) if (row.seq_K == i).any()}


def test_row_bookkeeping(trajs):
    row = pack_row(trajs, [0, 1, 2, 3])
    assert row.ids_T.tolist() == [t for traj in trajs for t in traj.ids]
    assert row.grid_thw.tolist() == [g for traj in trajs for g in traj.grid_thw.tolist()]
    assert row.pixel_values.shape[0] == sum(t.pixel_values.shape[0] for t in trajs)
    starts = [0]
    for traj in trajs:
        starts.append(starts[-1] + len(traj.ids))
    for i, traj in enumerate(trajs):
        sampled = [t for t, m in zip(traj.ids, traj.mask) if m]
        assert row.ids_T[row.target_K[row.seq_K == i]].tolist() == sampled
        assert (row.target_K[row.seq_K == i] - starts[i]).tolist() == row.offset_K[row.seq_K == i].tolist()
        # row 0 restarts at 0 for every sequence; rows 1-3 are the sequence's own mrope positions
        assert row.pos_4T[0, starts[i]:starts[i + 1]].tolist() == list(range(len(traj.ids)))
        assert torch.equal(row.pos_4T[1:, starts[i]:starts[i + 1]], traj.positions)


@pytest.mark.parametrize("layout", ["packed", "padded", "prefix"])
@pytest.mark.parametrize("members", [[0, 1, 2, 3], [2, 1], [1, 3, 0]])
def test_packed_equals_alone(vlm, trajs, alone, members, layout):
    # members must be sorted as plan_rows returns them, but any order packs correctly: [2, 1] checks that too.
    # "packed": one [1, T] sequence (sdpa gets transformers' block mask here; a varlen kernel on GPU);
    # "padded": a right-padded [S, L] batch (what sdpa / eager use by default)
    row = pack_row(trajs, members)
    with torch.no_grad():
        logp_K, ent_K = row_logps(vlm.model, row, with_entropy=True, layout=layout)
    assert logp_K.shape == (sum(trajs[i].num_sampled for i in members),)
    assert ent_K.shape == logp_K.shape
    for i, logp in _split(row, logp_K, len(trajs)).items():
        torch.testing.assert_close(logp, alone[i], rtol=0, atol=1e-5)


def test_pack_with_budget_equals_alone(vlm, trajs, alone):
    budget = max(len(t.ids) for t in trajs) + 20  # room for one long and maybe one short trajectory
    rows = pack(trajs, budget)
    assert 1 < len(rows) < len(trajs)  # some rows really hold several trajectories
    assert sorted(i for r in rows for i in r.members) == list(range(len(trajs)))
    for row in rows:
        assert row.num_tokens <= budget
        with torch.no_grad():
            logp_K, _ = row_logps(vlm.model, row)
        got = _split(row, logp_K, len(trajs))
        assert sorted(got) == row.members
        for i, logp in got.items():
            torch.testing.assert_close(logp, alone[i], rtol=0, atol=1e-5)


def test_temperature_scales_logits(vlm, trajs):
    row = pack_row(trajs, [0, 1])
    with torch.no_grad():
        logp_K, _ = row_logps(vlm.model, row, temperature=0.5)
        expected = plain_logps(vlm, trajs[1], temperature=0.5)
    torch.testing.assert_close(logp_K[row.seq_K == 1], expected, rtol=0, atol=1e-5)


def test_cross_sequence_attention_would_be_caught(vlm, trajs, alone):
    """Bogus packings: the later sequences' log-probs must move far beyond the 1e-5 tolerance used above."""
    row = pack_row(trajs, [0, 1, 2, 3])
    T = row.num_tokens
    later = [i for i in range(1, len(trajs))]  # sequence 0 sees nothing before it either way

    # (a) row 0 of the positions runs on 0..T-1 instead of restarting per sequence: no packing is detected
    continuous = row.pos_4T.clone()
    continuous[0] = torch.arange(T)
    with torch.no_grad():
        bad_K, _ = row_logps(vlm.model, replace(row, pos_4T=continuous), layout="packed")
    bad = _split(row, bad_K, len(trajs))
    torch.testing.assert_close(bad[0], alone[0], rtol=0, atol=1e-5)
    for i in later:
        assert (bad[i] - alone[i]).abs().max() > 1e-3

    # (b) only the 3 mrope rows (what one would pass for a single sequence)
    with torch.no_grad():
        out = vlm.model(input_ids=row.ids_T.view(1, -1), position_ids=row.pos_4T[1:].view(3, 1, -1),
                        attention_mask=None, use_cache=False, pixel_values=row.pixel_values,
                        image_grid_thw=row.grid_thw)
    logits_TV = out.logits[0].float()
    three_K = torch.log_softmax(logits_TV[row.target_K - 1], -1).gather(-1, row.ids_T[row.target_K][:, None])[:, 0]
    three = _split(row, three_K, len(trajs))
    for i in later:
        assert (three[i] - alone[i]).abs().max() > 1e-3


def test_plan_rows_hand_example():
    # First-fit decreasing, budget 10, lengths [5, 3, 8, 2, 20]; visit order by length: 20(i4) 8(i2) 5(i0) 3(i1) 2(i3)
    # 20 -> new row A [4] (over budget, alone); 8 -> A has no room -> new row B [2] (room 2);
    # 5 -> new row C [0] (room 5); 3 -> B full (2 < 3) -> C [0, 1] (room 2); 2 -> B [2, 3] (room 0).
    assert plan_rows([5, 3, 8, 2, 20], 10) == [[4], [2, 3], [0, 1]]
    assert plan_rows([4, 4, 4], 8) == [[0, 1], [2]]  # ties keep input order
    assert plan_rows([], 8) == []


@pytest.mark.parametrize("seed", range(5))
def test_plan_rows_budget_and_coverage(seed):
    rng = random.Random(seed)
    budget = 100
    lengths = [rng.randint(1, 60) for _ in range(30)] + [150, 101]  # two over-long ones
    rows = plan_rows(lengths, budget)
    flat = [i for r in rows for i in r]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    for r in rows:
        assert r == sorted(r)
        total = sum(lengths[i] for i in r)
        if any(lengths[i] > budget for i in r):
            assert len(r) == 1  # an over-long sequence is alone
        else:
            assert total <= budget
    # a lower bound any packing must respect, and FFD stays within 11/9 OPT + 1 of it
    need = -(-sum(x for x in lengths if x <= budget) // budget) + 2
    assert need <= len(rows) <= 11 / 9 * need + 1


@pytest.fixture(scope="module")
def group_trajs(vlm):
    """Samples that share prompts as a rollout's groups do: prompt A three times (one with a crop injected
    mid-answer), prompt B twice; different sampled tokens each."""
    g = torch.Generator().manual_seed(1)
    prompts = [make_prompt(vlm, (90, 60), "What colour?", 10), make_prompt(vlm, (56, 112), "Is it a cat", 11)]
    out = []
    for k, (p, runs) in enumerate([(0, [6]), (0, [3, 4]), (0, [9]), (1, [5]), (1, [8])]):
        traj = Trajectory.start(prompts[p], p)
        for r, n in enumerate(runs):
            if r:
                traj.append_image(noise_image((40, 50), 200 + k), vlm)
            traj.append_sampled(_random_tokens(g, n), [0.0] * n)
        traj.stop = "length"
        finish(traj, vlm)
        out.append(traj)
    return out


def test_shared_prompts_run_once_with_the_same_logps_and_gradients(vlm, group_trajs):
    """The "prefix" layout (each prompt once, its KV cache repeated to its samples) == each alone, and its
    gradients == the padded batch's (autograd sums the shared prompt's gradient over its samples)."""
    row = pack_row(group_trajs, [0, 1, 2, 3, 4])
    assert row.prefix_of == [0, 0, 0, 3, 3]
    assert default_layout(vlm.model, row) == "prefix"
    assert default_layout(vlm.model, pack_row(group_trajs, [0, 3])) == "padded"  # no prompt repeats
    with torch.no_grad():
        alone = [row_logps(vlm.model, pack_row(group_trajs, [i]))[0] for i in range(len(group_trajs))]
    grads = {}
    for layout in ("padded", "prefix"):
        vlm.model.zero_grad(set_to_none=True)
        logp_K, _ = row_logps(vlm.model, row, layout=layout)
        for i, logp in _split(row, logp_K.detach(), len(group_trajs)).items():
            torch.testing.assert_close(logp, alone[i], rtol=0, atol=1e-5)
        (logp_K * torch.linspace(-1, 1, logp_K.numel())).sum().backward()
        grads[layout] = {n: p.grad.clone() for n, p in vlm.model.named_parameters() if p.grad is not None}
    assert grads["prefix"].keys() == grads["padded"].keys()
    assert any("visual" in n for n in grads["prefix"])  # the shared prompt's image gets its gradient too
    for n, g in grads["padded"].items():
        torch.testing.assert_close(grads["prefix"][n], g, rtol=1e-4, atol=1e-6, msg=n)
    vlm.model.zero_grad(set_to_none=True)


def test_layout_choice_follows_what_the_model_allows(vlm, group_trajs):
    """"prefix" needs the KV cache: gradient checkpointing turns it off while training, not in eval mode (the
    frozen reference); without shared prompts every kernel gets its own layout."""
    row, unshared = pack_row(group_trajs, [0, 1, 2, 3, 4]), pack_row(group_trajs, [0, 3])
    model = vlm.model
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        model.train()
        assert default_layout(model, row) == "padded"
        model.eval()
        assert default_layout(model, row) == "prefix"
    finally:
        model.gradient_checkpointing_disable()
        model.train()
    assert default_layout(model, row) == "prefix" and default_layout(model, unshared) == "padded"
    usual = model.config._attn_implementation
    try:
        for name, shared, alone in ((VARLEN, "prefix", "packed"),
                                    ("flash_attention_2", "packed", "packed")):
            for c in (model.config, model.config.text_config, model.config.vision_config):
                c._attn_implementation = name
            assert (default_layout(model, row), default_layout(model, unshared)) == (shared, alone), name
    finally:
        for c in (model.config, model.config.text_config, model.config.vision_config):
            c._attn_implementation = usual


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_shared_images_are_encoded_once_with_the_same_logps_and_gradients(vlm, group_trajs, layout, monkeypatch):
    """"packed" / "padded" encode each distinct image of the row once (the 2 prompts' images and the one crop: 3,
    not 6) and repeat the features: the same log-probs and gradients as encoding every trajectory's own copy."""
    import engine.forward.layouts as L

    row = pack_row(group_trajs, [0, 1, 2, 3, 4])
    assert L.shares_images(vlm.model, row)
    parts, use = L.distinct_images(row)
    assert parts == [(0, 0, 1), (1, 1, 2), (3, 0, 1)] and use == [0, 0, 1, 0, 2, 2]  # A, A + crop, A, B, B
    images_seen = []
    hook = vlm.model.model.visual.register_forward_hook(
        lambda mod, args, kwargs, out: images_seen.append(len(kwargs["grid_thw"])), with_kwargs=True)
    results = {}
    try:
        for shared in (True, False):
            monkeypatch.setattr(L, "shares_images", lambda model, r, on=shared: on)
            vlm.model.zero_grad(set_to_none=True)
            images_seen.clear()
            logp_K, _ = row_logps(vlm.model, row, layout=layout)
            (logp_K * torch.linspace(-1, 1, logp_K.numel())).sum().backward()
            results[shared] = (logp_K.detach(), images_seen[:],
                               {n: p.grad.clone() for n, p in vlm.model.named_parameters() if p.grad is not None})
    finally:
        hook.remove()
        vlm.model.zero_grad(set_to_none=True)
    assert results[True][1] == [3] and results[False][1] == [6]
    torch.testing.assert_close(results[True][0], results[False][0], rtol=0, atol=1e-5)
    assert any("visual" in n for n in results[True][2])
    for n, g in results[False][2].items():
        torch.testing.assert_close(results[True][2][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_images_are_not_shared_where_the_model_reads_them_twice(vlm, group_trajs, monkeypatch):
    import engine.forward.layouts as L

    row = pack_row(group_trajs, [0, 1, 2, 3, 4])
    assert not L.shares_images(vlm.model, pack_row(group_trajs, [0, 3]))  # no prompt repeats in that row
    monkeypatch.setattr(vlm.model.config, "model_type", "qwen3_vl")  # deepstack layers read the features again
    assert not L.shares_images(vlm.model, row)
