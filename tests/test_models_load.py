"""models.load.load_vlm (family facts, clear errors) and models.vision (image token counts, resized sizes, mrope
positions), on tiny models built into a temporary folder.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_models_load.py
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from models.load import load_vlm
from models.tiny import ARCHS, build
from models.vision import encode_images, expand_image_pads, image_block, mm_token_type_ids, num_image_tokens, resized_size, rope_positions

# arch -> (box frame, patch size); DESIGN.md "Box frames" and the HF configs of the real checkpoints.
FACTS = {
    "qwen2_vl": ("norm1000", 14),
    "qwen2_5_vl": ("resized", 14),
    "qwen3_vl": ("norm1000", 16),
    "qwen3_vl_moe": ("norm1000", 16),
}


@pytest.fixture(scope="module")
def vlms(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: load_vlm(build(arch, root / arch, seed=0)) for arch in ARCHS}


def test_facts_cover_every_arch():
    assert set(FACTS) == set(ARCHS)


# ---------------------------------------------------------------------------------------------------- load_vlm
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_family_facts(vlms, arch):
    vlm = vlms[arch]
    fam, tok = vlm.family, vlm.tokenizer
    frame, patch = FACTS[arch]
    assert fam.model_type == arch
    assert fam.box_frame == frame
    assert (fam.patch_size, fam.merge_size, fam.temporal_patch_size) == (patch, 2, 2)
    assert fam.pixel_factor == 2 * patch
    ids = tok.convert_tokens_to_ids
    assert (fam.image_token_id, fam.video_token_id) == (ids("<|image_pad|>"), ids("<|video_pad|>"))
    assert (fam.vision_start_id, fam.vision_end_id) == (ids("<|vision_start|>"), ids("<|vision_end|>"))
    assert fam.eos_ids == (ids("<|im_end|>"), ids("<|endoftext|>")) == (2, 0)
    assert fam.pad_id == ids("<|endoftext|>")
    assert (fam.tool_call_start_id, fam.tool_call_end_id) == (ids("<tool_call>"), ids("</tool_call>"))
    assert fam.vision_ids == {3, 4, 6, 7}
    assert next(vlm.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_family_turn_markers_are_the_chat_templates(vlms, arch):
    """What the engine writes to close or open a turn itself (SFT targets, multi-turn tool results) is exactly
    what the family's chat template writes, and the turn end is one token the rollout stops on."""
    fam, tok = vlms[arch].family, vlms[arch].tokenizer
    msgs = [{"role": "user", "content": "hi"}]
    closed = tok.apply_chat_template(msgs, tokenize=False)
    opened = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert closed.endswith(fam.turn_end + "\n") and f"{fam.turn('user')}hi" in closed
    assert opened == closed + fam.turn("assistant")
    assert tok(fam.turn_end, add_special_tokens=False).input_ids == [fam.eos_ids[0]]


def test_box_frame_override(vlms):
    path = vlms["qwen2_5_vl"].path
    assert load_vlm(path, box_frame="pixels").family.box_frame == "pixels"
    assert load_vlm(vlms["qwen2_vl"].path, box_frame="resized").family.box_frame == "resized"


def test_unknown_box_frame_is_a_value_error(vlms):
    """`--model.box_frame bogus` is refused by the config, but load_vlm(box_frame="bogus") is accepted and only
    fails at the first box conversion: a grounding reward then scores 0 (counted as an error), a tool call raises
    mid-rollout. Fails today."""
    with pytest.raises(ValueError, match="bogus"):
        load_vlm(vlms["qwen2_5_vl"].path, box_frame="bogus")


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_vlm(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ValueError, match="no config.json"):
        load_vlm(tmp_path)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ValueError, match="'llava' is not supported") as err:
        load_vlm(tmp_path)
    assert "qwen2_5_vl" in str(err.value)  # names what is supported


def test_unknown_dtype(vlms):
    with pytest.raises(ValueError, match="float64"):
        load_vlm(vlms["qwen2_5_vl"].path, dtype="float64")


# ------------------------------------------------------------------------------------------------------ vision
# Hand-worked with Qwen's smart_resize (round each side to a multiple of patch·merge, then shrink by
# sqrt(h·w / max_pixels) and floor when over max_pixels = MAX_SIDE²):
#   patch 14, 112×112: 112 = 4·28 → grid [1, 8, 8], 8·8/2² = 16 tokens, resized 112×112.
#   patch 14, 200×100 (w×h): rounds to 196×112 = 21952 px > 12544; β = sqrt(20000/12544) = 1.263;
#     h = floor(100/β/28)·28 = 56, w = floor(200/β/28)·28 = 140 → grid [1, 4, 10], 10 tokens, resized 140×56.
#   patch 16, 112×112: round(112/32) = 4 → 128×128 (≤ 128² allowed) → grid [1, 8, 8], 16 tokens.
@pytest.mark.parametrize("arch,size,grid,tokens,resized", [
    ("qwen2_5_vl", (112, 112), [1, 8, 8], 16, (112, 112)),
    ("qwen2_5_vl", (200, 100), [1, 4, 10], 10, (140, 56)),
    ("qwen3_vl", (112, 112), [1, 8, 8], 16, (128, 128)),
])
def test_image_geometry(vlms, arch, size, grid, tokens, resized):
    vlm = vlms[arch]
    pixels, grid_thw = encode_images(vlm.image_processor, [Image.new("RGB", size, (10, 200, 30))])
    assert grid_thw.tolist() == [grid] and grid_thw.dtype == torch.long
    assert pixels.shape[0] == grid[0] * grid[1] * grid[2]  # one row per patch
    assert num_image_tokens(grid_thw[0], vlm.family) == tokens
    assert image_block(grid_thw[0], vlm.family) == [3] + [6] * tokens + [4]
    assert resized_size(grid_thw[0], vlm.family) == resized


def _prompt(vlm, image):
    pixels, grid = encode_images(vlm.image_processor, [image])
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"},
                                             {"type": "text", "text": "what color?"}]}]
    text = vlm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return expand_image_pads(vlm.tokenizer(text, add_special_tokens=False).input_ids, grid, vlm.family), pixels, grid


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_rope_positions_match_the_model(vlms, arch):
    vlm = vlms[arch]
    ids, pixels, grid = _prompt(vlm, Image.new("RGB", (112, 112), (9, 99, 199)))
    pos_3T = rope_positions(vlm.model, ids, grid, vlm.family)
    # By hand: text counts 0..k-1; the 4×4 merged image at k has t = k, h = k + row, w = k + col; the text after
    # it resumes at k + 4 (max + 1).
    k, T = ids.index(vlm.family.image_token_id), len(ids)
    rows, cols = torch.arange(4).repeat_interleave(4), torch.arange(4).repeat(4)
    expected = torch.cat([torch.arange(k).expand(3, -1),
                          torch.stack([torch.full((16,), k), k + rows, k + cols]),
                          (k + 4 + torch.arange(T - k - 16)).expand(3, -1)], dim=1)
    assert torch.equal(pos_3T, expected)
    # The model's own positions (computed inside forward from mm_token_type_ids) give the same logits exactly;
    # plain 1-D positions do not, so this comparison can fail.
    ids_1T = torch.tensor([ids])
    common = dict(input_ids=ids_1T, pixel_values=pixels, image_grid_thw=grid,
                  mm_token_type_ids=mm_token_type_ids(ids_1T, vlm.family))
    with torch.no_grad():
        own = vlm.model(**common).logits
        ours = vlm.model(**common, position_ids=pos_3T[:, None]).logits
        flat = vlm.model(**common, position_ids=torch.arange(T).expand(3, 1, -1)).logits
    assert torch.equal(own, ours)
    assert not torch.allclose(own, flat, atol=1e-4)


def test_rope_positions_without_image(vlms):
    vlm = vlms["qwen2_5_vl"]
    pos = rope_positions(vlm.model, [1, 72, 73, 2], None, vlm.family)
    assert torch.equal(pos, torch.arange(4).expand(3, -1))


def test_mm_token_type_ids_marks_only_image_pads(vlms):
    fam = vlms["qwen2_5_vl"].family
    ids = torch.tensor([[1, 3, 6, 6, 4, 7, 5, 2]])
    assert mm_token_type_ids(ids, fam).tolist() == [[0, 0, 1, 1, 0, 0, 0, 0]]
