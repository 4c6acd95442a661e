"""models.generation.generate on the tiny Qwen2.5-VL: checked against transformers' own `generate` and against
independent full forwards, never against itself.

- greedy == HF `model.generate(do_sample=False)` token for token, for prompts with images of different sizes;
- a left-padded batch == each prompt alone (tokens equal, log-probs within 1e-5);
- expand=G: G outputs per prompt in request-major order; a seeded generator reproduces samples, another seed differs;
- stop ids end a row (and only that row) on the stop token; per-request caps end a row by "length"; both the
  same whether the loop drops finished rows at every step (CPU) or every 5 (finished rows decode on: a GPU's way);
- banned ids are never drawn even when they are the argmax; top_k=1 (and a tiny top_p) equal greedy;
- recorded log-probs == log_softmax(logits / T) of a full forward over prompt + sampled tokens (within 1e-4).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_engine_sampler.py
"""

from __future__ import annotations

import pytest
import torch

from models.generation import GREEDY, GenRequest, generate
from models.vision import mm_token_type_ids
from tests.engine_helpers import MIXED_PROMPTS, gen_args, load_tiny, make_prompt, plain_logits, request

N_NEW = 12


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


@pytest.fixture(scope="module")
def prompts(vlm):
    return [make_prompt(vlm, size, q, seed) for size, q, seed in MIXED_PROMPTS]


@pytest.fixture(scope="module")
def greedy_alone(vlm, prompts):
    """Each prompt generated ALONE, greedily, no stop ids: the reference for the batched / constrained runs."""
    params = gen_args(max_new_tokens=N_NEW, temperature=0.0)
    return [generate(vlm.model, [request(p, vlm)], **params, pad_id=vlm.family.pad_id)[0] for p in prompts]


def _full_logits(vlm, prompt, tokens: list[int]) -> torch.Tensor:
    """Logits [T, V] of one plain forward over prompt + tokens (the model's own positions, no cache)."""
    with torch.no_grad():
        return plain_logits(vlm, list(prompt.ids) + list(tokens), prompt.pixel_values, prompt.grid_thw)


def test_prompts_differ_in_images_and_lengths(prompts):
    grids = [tuple(p.grid_thw[0].tolist()) for p in prompts]
    assert grids == [(1, 4, 6), (1, 8, 4), (1, 6, 8)]  # smart resize to multiples of 28: 84x56, 56x112, 112x84
    assert len({len(p.ids) for p in prompts}) == 3


def test_greedy_equals_hf_generate(vlm, prompts, greedy_alone):
    eos = set(vlm.family.eos_ids)
    for p, ours in zip(prompts, greedy_alone):
        ids_1T = torch.tensor([p.ids])
        hf = vlm.model.generate(input_ids=ids_1T, attention_mask=torch.ones_like(ids_1T), pixel_values=p.pixel_values,
                                image_grid_thw=p.grid_thw, mm_token_type_ids=mm_token_type_ids(ids_1T, vlm.family),
                                do_sample=False, max_new_tokens=N_NEW)
        hf_new = hf[0, len(p.ids):].tolist()
        cut = next((i + 1 for i, t in enumerate(hf_new) if t in eos), len(hf_new))  # HF stops on eos, pads after
        assert ours.tokens[:cut] == hf_new[:cut]
        assert ours.stop == "length" and len(ours.tokens) == N_NEW
    # not a degenerate check: at least one prompt's greedy answer is not a single repeated token
    assert any(len(set(o.tokens)) > 1 for o in greedy_alone)


def test_left_padded_batch_equals_each_alone(vlm, prompts, greedy_alone):
    params = gen_args(max_new_tokens=N_NEW, temperature=0.0)
    batched = generate(vlm.model, [request(p, vlm) for p in prompts], **params, pad_id=vlm.family.pad_id)
    assert len(batched) == len(prompts)
    for b, a in zip(batched, greedy_alone):
        assert b.tokens == a.tokens
        assert b.stop == a.stop == "length"
        torch.testing.assert_close(torch.tensor(b.logps), torch.tensor(a.logps), rtol=0, atol=1e-5)


@pytest.fixture(params=[1, 5], ids=["check-every-step", "check-every-5"])
def stop_check_every(request, monkeypatch):
    """How often the decoding loop looks at the host to drop finished rows (a GPU checks every few steps, and
    finished rows decode on meanwhile): the outputs must not depend on it."""
    import models.generation as G
    monkeypatch.setattr(G, "_stop_check_every", lambda device: request.param)
    return request.param


def test_stop_id_ends_only_its_row(vlm, prompts, greedy_alone, stop_check_every):
    # The stop id is the 3rd greedy token of a prompt whose first two tokens differ from it, so that row must end
    # after exactly 3 tokens; every other row ends at its own first occurrence of that id, or runs to the length.
    k = next(i for i, o in enumerate(greedy_alone) if o.tokens[2] not in o.tokens[:2])
    stop = greedy_alone[k].tokens[2]
    params = gen_args(max_new_tokens=N_NEW, temperature=0.0, stop_ids=frozenset({stop}))
    outs = generate(vlm.model, [request(p, vlm) for p in prompts], **params, pad_id=vlm.family.pad_id)
    assert outs[k].tokens == greedy_alone[k].tokens[:3] and outs[k].stop == "stop"
    for o, ref in zip(outs, greedy_alone):
        if stop in ref.tokens:
            end = ref.tokens.index(stop) + 1
            assert (o.tokens, o.stop) == (ref.tokens[:end], "stop")
        else:  # kept going after another row was dropped from the cache: still the same greedy tokens
            assert (o.tokens, o.stop) == (ref.tokens, "length")
        torch.testing.assert_close(torch.tensor(o.logps), torch.tensor(ref.logps[:len(o.tokens)]), rtol=0, atol=1e-5)
    assert any(o.stop == "length" for o in outs), "need one row that outlives the stopped one"


def test_per_request_cap_ends_row_by_length(vlm, prompts, greedy_alone, stop_check_every):
    reqs = [request(p, vlm) for p in prompts]
    reqs[1] = GenRequest(**{**reqs[1].__dict__, "max_new_tokens": 2})
    outs = generate(vlm.model, reqs, **gen_args(max_new_tokens=N_NEW, temperature=0.0), pad_id=vlm.family.pad_id)
    assert [len(o.tokens) for o in outs] == [N_NEW, 2, N_NEW]
    assert [o.stop for o in outs] == ["length"] * 3
    for o, ref in zip(outs, greedy_alone):
        assert o.tokens == ref.tokens[:len(o.tokens)]


def test_banned_argmax_is_never_drawn(vlm, prompts, greedy_alone):
    p, ref = prompts[0], greedy_alone[0]
    banned = frozenset({ref.tokens[0]})  # the argmax of the first step
    # greedy: the first token becomes the runner-up of an independent forward's last logits
    logits_V = _full_logits(vlm, p, [])[-1]
    runner_up = logits_V.topk(2).indices[1].item()
    out = generate(vlm.model, [request(p, vlm)], **gen_args(max_new_tokens=N_NEW, temperature=0.0,
                                                                 banned_ids=banned), pad_id=vlm.family.pad_id)[0]
    assert out.tokens[0] == runner_up
    assert not banned & set(out.tokens)
    # sampling among the top 2 (the banned argmax would be drawn about half the time): 4 x 12 draws, none banned
    g = torch.Generator().manual_seed(0)
    outs = generate(vlm.model, [request(p, vlm)], **gen_args(max_new_tokens=N_NEW, temperature=1.0, top_k=2,
                                                                  banned_ids=banned),
                    pad_id=vlm.family.pad_id, expand=4, generator=g)
    drawn = [t for o in outs for t in o.tokens]
    assert len(drawn) == 4 * N_NEW and not banned & set(drawn)
    # the same draws without the ban do pick it: the ban, not luck, kept it out
    g = torch.Generator().manual_seed(0)
    free = generate(vlm.model, [request(p, vlm)], **gen_args(max_new_tokens=N_NEW, temperature=1.0, top_k=2),
                    pad_id=vlm.family.pad_id, expand=4, generator=g)
    assert banned & {t for o in free for t in o.tokens}


@pytest.mark.parametrize("knob", [dict(top_k=1), dict(top_p=1e-6)])
def test_top_k_1_and_tiny_top_p_equal_greedy(vlm, prompts, greedy_alone, knob):
    g = torch.Generator().manual_seed(123)
    params = gen_args(max_new_tokens=N_NEW, temperature=1.0, **knob)
    outs = generate(vlm.model, [request(p, vlm) for p in prompts], **params, pad_id=vlm.family.pad_id, generator=g)
    for o, ref in zip(outs, greedy_alone):
        assert o.tokens == ref.tokens
        # at T=1 the recorded logp is the plain log-softmax, the same quantity greedy records
        torch.testing.assert_close(torch.tensor(o.logps), torch.tensor(ref.logps), rtol=0, atol=1e-5)


def _sample(vlm, prompts, seed, G=3, temperature=1.0):
    g = torch.Generator().manual_seed(seed)
    return generate(vlm.model, [request(p, vlm) for p in prompts], **gen_args(max_new_tokens=N_NEW,
                                                                                  temperature=temperature),
                    pad_id=vlm.family.pad_id, expand=G, generator=g)


def test_expand_and_seeded_generator(vlm, prompts):
    G = 3
    a, b, c = _sample(vlm, prompts, 0, G), _sample(vlm, prompts, 0, G), _sample(vlm, prompts, 1, G)
    assert len(a) == G * len(prompts)
    assert all(len(o.tokens) == N_NEW for o in a)
    assert [o.tokens for o in a] == [o.tokens for o in b]
    assert [o.logps for o in a] == [o.logps for o in b]
    assert [o.tokens for o in a] != [o.tokens for o in c]
    for i in range(len(prompts)):  # the G samples of one prompt are not copies of each other
        group = [tuple(o.tokens) for o in a[i * G:(i + 1) * G]]
        assert len(set(group)) > 1


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logps_equal_full_forward(vlm, prompts, temperature):
    """Also pins request-major order under expand: output i belongs to prompt i // G (its logps only match the
    full forward over THAT prompt)."""
    G = 2
    outs = _sample(vlm, prompts, 7, G, temperature)
    for i, o in enumerate(outs):
        p = prompts[i // G]
        logits_TV = _full_logits(vlm, p, o.tokens)
        L, n = len(p.ids), len(o.tokens)
        logp_nV = torch.log_softmax(logits_TV[L - 1:L - 1 + n] / temperature, -1)
        expected = logp_nV.gather(-1, torch.tensor(o.tokens)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(o.logps), expected, rtol=0, atol=1e-4)


def test_ids_past_the_tokenizer_are_never_drawn_and_leave_logp():
    """A padded vocabulary (real checkpoints: 151,936 rows for 151,665 tokens): the padded rows hold the largest
    logits here, yet are never drawn, and logp is log-softmax over the real ids only (worked out by hand)."""
    from models.generation import _sample

    logits_BV = torch.tensor([[0.0, 0.0, 5.0, 9.0, 9.0], [1.0, 0.0, 0.0, 9.0, 9.0]])  # ids 3, 4 name no token
    params = gen_args(0, temperature=1.0)["sampling"]
    draws = torch.stack([_sample(logits_BV, params, frozenset(), 3, torch.Generator().manual_seed(s))[0]
                         for s in range(2000)])  # ids 0 and 1 of row 0: p = 0.0067 each, all but surely drawn
    assert int(draws.max()) < 3 and set(draws[:, 0].tolist()) >= {0, 1, 2}  # every real id is reachable
    tok_B, logp_B = _sample(logits_BV, GREEDY, frozenset(), 3, None)
    assert tok_B.tolist() == [2, 0]  # greedy: the best REAL id
    # row 0: log(e^5 / (1 + 1 + e^5)); row 1: log(e / (e + 1 + 1))
    expected = torch.log(torch.tensor([torch.e**5 / (2 + torch.e**5), torch.e / (torch.e + 2)]))
    assert torch.allclose(logp_B, expected, atol=1e-6)



def test_draws_follow_the_distribution_and_skip_zero_probability_ids(monkeypatch):
    """The inverse-CDF draw: frequencies over 20,000 draws match the probabilities (each within 4 standard errors
    of a binomial count), a zero-probability id — inside the vocabulary or last — is never drawn, and a uniform that
    rounds up to the CDF's total still lands on the last id with positive probability."""
    import models.generation as G

    probs_V = torch.tensor([0.1, 0.0, 0.25, 0.05, 0.6, 0.0])
    probs_BV = probs_V.expand(20_000, -1).contiguous()
    tok_B = G._inverse_cdf(probs_BV, torch.Generator().manual_seed(0))
    counts_V = torch.bincount(tok_B, minlength=6).double()
    n = probs_BV.shape[0]
    sd_V = (n * probs_V.double() * (1 - probs_V.double())).sqrt()
    assert counts_V[1] == 0 and counts_V[5] == 0
    assert bool(((counts_V - n * probs_V.double()).abs() <= 4 * sd_V).all()), counts_V.tolist()
    # the worst uniform: the largest float below 1, whose product with the total can round up to it
    monkeypatch.setattr(G.torch, "rand", lambda *shape, **kw: torch.full(shape, 1 - 2**-24))
    assert G._inverse_cdf(probs_V[None], None).tolist() == [4]


def test_should_stop_ends_the_call_at_the_next_decoding_step(vlm, prompts):
    """A signal's flag read once before the prefill and once per decoding step: True at the 4th look means the
    call raises after drawing 2 tokens (looks: prefill, steps 0, 1, then step 2 stops), never finishing."""
    from models.generation import StopRequested

    looks = []

    def should_stop():
        looks.append(1)
        return len(looks) >= 4

    with pytest.raises(StopRequested, match="at decoding step 2"):
        generate(vlm.model, [request(prompts[0], vlm)], pad_id=vlm.family.pad_id, should_stop=should_stop,
                 **gen_args(max_new_tokens=N_NEW))
    assert len(looks) == 4
    out = generate(vlm.model, [request(prompts[0], vlm)], pad_id=vlm.family.pad_id, should_stop=lambda: False,
                   **gen_args(max_new_tokens=N_NEW, temperature=0.0))
    assert len(out[0].tokens) == N_NEW or out[0].stop == "stop"
