"""rewards/scorer.py on the tiny offline Qwen2.5-VL: prompt layout, P(yes) against an independent forward, batched ==
one by one, greedy answers against a hand-written argmax loop, attention share against an eager model computed by
hand, and the tiny CLIP embedder.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_rewards_model_scorer.py`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.load import load_vlm
from models.tiny import tiny_model_dir
from models.vision import mm_token_type_ids
from rewards.scorer import ClipEmbedder, ModelScorer, build_scorer, build_tiny_clip
from tests.engine_helpers import load_tiny, noise_image, plain_logits


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


@pytest.fixture(scope="module")
def images():
    # Different sizes give different token counts: 112x112 -> 16 placeholders, 56x84 -> 6, 84x56 -> 6.
    return [noise_image((112, 112), 1), noise_image((56, 84), 2), noise_image((84, 56), 3)]


def items(images):
    """Items of different lengths and image counts (0, 1, 2 images): what left padding must get right."""
    return ([[images[0]], [images[0], images[1]], [], [images[2]]],
            ["Is it red? Answer yes or no.", "Does this processed image help answer the question? Answer yes or no.",
             "Is the sky blue?", "yes or no"])


def test_prompt_layout(vlm, images):
    scorer = ModelScorer(vlm)
    ids, pixel_values, grid = scorer.prompt_ids([images[0], images[1]], "Q?")
    text = vlm.tokenizer.decode(ids)
    pads = "<|image_pad|>"
    # By hand: the tiny chat template's default system turn, two image blocks (16 and 6 pads), the question,
    # the assistant header; no prefill.
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                f"<|vision_start|>{pads * 16}<|vision_end|><|vision_start|>{pads * 6}<|vision_end|>Q?<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert text == expected
    assert grid.tolist() == [[1, 8, 8], [1, 6, 4]] and pixel_values.shape[0] == 64 + 24


def test_prob_yes_matches_independent_forward(vlm, images):
    scorer = ModelScorer(vlm)
    imgs, questions = items(images)
    probs = scorer.prob_yes(imgs, questions)
    yes_id, no_id = vlm.tokenizer("yes").input_ids[0], vlm.tokenizer("no").input_ids[0]
    assert (yes_id, no_id) == (scorer.yes_id, scorer.no_id) and yes_id != no_id
    for p, im, q in zip(probs, imgs, questions):
        ids, pv, grid = scorer.prompt_ids(im, q)
        with torch.no_grad():  # unpadded, the model's own mrope positions: none of the scorer's batching code
            last_V = plain_logits(vlm, ids, pv if len(grid) else None, grid if len(grid) else None)[-1]
        # softmax over two logits: P(yes) = 1 / (1 + exp(l_no - l_yes))
        expected = 1.0 / (1.0 + math.exp(float(last_V[no_id] - last_V[yes_id])))
        assert 0.0 <= p <= 1.0
        assert p == pytest.approx(expected, abs=1e-5)
    assert max(probs) - min(probs) > 1e-4  # the items really differ (a constant would pass the bounds check)


def test_prob_yes_batched_equals_one_by_one_and_keeps_mode(vlm, images):
    imgs, questions = items(images)
    vlm.model.train()
    try:
        batched = ModelScorer(vlm, batch_size=16).prob_yes(imgs, questions)
        assert vlm.model.training  # the scorer restores the training mode it found
        chunked = ModelScorer(vlm, batch_size=3).prob_yes(imgs, questions)
        single = [ModelScorer(vlm).prob_yes([im], [q])[0] for im, q in zip(imgs, questions)]
    finally:
        vlm.model.eval()
    assert batched == pytest.approx(single, abs=1e-5)
    assert chunked == pytest.approx(single, abs=1e-5)


def test_prob_yes_rejects_ragged_inputs(vlm, images):
    with pytest.raises(ValueError, match="one image list"):
        ModelScorer(vlm).prob_yes([[images[0]]], ["a", "b"])
    with pytest.raises(ValueError, match="same token"):
        ModelScorer(vlm, yes="no", no="no")


def greedy_by_hand(vlm, scorer, images, question, n):
    """Argmax loop over plain full forwards (no cache, no padding), vision ids banned, stop at eos."""
    ids, pv, grid = scorer.prompt_ids(images, question)
    ids, out = list(ids), []
    banned = sorted(vlm.family.vision_ids)
    for _ in range(n):
        with torch.no_grad():
            logits_V = plain_logits(vlm, ids, pv if len(grid) else None, grid if len(grid) else None)[-1]
        logits_V[banned] = float("-inf")
        token = int(logits_V.argmax())
        out.append(token)
        ids.append(token)
        if token in vlm.family.eos_ids:
            break
    return vlm.tokenizer.decode(out, skip_special_tokens=True)


def test_answer_is_greedy_and_batch_independent(vlm, images):
    scorer = ModelScorer(vlm, max_new_tokens=5)
    imgs, questions = [[images[0]], [], [images[1], images[2]]], ["What color?", "Say hi", "Which is larger?"]
    batched = scorer.answer(imgs, questions)
    assert batched == [greedy_by_hand(vlm, scorer, im, q, 5) for im, q in zip(imgs, questions)]
    assert scorer.answer(imgs, questions, max_new_tokens=2) == [
        greedy_by_hand(vlm, scorer, im, q, 2) for im, q in zip(imgs, questions)]


def share_by_hand(eager_vlm, scorer, images, question, answer, first):
    """Attention mass from the answer tokens to images[first:] over that to all images, from a plain eager
    forward of one unpadded sequence, summed over layers, heads and answer queries with explicit index lists."""
    ids, pv, grid = scorer.prompt_ids(images, question)
    answer_ids = eager_vlm.tokenizer(answer, add_special_tokens=False).input_ids
    ids = ids + answer_ids
    fam = eager_vlm.family
    image_pos, processed_pos, k = [], [], -1
    for t, tok in enumerate(ids):
        k += tok == fam.vision_start_id
        if tok == fam.image_token_id:
            image_pos.append(t)
            if k >= first:
                processed_pos.append(t)
    queries = list(range(len(ids) - len(answer_ids), len(ids)))
    ids_1T = torch.tensor([ids])
    with torch.no_grad():
        out = eager_vlm.model(input_ids=ids_1T, pixel_values=pv, image_grid_thw=grid, use_cache=False,
                              mm_token_type_ids=mm_token_type_ids(ids_1T, fam), output_attentions=True)
    assert len(out.attentions) == eager_vlm.model.config.text_config.num_hidden_layers
    to_processed = sum(float(a[0][:, queries][:, :, processed_pos].sum()) for a in out.attentions)
    to_images = sum(float(a[0][:, queries][:, :, image_pos].sum()) for a in out.attentions)
    return to_processed / to_images


def test_attention_share_matches_eager_forward_by_hand(vlm, images):
    scorer = ModelScorer(vlm)
    eager = load_vlm(tiny_model_dir("qwen2_5_vl"), attn_implementation="eager")
    eager.model.eval()
    imgs = [[images[0], images[1]], [images[2], images[1], images[0]], [images[0]]]
    questions, answers = ["What color?", "Which pattern is inside the bold box?", "Q"], ["red", "dots and stripes", "x"]
    before = vlm.model.config._attn_implementation  # sdpa (on a CPU: models.attention's sdpa_gqa)
    shares = scorer.attention_share(imgs, questions, answers, [1, 1, 1])
    assert vlm.model.config._attn_implementation == before  # switched back after the call
    for s, im, q, a in zip(shares[:2], imgs, questions, answers):
        assert 0.0 < s < 1.0
        assert s == pytest.approx(share_by_hand(eager, scorer, im, q, a, 1), abs=1e-5)
    assert shares[2] == 0.0  # no processed image
    # Every image processed: all image mass is processed mass (exactly 1); an empty answer scores 0.
    assert scorer.attention_share([imgs[0], imgs[0]], ["Q", "Q"], ["red", "  "], [0, 1]) == [pytest.approx(1.0), 0.0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return ClipEmbedder.load(build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip"))


def test_tiny_clip_embeddings(clip, images):
    texts = ["a red square", "what pattern is inside the bold box?", "a red square"]
    t = clip.embed_text(texts)
    assert t.shape == (3, 16) and np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert np.allclose(t[0], t[2], atol=1e-6) and not np.allclose(t[0], t[1], atol=1e-3)
    # Padding a short text next to a long one must not change it: pooling reads the first eos, not the last token.
    assert np.allclose(clip.embed_text(["a red square"])[0], t[0], atol=1e-5)
    i = clip.embed_image(images)
    assert i.shape == (3, 16) and np.allclose(np.linalg.norm(i, axis=1), 1.0, atol=1e-5)
    assert np.allclose(clip.embed_image([images[1]])[0], i[1], atol=1e-5)


def test_scorer_clip_methods(vlm, clip, images):
    with pytest.raises(ValueError, match="no CLIP model"):
        ModelScorer(vlm).embed_text(["x"])
    scorer = ModelScorer(vlm, clip=clip)
    assert np.allclose(scorer.embed_image([images[0]]), clip.embed_image([images[0]]))


def test_build_scorer_checks_the_reward_mix(vlm, tmp_path):
    clip_dir = build_tiny_clip(tmp_path / "clip")
    tiny = str(tiny_model_dir("qwen2_5_vl"))
    assert build_scorer(vlm, {"accuracy": 1.0}, kind=None) is None
    scorer = build_scorer(vlm, {"image_self": 0.2, "blind": 1.0}, kind="policy")
    assert isinstance(scorer, ModelScorer) and scorer.vlm is vlm and scorer.teacher is None and scorer.clip is None
    scorer = build_scorer(vlm, {"image_teacher": 1.0, "image_embedding": 1.0}, kind="policy", teacher_path=tiny,
                          clip_path=str(clip_dir))
    assert scorer.teacher.vlm is not vlm and not any(p.requires_grad for p in scorer.teacher.vlm.model.parameters())
    assert isinstance(scorer.clip, ClipEmbedder)
    bad = [  # (weights, options, what the error says)
        ({"image_self": 1.0}, dict(kind=None), "need a model scorer"),
        ({"blind": 1.0}, dict(kind=None), "need a model scorer"),
        ({"accuracy": 1.0}, dict(kind="policy"), "no weighted reward uses it"),
        ({"image_teacher": 1.0}, dict(kind="policy"), "need a teacher model"),
        ({"image_embedding": 1.0}, dict(kind="policy"), "need a clip model"),
        ({"image_self": 1.0}, dict(kind="policy", clip_path=str(clip_dir)), "no weighted reward uses the clip"),
        ({"image_self": 1.0}, dict(kind=None, clip_path=str(clip_dir)), "reward.scorer is none"),
        ({"image_self": 1.0}, dict(kind="teacher"), "choose none or policy"),
    ]
    for weights, options, message in bad:
        with pytest.raises(ValueError, match=message):
            build_scorer(vlm, weights, **options)
