"""The tiny offline VLMs (models/tiny.py, models/tiny_tokenizer.py): every arch loads with the stock Auto classes
and generates from a prompt with an image; builds are byte-deterministic by seed; the tokenizer keeps Qwen's
special-token layout and chat format; the build cache survives a half-written folder.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_models_tiny.py
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

import models.tiny as tiny
from models.tiny import ARCHS, build, tiny_model_dir
from models.tiny_tokenizer import PLAIN_ADDED_TOKENS, SPECIAL_TOKENS


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """Every arch built once (seed 0) into a temporary folder: {arch: path}."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build(arch, root / arch, seed=0) for arch in ARCHS}


@pytest.fixture(scope="module")
def tok(built):
    return AutoTokenizer.from_pretrained(built["qwen2_5_vl"])


def _sha256s(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _image_prompt(tok, image_processor, image: Image.Image):
    """Prompt ids as engine/rollout/trajectory.py builds them: chat template, then the single <|image_pad|> expanded to
    grid.prod() // merge² pads. Returns (input_ids [1, T], pixel_values, image_grid_thw, mm_token_type_ids)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the square?"}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = image_processor(images=[image], return_tensors="pt")
    grid = enc["image_grid_thw"]
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    n = int(grid.prod()) // image_processor.merge_size**2
    ids = []
    for t in tok(text, add_special_tokens=False).input_ids:
        ids += [pad] * n if t == pad else [t]
    ids_1T = torch.tensor([ids])
    return ids_1T, enc["pixel_values"], grid, (ids_1T == pad).to(torch.int32)


# ------------------------------------------------------------------------------------------------- every arch
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_auto_classes_load_and_generate_with_image(built, arch):
    path = built[arch]
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    assert model.config.model_type == arch
    ids, pixels, grid, mm = _image_prompt(tok, image_processor, Image.new("RGB", (112, 112), (200, 30, 30)))
    assert grid.tolist() == [[1, 8, 8]]  # 112 px: 8×8 patches at 14; qwen3 (patch 16) resizes to 128 → 8×8 too
    assert int(mm.sum()) == 16
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                             image_grid_thw=grid, mm_token_type_ids=mm, max_new_tokens=4, do_sample=False)
        # The image really reaches the LM: another image gives other next-token logits.
        _, other_pixels, _, _ = _image_prompt(tok, image_processor, Image.new("RGB", (112, 112), (20, 30, 230)))
        logits = [model(input_ids=ids, pixel_values=p, image_grid_thw=grid, mm_token_type_ids=mm).logits[0, -1]
                  for p in (pixels, other_pixels)]
    assert out.shape[0] == 1 and out.shape[1] > ids.shape[1]
    assert torch.equal(out[0, : ids.shape[1]], ids[0])
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_config_agrees_with_tokenizer(built, arch):
    path = built[arch]
    model = AutoModelForImageTextToText.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    cfg, text = model.config, model.config.text_config
    ids = tok.convert_tokens_to_ids
    assert text.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    assert cfg.image_token_id == ids("<|image_pad|>")
    assert cfg.video_token_id == ids("<|video_pad|>")
    assert cfg.vision_start_token_id == ids("<|vision_start|>")
    assert cfg.vision_end_token_id == ids("<|vision_end|>")
    assert sorted(model.generation_config.eos_token_id) == sorted([ids("<|im_end|>"), ids("<|endoftext|>")])
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2  # transformers never checks this
    # The merger's output width must be the LM's width (Qwen2-VL names it hidden_size, later ones out_hidden_size).
    vision = cfg.vision_config
    assert getattr(vision, "out_hidden_size", vision.hidden_size) == text.hidden_size


# ------------------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_same_seed_gives_byte_identical_files(built, tmp_path, arch):
    again = build(arch, tmp_path / "again", seed=0)
    first, second = _sha256s(built[arch]), _sha256s(again)
    assert set(first) >= {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"}
    assert first == second


def test_other_seed_gives_other_weights(built, tmp_path):
    other = build("qwen2_5_vl", tmp_path / "seed1", seed=1)
    assert _sha256s(other)["model.safetensors"] != _sha256s(built["qwen2_5_vl"])["model.safetensors"]


def test_unknown_arch_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown arch 'llava'"):
        build("llava", tmp_path)


# -------------------------------------------------------------------------------------------------- tokenizer
def test_special_tokens_in_qwen_order(tok):
    # Qwen2-VL: <|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, <|vision_start|> 151652, ... in
    # this relative order; the tiny vocabulary starts with them.
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)


def test_tool_call_tags_are_single_plain_ids(tok):
    start, end = tok.convert_tokens_to_ids(["<tool_call>", "</tool_call>"])
    text = "look<tool_call>[1, 2, 30, 40]</tool_call> done"
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids.count(start) == 1 and ids.count(end) == 1
    assert start not in tok.all_special_ids and end not in tok.all_special_ids
    ids_with_eos = ids + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert tok.decode(ids_with_eos, skip_special_tokens=True) == text  # tags kept, <|im_end|> dropped
    for t in PLAIN_ADDED_TOKENS:
        assert len(tok(t, add_special_tokens=False).input_ids) == 1, t


@pytest.mark.parametrize("text", [
    "plain ascii, with  double spaces and a trailing space ",
    " leading space\tand tab\r\nCRLF\n",
    "héllo wörld — naïve façade",
    "世界 こんにちは 안녕하세요 مرحبا שלום",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "e\u0301 combining, \u00a0nbsp, \u200bzero-width, \x00nul \x7fdel",
    "maths ∑∫√∞ ≤ ≥ and 12.5% of 3/4",
])
def test_any_text_round_trips(tok, text):
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text


def test_chat_template_renders_qwen_format(tok):
    messages = [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the square?"}]},
    ]
    expected = (  # written by hand from Qwen2-VL's chat template
        "<|im_start|>system\nYou are a careful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What color is the square?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == expected
    ids = tok(rendered, add_special_tokens=False).input_ids  # special tokens in the text become their ids
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2 and ids.count(6) == 1  # im_start/im_end/pad
    # No system message: Qwen's default one is inserted; no generation prompt: nothing after the last turn.
    plain = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=False)
    assert plain == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"


# ------------------------------------------------------------------------------------------------------ cache
def _mtimes(folder) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in [folder, *folder.iterdir()]}


def test_tiny_model_dir_builds_once_then_reuses(tmp_path, monkeypatch):
    path = tiny_model_dir("qwen2_vl", seed=0, cache_root=tmp_path)
    assert (path / "config.json").exists() and path.parent == tmp_path
    before = _mtimes(path)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("tiny_model_dir rebuilt a cached model")

    monkeypatch.setattr(tiny, "build", no_rebuild)
    assert tiny_model_dir("qwen2_vl", seed=0, cache_root=tmp_path) == path
    assert _mtimes(path) == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary build folder left behind


def test_tiny_model_dir_rebuilds_an_empty_cache_folder(tmp_path):
    path = tiny_model_dir("qwen2_vl", seed=0, cache_root=tmp_path)
    for f in path.iterdir():
        f.unlink()
    assert tiny_model_dir("qwen2_vl", seed=0, cache_root=tmp_path) == path
    AutoModelForImageTextToText.from_pretrained(path)


def test_tiny_model_dir_rebuilds_a_half_written_cache_folder(tmp_path):
    """A folder left with some files but no config.json (a crash, a partial copy) must be rebuilt, not returned.
    Fails today: the rename onto the non-empty folder raises, the fresh build is deleted as if another process
    had won the race, and the incomplete folder is returned."""
    path = tiny_model_dir("qwen2_vl", seed=0, cache_root=tmp_path)
    reference = _sha256s(path)
    (path / "config.json").unlink()
    assert tiny_model_dir("qwen2_vl", seed=0, cache_root=tmp_path) == path
    assert _sha256s(path) == reference
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], os.listdir(tmp_path)
