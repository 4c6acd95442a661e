"""Released checkpoints' shapes without a download (models/shapes.py, `models.tiny --shape`): the configs have the
real dimensions (parameter counts equal the model cards' and, for Qwen2.5-VL-3B, a count worked out by hand), the
image processor takes real image sizes, and the padded vocabulary's extra ids are never sampled.

Nothing here builds a real-size model in memory: counts come from a model on the meta device.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_models_shapes.py
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from models.generation import generate
from models.load import init_vlm
from models.shapes import SHAPES
from models.tiny import build, main, model_config
from models.tiny_tokenizer import build_tokenizer
from models.vision import encode_images, num_image_tokens
from tests.engine_helpers import gen_args, make_prompt, request

ALL = [(arch, shape) for arch, shapes in SHAPES.items() for shape in shapes]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(0)


def _meta_model(config):
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


@pytest.mark.parametrize("arch,shape", ALL)
def test_shape_has_the_model_cards_parameter_count(tokenizer, arch, shape):
    real = SHAPES[arch][shape]
    config = model_config(arch, tokenizer, shape)
    model = _meta_model(config)
    n = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    assert n / 1e9 == pytest.approx(real.published_params, abs=0.006), n
    text = config.text_config
    assert model.get_input_embeddings().weight.shape == (real.vocab_size, real.text["hidden_size"])
    assert real.vocab_size > len(tokenizer)  # padded rows, as in the released checkpoints
    assert text.num_hidden_layers == real.text["num_hidden_layers"]
    if hasattr(text, "layer_types"):  # transformers derives it: one entry per layer, all full attention
        assert text.layer_types == ["full_attention"] * text.num_hidden_layers
    head_dim = real.text.get("head_dim", text.hidden_size // text.num_attention_heads)
    assert sum(text.rope_parameters["mrope_section"]) * 2 == head_dim  # nothing in transformers checks it


def test_qwen2_5_vl_3b_count_worked_out_by_hand(tokenizer):
    """Qwen2.5-VL-3B from its config.json numbers alone: 3,754,622,976 parameters."""
    H, I, L, heads, kv, V = 2048, 11008, 36, 16, 2, 151936
    kv_dim = H // heads * kv
    attention = (H * H + H) + 2 * (H * kv_dim + kv_dim) + H * H  # q, k, v with bias; o without
    layer = attention + 3 * H * I + 2 * H  # SwiGLU MLP without bias; two RMSNorms
    text = V * H + L * layer + H  # embedding (tied to the LM head) and the final norm
    h, i, d, out = 1280, 3420, 32, 2048
    block = (h * 3 * h + 3 * h) + (h * h + h) + 2 * (h * i + i) + (i * h + h) + 2 * h  # qkv, proj, MLP, 2 norms
    merged = 4 * h  # 2 x 2 patches merged
    vision = 3 * 2 * 14 * 14 * h + d * block + h + (merged * merged + merged) + (merged * out + out)
    model = _meta_model(model_config("qwen2_5_vl", tokenizer, "3b"))
    assert text + vision == 3_754_622_976
    assert sum(p.numel() for p in model.parameters()) == text + vision
    assert sum(p.numel() for k, p in model.named_parameters() if "visual" in k) == vision


def test_cli_writes_a_real_shape_folder_that_takes_448_px_images(tmp_path, capsys):
    assert main(["--arch", "qwen2_5_vl", "--shape", "3b", "--no-weights", "--out", str(tmp_path / "m")]) == 0
    assert "built 3b qwen2_5_vl" in capsys.readouterr().out
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 2048 and config["vision_config"]["depth"] == 32
    assert not list((tmp_path / "m").glob("*.safetensors"))
    from models.load import load_image_processor
    processor = load_image_processor(tmp_path / "m")
    _, grid = encode_images(processor, [Image.new("RGB", (448, 448)), Image.new("RGB", (1344, 896))])
    assert grid.tolist() == [[1, 32, 32], [1, 64, 96]]  # not resized down: real image sizes
    with pytest.raises(SystemExit):  # an unknown shape is a usage error naming the known ones
        main(["--arch", "qwen2_5_vl", "--shape", "72b", "--out", str(tmp_path / "x")])


def test_ids_past_the_tokenizer_are_never_sampled(tmp_path):
    """A tiny model with 4,096 embedding rows for a ~1,000-token tokenizer: random weights put most of the mass on
    the padded rows, and the rollout's sampler still draws only real tokens."""
    path = build("qwen2_5_vl", tmp_path / "padded", seed=0, weights=False)
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["vocab_size"] = 4096
    (path / "config.json").write_text(json.dumps(config))
    vlm = init_vlm(path, dtype="float32", device="cpu")
    n_tokens = vlm.family.num_token_ids
    assert n_tokens == len(vlm.tokenizer) < 4096 // 3
    prompt = make_prompt(vlm, (56, 56), "What colour?", 0)
    assert num_image_tokens(prompt.grid_thw[0], vlm.family) == 4
    for mask, check in ((n_tokens, lambda t: max(t) < n_tokens), (0, lambda t: max(t) >= n_tokens)):
        outs = generate(vlm.model, [request(prompt, vlm)], **gen_args(16, temperature=1.0), num_token_ids=mask,
                        pad_id=vlm.family.pad_id, expand=4, generator=torch.Generator().manual_seed(0))
        assert check([t for o in outs for t in o.tokens])  # without the mask, padded ids do get drawn
