"""reward.clip_backend = "open_clip" (rewards/clip_openclip.py): a tiny random open_clip CLIP written to a local
folder, loaded back through `local-dir:` and used by "image_embedding".

Needs open_clip: runs under the venv of `bash scripts/install_openclip.sh` (.venv-openclip). Elsewhere the open_clip
tests are skipped with the reason printed by `pytest -rs`; the two tests of the set-up errors run everywhere.

Run: OMP_NUM_THREADS=1 .venv-openclip/bin/python -m pytest -q -rs tests/test_rewards_openclip.py
"""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from data.example import Example
from rewards import REWARDS, RewardContext
from rewards.scorer import build_scorer, load_clip

try:
    import open_clip
    NO_OPEN_CLIP = ""
except Exception as e:  # ImportError, or RuntimeError from an unpatched CUDA torchvision beside CPU torch
    NO_OPEN_CLIP = (f"open_clip does not import in {sys.executable} ({type(e).__name__}: {e}); build its venv with "
                    "`bash scripts/install_openclip.sh`")
needs_open_clip = pytest.mark.skipif(bool(NO_OPEN_CLIP), reason=NO_OPEN_CLIP)


def test_open_clip_backend_refuses_a_folder_without_its_config(tmp_path):
    with pytest.raises(ValueError, match="not an open_clip folder"):
        load_clip(tmp_path, backend="open_clip")
    with pytest.raises(ValueError, match="choose transformers or open_clip"):
        load_clip(tmp_path, backend="clip")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rewards.clip_openclip import build_tiny_open_clip

    return build_tiny_open_clip(tmp_path_factory.mktemp("openclip") / "tiny")


def _images():
    return [Image.new("RGB", (40, 30), "red"), Image.fromarray(np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3)),
            Image.new("L", (32, 32), 200)]  # a grey image: converted to RGB


@needs_open_clip
def test_tiny_open_clip_loads_from_its_folder_with_the_written_weights(tiny):
    from rewards.clip_openclip import OpenClipEmbedder, build_tiny_open_clip

    clip = load_clip(tiny, backend="open_clip")
    assert isinstance(clip, OpenClipEmbedder) and not clip.model.training
    texts = ["a red square", "what pattern is inside the bold box?", "a red square"]
    t = clip.embed_text(texts)
    assert t.shape == (3, 16) and np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert np.allclose(t[0], t[2], atol=1e-6) and not np.allclose(t[0], t[1], atol=1e-3)
    assert np.allclose(clip.embed_text(["a red square"])[0], t[0], atol=1e-5)  # batch-independent
    i = clip.embed_image(_images())
    assert i.shape == (3, 16) and np.allclose(np.linalg.norm(i, axis=1), 1.0, atol=1e-5)
    assert np.allclose(clip.embed_image([_images()[1]])[0], i[1], atol=1e-5)
    # The loaded weights are the written ones (not a fresh random init): the same seed's model, built in memory
    # and run directly through open_clip, gives the same text vectors.
    torch.manual_seed(0)
    config = json.loads((tiny / "open_clip_config.json").read_text())["model_cfg"]
    direct = open_clip.model.CLIP(**config).eval()
    with torch.no_grad():
        expected = direct.encode_text(open_clip.get_tokenizer(f"local-dir:{tiny}")(texts), normalize=True).numpy()
    assert np.allclose(t, expected, atol=1e-5)
    other = OpenClipEmbedder.load(build_tiny_open_clip(tiny.parent / "seed1", seed=1))
    assert not np.allclose(other.embed_text(texts), t, atol=1e-3)


@needs_open_clip
def test_image_embedding_reward_through_an_open_clip_scorer(tiny):
    fake_vlm = SimpleNamespace(tokenizer=lambda word, add_special_tokens: SimpleNamespace(input_ids=[ord(word[0])]))
    scorer = build_scorer(fake_vlm, {"image_embedding": 1.0}, kind="policy", clip_path=str(tiny),
                          clip_backend="open_clip")
    original, crop = _images()[1], _images()[0]
    ctx = RewardContext(images=[original, crop], image_sizes=[original.size], scorer=scorer)
    ex = Example(question="What colour is the square?", answers=["red"], images=[])
    value = REWARDS["image_embedding"]("<answer>red</answer>", ex, ctx)
    # by hand from the embeddings: cos(crop, question) - cos(original, question), clipped to [0, 1]
    q = scorer.embed_text([ex.question])[0]
    o, c = scorer.embed_image([original, crop])
    assert value == pytest.approx(float(np.clip(c @ q - o @ q, 0.0, 1.0)), abs=1e-6)
