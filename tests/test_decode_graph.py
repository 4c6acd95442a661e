"""The fixed-shape decoding step (models/decode_graph.py) against the ordinary one, on the tiny Qwen2.5-VL (CPU).

On a GPU the step is captured as a CUDA graph (`decode="graph"`, tests/test_gpu.py checks graph == static there);
its eager twin `decode="static"` runs anywhere, so these tests pin what the graph computes:
- a left-padded batch, greedy: the same tokens as the dynamic loop, log-probs within 1e-5;
- sampling with expand=G and a seeded generator: the same draws (sampling stays outside the step);
- stop ids and per-request caps end rows as before, though fixed shapes keep finished rows decoding;
- the columns not yet written are hidden by the mask, not by their zeros: buffers poisoned with large values give
  the same outputs;
- a model whose layers can't take fixed shapes (sliding windows) decodes dynamically under any mode, and the modes
  are checked by name.
"""

from __future__ import annotations

import pytest
import torch

import models.decode_graph as DG
from models.generation import GenRequest, generate
from tests.engine_helpers import MIXED_PROMPTS, gen_args, load_tiny, make_prompt, request

N_NEW = 10


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


@pytest.fixture(scope="module")
def reqs(vlm):
    return [request(make_prompt(vlm, size, q, seed), vlm) for size, q, seed in MIXED_PROMPTS]


def _run(vlm, reqs, decode, *, seed=None, expand=1, **params):
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return generate(vlm.model, reqs, **gen_args(max_new_tokens=N_NEW, **params), pad_id=vlm.family.pad_id,
                    expand=expand, generator=g, decode=decode)


def _same(a, b, atol=1e-5):
    assert [o.tokens for o in a] == [o.tokens for o in b]
    assert [o.stop for o in a] == [o.stop for o in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(torch.tensor(x.logps), torch.tensor(y.logps), rtol=0, atol=atol)


def test_the_batch_is_left_padded(reqs):
    assert len({len(r.ids) for r in reqs}) == 3


def test_static_greedy_equals_dynamic(vlm, reqs):
    _same(_run(vlm, reqs, "static", temperature=0.0), _run(vlm, reqs, "dynamic", temperature=0.0))


def test_static_sampling_draws_the_same_tokens(vlm, reqs):
    a = _run(vlm, reqs, "static", seed=5, expand=3, temperature=1.0)
    b = _run(vlm, reqs, "dynamic", seed=5, expand=3, temperature=1.0)
    assert len(a) == 9 and len({tuple(o.tokens) for o in a}) > 3  # real, varied draws
    _same(a, b)


def test_stops_and_caps_end_rows_as_before(vlm, reqs):
    greedy = _run(vlm, reqs, "dynamic", temperature=0.0)
    k = next(i for i, o in enumerate(greedy) if o.tokens[2] not in o.tokens[:2])
    stop = frozenset({greedy[k].tokens[2]})
    capped = list(reqs)
    capped[(k + 1) % 3] = GenRequest(**{**reqs[(k + 1) % 3].__dict__, "max_new_tokens": 2})
    a = _run(vlm, capped, "static", temperature=0.0, stop_ids=stop)
    b = _run(vlm, capped, "dynamic", temperature=0.0, stop_ids=stop)
    assert a[k].stop == "stop" and len(a[k].tokens) == 3
    assert len(a[(k + 1) % 3].tokens) <= 2
    assert any(o.stop == "length" and len(o.tokens) == N_NEW for o in a), "one row must outlive the others"
    _same(a, b)


def test_unwritten_columns_are_masked_not_zero(vlm, reqs, monkeypatch):
    real_update = DG.StaticLayer.update

    def poisoned(self, key_states, value_states, *args, **kwargs):
        fresh = not self.is_initialized
        out = real_update(self, key_states, value_states, *args, **kwargs)
        if fresh:  # everything past the prompt's columns: large values the attention must never weigh
            self.k_buf[:, :, self.length:] = 1e4
            self.v_buf[:, :, self.length:] = 1e4
        return out

    monkeypatch.setattr(DG.StaticLayer, "update", poisoned)
    _same(_run(vlm, reqs, "static", temperature=0.0), _run(vlm, reqs, "dynamic", temperature=0.0))
    calls = {"n": 0}

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return poisoned(self, *args, **kwargs)

    monkeypatch.setattr(DG.StaticLayer, "update", counting)
    _run(vlm, reqs, "static", temperature=0.0)
    assert calls["n"] > 0, "the static cache was not used"


def test_modes_are_checked_and_unsupported_layers_decode_dynamically(vlm, reqs, monkeypatch):
    with pytest.raises(ValueError, match="decode 'fast'"):
        _run(vlm, reqs, "fast", temperature=0.0)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        _run(vlm, reqs, "graph", temperature=0.0)
    text = vlm.model.config.text_config
    monkeypatch.setattr(text, "layer_types", ["sliding_attention"] * text.num_hidden_layers)
    assert DG.static_cache(vlm.model, 64, "cpu") is None
    monkeypatch.undo()
    monkeypatch.setattr(text, "num_experts", 4, raising=False)
    assert DG.static_cache(vlm.model, 64, "cpu") is None


@pytest.mark.parametrize("groups", [1, 4])
def test_decode_attention_folds_query_groups_exactly(groups):
    """DECODE_GQA against attention written out: K and V repeated to every query head (transformers' repeat_kv
    order), scores, the additive mask, softmax, values; float64 so only the arithmetic's order differs."""
    from models.attention import decode_attention_forward

    torch.manual_seed(0)
    B, h, K, D = 3, 2, 11, 8
    H = h * groups
    q, k, v = torch.randn(B, H, 1, D).double(), torch.randn(B, h, K + 4, D).double(), torch.randn(B, h, K + 4, D)
    v = v.double()
    open_BK = torch.rand(B, K + 4) < 0.6
    open_BK[:, 0] = True  # every row sees at least one key
    mask = torch.zeros(B, 1, 1, K + 4, dtype=torch.float64).masked_fill(~open_BK[:, None, None, :], -1e300)
    out, _ = decode_attention_forward(None, q, k[:, :, :K], v[:, :, :K], mask, scaling=0.3)
    k_rep, v_rep = k[:, :, :K].repeat_interleave(groups, 1), v[:, :, :K].repeat_interleave(groups, 1)
    scores = (q @ k_rep.transpose(-1, -2)) * 0.3 + mask[..., :K]
    expected = (torch.softmax(scores, -1) @ v_rep).transpose(1, 2)  # [B, 1, H, D], as transformers wants it
    assert out.shape == (B, 1, H, D)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
