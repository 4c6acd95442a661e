"""engine.rollout.vllm_sampler.VLLMSampler on the tiny Qwen2.5-VL, checked against the trainer's log-probs and our native
sampler, never against itself:

- the log-probs vLLM reports for its sampled tokens == engine.forward.packing.row_logps of the same tokens (fp32, packed,
  the trainer's own path) within 1e-2, at temperatures 1 and 0.7, and after a tool round re-injected an image
  (two image blocks in one sequence);
- greedy vLLM == our native greedy sampler token for token (three image sizes, left-padded batch); stop ids, the
  per-request cap and banned ids end / steer rows as in ours;
- push_weights with a perturbed model (noise on every parameter, vision tower included, and lm_head x1.5):
  samples change, and their log-probs match the PERTURBED model's row_logps (and not the original's), also for a
  prompt longer than two KV blocks (a stale prefix cache would show there); pushing the original back reproduces
  the first samples exactly;
- G samples per prompt from a seeded generator are reproducible; another seed gives other samples; sampling
  leaves torch's global RNG where it was;
- once engine.rollout.rollout takes `sampler=` (the integration hook), a whole rollout through vLLM gives trajectories
  whose sampler log-probs are the trainer's (skipped, saying so, before that);
- memory phases (vLLM's sleep mode, GPU only, so checked on a recording stand-in for the engine): asleep outside
  the rollout, the weights woken before a push, the KV cache before the next rollout; nothing without sleep mode.

Needs vLLM: runs under .venv-vllm (bash scripts/install_vllm.sh; make test-vllm). Elsewhere the vLLM tests are
skipped with the reason printed by `pytest -rs`; the pure-function tests run everywhere.

Run: OMP_NUM_THREADS=1 .venv-vllm/bin/python -m pytest -q -rs tests/test_vllm_sampler.py
"""

from __future__ import annotations

import copy
import logging
import time

import pytest
import torch

from engine.forward.packing import pack, row_logps
from engine.config.settings import RolloutConfig
from engine.rollout.rollout import finish, rollout
from models.generation import GenRequest, generate
from engine.rollout.trajectory import Trajectory
from engine.rollout.vllm_sampler import VLLMSampler, _BufferOnlyReloadNotice, check_params, collapse_image_runs
from models.tiny import tiny_model_dir
from models.vision import rope_positions
from tests.engine_helpers import (MIXED_PROMPTS, encode, gen_args, load_tiny, loss_positions, make_prompt,
                                  noise_image, plain_logits, request)
from tests.vllm_lane import NO_VLLM, needs_vllm


N_NEW = 12
ATOL = 1e-2  # the bound asked for; measured here <= 1e-6 (docs/PLATFORM.md saw ~5e-3 vLLM vs transformers elsewhere)


def test_collapse_image_runs():
    # two images (pad id 7) of 3 and 2 tokens, between vision start (5) / end (6): each run becomes one pad
    assert collapse_image_runs([1, 5, 7, 7, 7, 6, 9, 5, 7, 7, 6, 7], 7) == [1, 5, 7, 6, 9, 5, 7, 6, 7]
    assert collapse_image_runs([], 7) == []


def test_top_k_top_p_are_refused():
    check_params(RolloutConfig())
    for bad in (RolloutConfig(top_k=5), RolloutConfig(top_p=0.9)):
        with pytest.raises(ValueError, match="top_k"):
            check_params(bad)


def test_push_notices_of_buffer_only_layers_are_dropped_others_kept():
    notice = _BufferOnlyReloadNotice()

    def record(layer: str) -> logging.LogRecord:
        return logging.LogRecord("vllm", logging.WARNING, "layerwise.py", 266, "%s: Failed to load weights",
                                 (layer,), None)

    assert not notice.filter(record("MRotaryEmbedding")) and not notice.filter(record("FusedMMInputNorm"))
    assert notice.filter(record("QKVParallelLinear")), "a layer with real weights that did not load must warn"


def test_settings_are_checked_before_any_model_loads(monkeypatch):
    import importlib.util

    from engine.rollout.vllm_sampler import check_settings

    vllm_cfg = lambda **kw: RolloutConfig(sampler="vllm", **kw)  # noqa: E731
    if NO_VLLM:  # the message a user without vLLM gets
        with pytest.raises(ValueError, match="needs vLLM in this environment: build .venv-vllm"):
            check_settings(vllm_cfg(), 1, False)
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real(n, *a))
    check_settings(vllm_cfg(vllm_tp=2), 4, False)
    with pytest.raises(ValueError, match="vllm_tp = 3 does not divide the 4 processes"):
        check_settings(vllm_cfg(vllm_tp=3), 4, False)
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization sizes a GPU engine"):
        check_settings(vllm_cfg(vllm_gpu_memory_utilization=0.5), 1, False)
    with pytest.raises(ValueError, match="vllm_kv_cache_gib sizes a CPU engine"):
        check_settings(vllm_cfg(vllm_kv_cache_gib=4), 1, True)
    with pytest.raises(ValueError, match="vllm_sleep = true: vLLM has no sleep mode on a CPU"):
        check_settings(vllm_cfg(vllm_sleep=True), 1, False)
    check_settings(vllm_cfg(vllm_gpu_memory_utilization=0.5, vllm_sleep=True), 1, True)


class _RecordingLLM:
    """Stands in for vllm.LLM: records the calls the sampler's memory phases make."""

    def __init__(self):
        self.calls = []
        self.llm_engine = self

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags):
        self.calls.append(("wake_up", tuple(tags)))

    def collective_rpc(self, method, kwargs):
        self.calls.append((method, [name for name, _ in kwargs["weights_iterator"]]))

    def reset_encoder_cache(self):
        self.calls.append("reset_encoder_cache")

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")


def _bare_sampler(sleeps: bool) -> VLLMSampler:
    """A VLLMSampler around _RecordingLLM (no engine is built: __init__ is skipped)."""
    s = VLLMSampler.__new__(VLLMSampler)
    s.llm, s.sleeps, s._asleep, s.tp_group = _RecordingLLM(), sleeps, [], None
    return s


def test_the_engine_sleeps_outside_the_rollout_and_wakes_what_each_phase_needs():
    s = _bare_sampler(sleeps=True)
    with s.awake():  # built awake: nothing to wake
        pass
    assert s.llm.calls == [("sleep", 1)]  # the reference forward and the update get its memory
    s.push_weights([("w", torch.zeros(1))])  # after the update: the weights back first, the KV cache still asleep
    assert s.llm.calls[1:] == [("wake_up", ("weights",)), ("reload_weights", ["w"]), "reset_encoder_cache",
                               "reset_prefix_cache"]
    with s.awake():  # the next rollout: only the KV cache is still asleep
        assert s.llm.calls[-1] == ("wake_up", ("kv_cache",))
    assert s.llm.calls[-1] == ("sleep", 1)
    with s.awake():  # a step without a push (nothing to learn from): both come back at once
        assert s.llm.calls[-1] == ("wake_up", ("weights", "kv_cache"))


def test_without_sleep_mode_the_engine_keeps_its_memory():
    s = _bare_sampler(sleeps=False)  # a CPU, or rollout.vllm_sleep false
    with s.awake():
        pass
    s.push_weights([("w", torch.zeros(1))])
    assert s.llm.calls == [("reload_weights", ["w"]), "reset_encoder_cache", "reset_prefix_cache"]


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


@pytest.fixture(scope="module")
def prompts(vlm):
    return [make_prompt(vlm, size, q, seed) for size, q, seed in MIXED_PROMPTS]


@pytest.fixture(scope="module")
def long_prompt(vlm):
    """Longer than two KV blocks (vLLM's CPU block is 128 tokens; prefix caching reuses only full blocks), so a
    stale prefix cache after push_weights would show."""
    p = make_prompt(vlm, (112, 112), "Look at the picture closely. " * 30 + "What colour?", 5)
    assert len(p.ids) > 256
    return p


@pytest.fixture(scope="module")
def sampler():
    if NO_VLLM:
        pytest.skip(NO_VLLM)
    from engine.rollout.vllm_sampler import VLLMSampler
    s = VLLMSampler(tiny_model_dir("qwen2_5_vl"), max_model_len=1024, kv_cache_gib=1, seed=0, limit_images=4)
    yield s
    s.close()


def _sample(sampler, vlm, trajs_or_prompts, params, *, expand=1, seed=0):
    """vLLM outputs for prompts (round 0) or live trajectories (a later round), as the rollout would ask."""
    reqs, images = [], []
    for x in trajs_or_prompts:
        reqs.append(GenRequest(ids=list(x.ids), positions=rope_positions(vlm.model, x.ids, x.grid_thw, vlm.family),
                               pixel_values=x.pixel_values, grid_thw=x.grid_thw))
        images.append(list(x.images))
    return sampler.generate(reqs, **params, expand=expand, images_per_request=images,
                            generator=torch.Generator().manual_seed(seed))


def _trajs(vlm, prompts, outs, expand):
    trajs = [Trajectory.start(p, i) for i, p in enumerate(prompts) for _ in range(expand)]
    for t, o in zip(trajs, outs):
        t.append_sampled(o.tokens, o.logps)
        finish(t, vlm)
    return trajs


def _max_gap(model, trajs, temperature):
    """max |sampler logp − trainer logp| over every sampled token; the trainer's logps come from packed rows."""
    worst = 0.0
    for row in pack(trajs, max_tokens=4096):
        with torch.no_grad():
            logp_K, _ = row_logps(model, row, temperature=temperature)
        sampler_K = torch.tensor([trajs[s].sampler_logp[o] for s, o in zip(row.seq_K.tolist(), row.offset_K.tolist())])
        worst = max(worst, (logp_K - sampler_K).abs().max().item())
    return worst


@needs_vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logps_match_trainer(vlm, prompts, sampler, temperature):
    G = 4
    outs = _sample(sampler, vlm, prompts, gen_args(max_new_tokens=N_NEW, temperature=temperature), expand=G)
    assert len(outs) == len(prompts) * G and all(len(o.tokens) == N_NEW for o in outs)
    gap = _max_gap(vlm.model, _trajs(vlm, prompts, outs, G), temperature)
    print(f"T={temperature}: max |vLLM logp - row_logps| = {gap:.2e} over {sum(len(o.tokens) for o in outs)} tokens")
    assert gap < ATOL


@needs_vllm
def test_logps_match_after_an_injected_image(vlm, prompts, sampler):
    """A tool round: sample, inject a second image and text (mask 0), continue from the whole sequence."""
    params = gen_args(max_new_tokens=6, temperature=1.0)
    trajs = _trajs(vlm, prompts[:2], _sample(sampler, vlm, prompts[:2], params), 1)
    for i, t in enumerate(trajs):
        t.append_image(noise_image((84, 56), 10 + i), vlm)
        t.append_injected(encode(vlm, " tool says hi"))
    outs = _sample(sampler, vlm, trajs, params, seed=1)
    for t, o in zip(trajs, outs):
        assert len(t.grid_thw) == 2
        t.append_sampled(o.tokens, o.logps)
        finish(t, vlm)
    gap = _max_gap(vlm.model, trajs, 1.0)
    print(f"two images: max |vLLM logp - row_logps| = {gap:.2e}")
    assert gap < ATOL


@pytest.fixture(scope="module")
def greedy_native(vlm, prompts):
    params = gen_args(max_new_tokens=N_NEW, temperature=0.0)
    return generate(vlm.model, [request(p, vlm) for p in prompts], **params, pad_id=vlm.family.pad_id)


@needs_vllm
def test_greedy_equals_native(vlm, prompts, sampler, greedy_native):
    outs = _sample(sampler, vlm, prompts, gen_args(max_new_tokens=N_NEW, temperature=0.0))
    for o, n in zip(outs, greedy_native):
        assert o.tokens == n.tokens and o.stop == n.stop == "length"
        torch.testing.assert_close(torch.tensor(o.logps), torch.tensor(n.logps), rtol=0, atol=ATOL)
    assert any(len(set(n.tokens)) > 1 for n in greedy_native)  # not one repeated token everywhere
    # expand=G while greedy (vLLM itself refuses n > 1 then): G copies, request-major, as ours
    outs = _sample(sampler, vlm, prompts, gen_args(max_new_tokens=N_NEW, temperature=0.0), expand=2)
    assert [o.tokens for o in outs] == [n.tokens for n in greedy_native for _ in range(2)]


@needs_vllm
def test_stop_cap_and_banned_ids_as_native(vlm, prompts, sampler, greedy_native):
    # stop id: the 3rd greedy token of a prompt whose first two differ from it → that row stops after 3 tokens
    k = next(i for i, o in enumerate(greedy_native) if o.tokens[2] not in o.tokens[:2])
    stop = greedy_native[k].tokens[2]
    outs = _sample(sampler, vlm, prompts, gen_args(max_new_tokens=N_NEW, temperature=0.0,
                                                         stop_ids=frozenset({stop})))
    assert (outs[k].tokens, outs[k].stop) == (greedy_native[k].tokens[:3], "stop")
    for o, ref in zip(outs, greedy_native):
        end = ref.tokens.index(stop) + 1 if stop in ref.tokens else N_NEW
        assert (o.tokens, o.stop) == (ref.tokens[:end], "stop" if stop in ref.tokens else "length")
    # per-request cap
    reqs = [request(p, vlm) for p in prompts]
    reqs[1].max_new_tokens = 2
    outs = sampler.generate(reqs, **gen_args(max_new_tokens=N_NEW, temperature=0.0), expand=1,
                            images_per_request=[p.images for p in prompts])
    assert [len(o.tokens) for o in outs] == [N_NEW, 2, N_NEW] and {o.stop for o in outs} == {"length"}
    # banned ids: banning each row's greedy first token makes both samplers take the same runner-up
    banned = frozenset(n.tokens[0] for n in greedy_native)
    params = gen_args(max_new_tokens=4, temperature=0.0, banned_ids=banned)
    ours = generate(vlm.model, [request(p, vlm) for p in prompts], **params, pad_id=vlm.family.pad_id)
    outs = _sample(sampler, vlm, prompts, params)
    assert [o.tokens for o in outs] == [n.tokens for n in ours]
    assert not any(t in banned for o in outs for t in o.tokens)
    torch.testing.assert_close(torch.tensor([o.logps for o in outs]), torch.tensor([n.logps for n in ours]),
                               rtol=0, atol=ATOL)


def _perturbed(model):
    """A copy with lm_head x1.5 and noise on EVERY parameter (vision tower included, so stale encoder-cache
    entries would show, and a tensor that push_weights failed to load would leave a gap)."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3 * p.float().std().clamp_min(1e-2))
            if name == "lm_head.weight":
                p.mul_(1.5)
    return m


@needs_vllm
def test_push_weights(vlm, prompts, long_prompt, sampler):
    G, T = 4, 1.0
    prompts = prompts + [long_prompt]
    params = gen_args(max_new_tokens=N_NEW, temperature=T)
    before = _sample(sampler, vlm, prompts, params, expand=G, seed=7)
    perturbed = _perturbed(vlm.model).eval()
    names = {n for n, _ in perturbed.named_parameters()}
    assert any(".visual." in n for n in names) and "lm_head.weight" in names
    start = time.perf_counter()
    sampler.push_weights(perturbed.state_dict().items())
    print(f"push_weights: {time.perf_counter() - start:.2f} s for {len(names)} tensors")
    try:
        after = _sample(sampler, vlm, prompts, params, expand=G, seed=7)
        assert [o.tokens for o in after] != [o.tokens for o in before]
        trajs = _trajs(vlm, prompts, after, G)
        gap_new, gap_old = _max_gap(perturbed, trajs, T), _max_gap(vlm.model, trajs, T)
        print(f"after push: max gap to the perturbed model {gap_new:.2e}, to the original {gap_old:.2e}")
        assert gap_new < ATOL < gap_old
        ours = generate(perturbed, [request(p, vlm) for p in prompts], **gen_args(max_new_tokens=N_NEW,
                        temperature=0.0), pad_id=vlm.family.pad_id)
        greedy = _sample(sampler, vlm, prompts, gen_args(max_new_tokens=N_NEW, temperature=0.0))
        assert [o.tokens for o in greedy] == [n.tokens for n in ours]
    finally:
        sampler.push_weights(vlm.model.state_dict().items())
    again = _sample(sampler, vlm, prompts, params, expand=G, seed=7)
    assert [o.tokens for o in again] == [o.tokens for o in before]
    torch.testing.assert_close(torch.tensor([o.logps for o in again]), torch.tensor([o.logps for o in before]),
                               rtol=0, atol=1e-5)


@needs_vllm
def test_seeded_samples_reproduce(vlm, prompts, sampler):
    G = 4
    params = gen_args(max_new_tokens=N_NEW, temperature=1.0)
    a = _sample(sampler, vlm, prompts, params, expand=G, seed=3)
    b = _sample(sampler, vlm, prompts, params, expand=G, seed=3)
    c = _sample(sampler, vlm, prompts, params, expand=G, seed=4)
    assert [o.tokens for o in a] == [o.tokens for o in b]
    assert [o.logps for o in a] == [o.logps for o in b]
    assert [o.tokens for o in a] != [o.tokens for o in c]
    for i in range(len(prompts)):  # the G samples of one prompt differ from each other
        assert len({tuple(o.tokens) for o in a[i * G:(i + 1) * G]}) == G
    # a prompt's samples do not depend on what else is in the batch (per-request seeds)
    alone = _sample(sampler, vlm, prompts[:1], params, expand=G, seed=3)
    assert [o.tokens for o in alone] == [o.tokens for o in a[:G]]


@needs_vllm
def test_global_rng_untouched(vlm, prompts, sampler):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _sample(sampler, vlm, prompts, gen_args(max_new_tokens=4, temperature=1.0), expand=2)
    assert torch.equal(torch.rand(3), expected)


@needs_vllm
def test_per_prompt_seeds_make_a_prompts_samples_independent_of_its_batch(vlm, prompts, sampler):
    """What lets N processes sample what one does: with rollout seeds, a prompt sampled alone (another process's
    share) gets the tokens it gets in the whole batch."""
    settings = RolloutConfig(group_size=3, temperature=1.0, max_new_tokens=N_NEW)
    seeds = [11, 2_000, 123_456]
    whole = rollout(vlm, prompts, settings, protocol=None, sampler=sampler, seeds=seeds)
    alone = rollout(vlm, prompts[2:], settings, protocol=None, sampler=sampler, seeds=seeds[2:])
    assert [t.ids for t in alone] == [t.ids for t in whole[6:]]
    other = rollout(vlm, prompts[2:], settings, protocol=None, sampler=sampler, seeds=[7])
    assert [t.ids for t in other] != [t.ids for t in alone]  # the seed, not the batch, decides


@needs_vllm
def test_rollout_through_vllm(vlm, prompts, sampler):
    G = 3
    trajs = rollout(vlm, prompts, RolloutConfig(group_size=G, temperature=1.0, max_new_tokens=N_NEW), protocol=None,
                    generator=torch.Generator().manual_seed(0),
                    sampler=sampler)
    assert [t.group for t in trajs] == [g for g in range(len(prompts)) for _ in range(G)]
    assert all(t.num_sampled > 0 and t.stop in ("eos", "length") for t in trajs)
    # The rollout bans the 4 vision placeholder ids, so the sampler's logp is under the distribution without them
    # (as in test_engine_rollout): check against a plain forward with those logits masked, tightly; the
    # trainer's unmasked row_logps differ by -log(1 - P(banned)), ~4e-3 in this near-uniform tiny model.
    banned = sorted(vlm.family.vision_ids)
    worst = 0.0
    for t in trajs:
        where = loss_positions(t)
        with torch.no_grad():
            logits_KV = plain_logits(vlm, t.ids, t.pixel_values, t.grid_thw)[where - 1]
        logits_KV[:, banned] = float("-inf")
        expected_K = torch.log_softmax(logits_KV, -1).gather(-1, torch.tensor(t.ids)[where][:, None])[:, 0]
        worst = max(worst, (torch.tensor([t.sampler_logp[k] for k in where.tolist()]) - expected_K).abs().max().item())
    gap = _max_gap(vlm.model, trajs, 1.0)
    print(f"rollout through vLLM: max |sampler logp - masked plain forward| = {worst:.2e}; vs row_logps {gap:.2e}")
    assert worst < 1e-4 and gap < ATOL
