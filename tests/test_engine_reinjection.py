"""Crop re-injection (engine.rollout.tool_calls) builds exactly what the processor would build for the whole text,
and a bad tool call never ends a rollout.

- A prompt with one image + sampled `... <tool_call>[x1, y1, x2, y2]</tool_call>` (ids set by hand), then
  the inline CallProtocol.on_stop: input_ids, pixel_values, image_grid_thw and mrope positions equal the ones built
  independently (Qwen2-VL image processor on [original, crop], tokenizer on the full chat text with two image
  blocks expanded to their counts, get_rope_index); the crop is the original cut at box * original / resized
  (Qwen2.5-VL boxes are in resized pixels); the loss mask is 1 exactly on the hand-set sampled tokens.
- Scripted garbage (malformed box, box outside the image, not JSON, unknown tool) and valid calls (zoom, crop,
  multiturn brightness): each finishes without raising, errors come back as text in the ids and as
  ToolCallRecord(ok=False, error=...), valid calls inject one image row, injected tokens all carry mask 0;
  finish() + pack + row_logps then run on all of them.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_engine_reinjection.py
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from engine.forward.packing import pack, row_logps
from engine.config.settings import RolloutConfig
from engine.rollout.rollout import finish
from engine.rollout.tool_calls import make_protocol
from engine.rollout.trajectory import Trajectory
from tests.engine_helpers import SYSTEM, encode, load_tiny, make_prompt

# A 100x80 image is resized to 112x84 (round(100/28)=4, round(80/28)=3 patches of 28): grid [1, 6, 8].
SIZE, RESIZED = (100, 80), (112, 84)
# Box in the RESIZED frame; x * 100/112 and y * 80/84 give the ORIGINAL-pixel box [25, 20, 75, 60] (50x40 crop,
# short side 40 within ToolLimits' 28..448, so the crop tool does not resize it).
BOX_RESIZED, BOX_PIXELS = [28, 21, 84, 63], (25, 20, 75, 60)
CROP_CALL = "<tool_call>[28, 21, 84, 63]</tool_call>"
QUESTION = "What is in the box?"
LIMITS = RolloutConfig(max_new_tokens=64, max_total_tokens=4096, max_tool_calls=2, max_images=4)
PROCESSOR_ATOL = 0.02  # fast vs PIL: measured 0.015, one 8-bit level of a normalised pixel (1 / (255 x std 0.27))


@pytest.fixture(scope="module")
def vlm():
    return load_tiny()


@pytest.fixture(scope="module")
def prompt(vlm):
    p = make_prompt(vlm, SIZE, QUESTION, 0)
    assert p.grid_thw.tolist() == [[1, 6, 8]]
    return p


def _stopped(prompt, text: str, vlm) -> tuple[Trajectory, list[int]]:
    """A trajectory whose sampler wrote `text` (ids set by hand, as if sampled), stopped on its closing tag."""
    traj = Trajectory.start(prompt, 0)
    sampled = encode(vlm, text)
    traj.append_sampled(sampled, [-1.0] * len(sampled))
    traj.stop = "tool"
    return traj, sampled


def _n_tokens(grid_row) -> int:
    return int(grid_row.prod()) // 4  # merge 2 x 2


def test_crop_reinjection_matches_processor_on_full_text(vlm, prompt):
    protocol = make_protocol("inline", vlm)
    text = "Let me look closer. " + CROP_CALL
    traj, sampled = _stopped(prompt, text, vlm)
    assert sampled[-1] == vlm.family.tool_call_end_id and sampled[-1] in protocol.stop_ids
    assert protocol.on_stop(traj, vlm, LIMITS) is True
    finish(traj, vlm)

    # the crop is the ORIGINAL image cut at the box converted from resized pixels
    original = prompt.images[0]
    crop = original.crop(BOX_PIXELS)
    assert len(traj.images) == 2 and traj.images[1].size == (50, 40)
    assert traj.images[1].tobytes() == crop.tobytes()
    assert len(traj.tool_calls) == 1
    rec = traj.tool_calls[0]
    assert (rec.name, rec.ok, rec.error) == ("crop", True, None)
    assert [float(v) for v in rec.args["box"]] == [float(v) for v in BOX_RESIZED]  # recorded in the model's frame

    # independent build: a fresh image processor OF THE KIND THE ENGINE USES (the fast torchvision one where
    # torchvision imports, as on the GPU machine; the PIL one otherwise) on both images, the tokenizer on the full text
    processor = type(vlm.image_processor).from_pretrained(vlm.path)
    enc = processor(images=[original, crop], return_tensors="pt")
    grid = enc["image_grid_thw"]
    # and the PIL processor, which the two implementations must agree with to within rounding (both resize the
    # same way; the fast one computes in another order, so pixel_values differ in the last bits: docs/PLATFORM.md,
    # "Installing")
    pil = Qwen2VLImageProcessorPil.from_pretrained(vlm.path)(images=[original, crop], return_tensors="pt")
    assert torch.equal(pil["image_grid_thw"], grid)
    assert torch.allclose(pil["pixel_values"], enc["pixel_values"], atol=PROCESSOR_ATOL, rtol=0)
    assert grid.shape == (2, 3)
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    chat = vlm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = chat + text + "<|vision_start|><|image_pad|><|vision_end|>"
    assert full.count("<|image_pad|>") == 2
    head, middle, tail = full.split("<|image_pad|>")
    full = head + "<|image_pad|>" * _n_tokens(grid[0]) + middle + "<|image_pad|>" * _n_tokens(grid[1]) + tail
    ids = vlm.tokenizer(full, add_special_tokens=False).input_ids

    assert traj.ids == ids
    assert torch.equal(traj.grid_thw, grid.long())
    assert torch.equal(traj.pixel_values, enc["pixel_values"])
    ids_1T = torch.tensor([ids])
    image_pad = vlm.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    pos_31T, _ = vlm.model.model.get_rope_index(ids_1T, mm_token_type_ids=(ids_1T == image_pad).int(),
                                                image_grid_thw=grid)
    assert torch.equal(traj.positions, pos_31T[:, 0])

    # loss mask: 1 exactly on the hand-set sampled tokens; prompt and the injected block are 0
    L = len(prompt.ids)
    block = [vlm.family.vision_start_id] + [image_pad] * _n_tokens(grid[1]) + [vlm.family.vision_end_id]
    assert traj.ids[L:] == sampled + block
    assert traj.mask == [0] * L + [1] * len(sampled) + [0] * len(block)
    assert traj.sampler_logp == [0.0] * L + [-1.0] * len(sampled) + [0.0] * len(block)

    # mrope layout of the crop block, by hand: the block's first pad sits at text position s; temporal = s,
    # height = s + row, width = s + column over the (h/2) x (w/2) merged grid; the next token (none here) would be
    # at s + max(h, w)/2. The text before it runs 1-D: position of <|vision_start|> = previous max + 1.
    s0 = L + len(sampled)  # index of <|vision_start|>
    s = int(traj.positions[:, :s0].max()) + 2
    assert traj.positions[:, s0].tolist() == [s - 1] * 3
    gh, gw = int(grid[1, 1]) // 2, int(grid[1, 2]) // 2
    rows = torch.arange(gh).repeat_interleave(gw)
    cols = torch.arange(gw).repeat(gh)
    pads = traj.positions[:, s0 + 1:s0 + 1 + gh * gw]
    assert pads[0].tolist() == [s] * (gh * gw)
    assert pads[1].tolist() == (s + rows).tolist()
    assert pads[2].tolist() == (s + cols).tolist()
    assert traj.positions[:, -1].tolist() == [s + max(gh, gw)] * 3  # <|vision_end|>

    # and the model runs on it: a packed forward gives a finite log-prob per predicted sampled token
    (row,) = pack([traj], 4096)
    with torch.no_grad():
        logp_K, _ = row_logps(vlm.model, row)
    assert logp_K.shape == (len(sampled),) and torch.isfinite(logp_K).all()


# ------------------------------------------------------------------------------------------- scripted garbage

# (protocol, sampled text, expected ok, a piece of the error text the model must see (None when ok), image?)
CASES = [
    ("inline", "Look. <tool_call>[1, 2, 3]</tool_call>", False, "a box needs 4 numbers", False),
    ("inline", 'Look. <tool_call>{"name": "crop", "arguments": {"box": [0,0,99999,5]}}</tool_call>', False,
     "is outside the 112x84 image", False),  # the error speaks the model's (resized) frame
    ("inline", "Look. <tool_call>not json</tool_call>", False, "could not parse tool call", False),
    ("inline", 'Look. <tool_call>{"name": "nope"}</tool_call>', False, 'unknown tool "nope"', False),
    ("inline", "Look. </tool_call>", False, "no tool call found", False),
    ("inline", 'Look. <tool_call>{"name": "zoom", "arguments": {"factor": 2}}</tool_call>', True, None, True),
    ("multiturn", '<tool>{"name": "adjust_brightness", "args": {"factor": 1.5}}</tool>', True, None, True),
    ("multiturn", "<tool>not json</tool>", False, "could not parse tool call", False),
    ("multiturn", '<tool>{"name": "rotate", "args": {"angle": 9999}}</tool>', False, "rotate: angle", False),
]


@pytest.fixture(scope="module")
def scripted(vlm, prompt):
    """Every CASES trajectory after on_stop (without raising) and finish()."""
    out = []
    for name, text, *_ in CASES:
        protocol = make_protocol(name, vlm)
        traj, sampled = _stopped(prompt, text, vlm)
        assert sampled[-1] in protocol.stop_ids
        cont = protocol.on_stop(traj, vlm, LIMITS)
        finish(traj, vlm)
        out.append((traj, sampled, cont))
    return out


@pytest.mark.parametrize("k", range(len(CASES)))
def test_scripted_call(vlm, prompt, scripted, k):
    name, text, ok, error_piece, makes_image = CASES[k]
    traj, sampled, cont = scripted[k]
    L = len(prompt.ids)
    assert cont is True  # a bad call never ends the rollout: the model reads the error and goes on
    assert len(traj.tool_calls) == 1
    rec = traj.tool_calls[0]
    assert rec.ok is ok
    injected = traj.ids[L + len(sampled):]
    assert traj.ids[L:L + len(sampled)] == sampled
    assert traj.mask == [0] * L + [1] * len(sampled) + [0] * len(injected)
    assert injected, "something must come back to the model"
    shown = vlm.tokenizer.decode(injected)
    if ok:
        assert rec.error is None
        assert "error" not in shown.lower()
    else:
        assert error_piece in rec.error
        assert f"Tool error: {rec.error}" in shown
    assert len(traj.grid_thw) == 1 + makes_image
    assert len(traj.images) == 1 + makes_image
    assert shown.count("<|vision_start|>") == makes_image
    if makes_image:
        n = _n_tokens(traj.grid_thw[1])
        assert shown.count("<|image_pad|>") == n
        assert traj.pixel_values.shape[0] == int(traj.grid_thw.prod(-1).sum())
    if name == "multiturn":  # the result comes back as the next user message, then a new assistant turn
        assert shown.startswith("<|im_end|>\n<|im_start|>user\n")
        assert shown.endswith("<|im_end|>\n<|im_start|>assistant\n")
    else:
        assert "<|im_start|>" not in shown
    assert traj.positions.shape == (3, len(traj.ids))


def test_zoom_and_brightness_images(scripted, prompt):
    """The valid calls ran on the original image: zoom keeps its size, brightness 1.5 brightens it."""
    original = prompt.images[0]
    zoom_traj = scripted[5][0]
    assert zoom_traj.images[1].size == original.size
    bright = scripted[6][0].images[1]
    assert bright.size == original.size
    mean = lambda im: sum(im.convert("L").getdata()) / (im.size[0] * im.size[1])  # noqa: E731
    assert mean(bright) > 1.2 * mean(original)


def test_scripted_trajectories_pack_and_score(vlm, scripted):
    trajs = [t for t, _, _ in scripted]
    rows = pack(trajs, 300)
    assert len(rows) > 1
    seen = []
    for row in rows:
        with torch.no_grad():
            logp_K, _ = row_logps(vlm.model, row)
        assert torch.isfinite(logp_K).all()
        for i in row.members:
            assert int((row.seq_K == i).sum()) == trajs[i].num_sampled  # every sampled token is predicted
            seen.append(i)
    assert sorted(seen) == list(range(len(trajs)))


def test_call_limit_stops_the_trajectory(vlm, prompt):
    protocol = make_protocol("inline", vlm)
    traj, _ = _stopped(prompt, CROP_CALL, vlm)
    one_call = RolloutConfig(max_new_tokens=64, max_tool_calls=1)
    assert protocol.on_stop(traj, vlm, one_call) is True
    n = len(traj.ids)
    again = encode(vlm, " again " + CROP_CALL)
    traj.append_sampled(again, [0.0] * len(again))
    assert protocol.on_stop(traj, vlm, one_call) is False  # over the limit: nothing runs, nothing is injected
    assert len(traj.ids) == n + len(again) and len(traj.tool_calls) == 1


@pytest.mark.parametrize("name, call, stray", [
    ("inline", CROP_CALL, " I see it.</tool_call>"),
    ("multiturn", '<tool>{"name": "zoom", "args": {"factor": 2}}</tool>', "I see it.</tool>"),
], ids=["inline", "multiturn"])
def test_close_tag_without_new_call_does_not_rerun_the_previous_one(vlm, prompt, name, call, stray):
    """After a tool image was injected, a stray closing tag with no new opening tag must be answered with an error,
    not by running the previous call a second time (the model wrote no call, so it must get no free image)."""
    protocol = make_protocol(name, vlm)
    traj, _ = _stopped(prompt, call, vlm)
    protocol.on_stop(traj, vlm, LIMITS)
    assert len(traj.images) == 2 and traj.tool_calls[0].ok
    stray_ids = encode(vlm, stray)
    traj.append_sampled(stray_ids, [0.0] * len(stray_ids))
    assert stray_ids[-1] in protocol.stop_ids
    assert protocol.on_stop(traj, vlm, LIMITS) is True
    assert len(traj.images) == 2, "the previous call was run again"
    assert [c.ok for c in traj.tool_calls] == [True, False]
    assert "no tool call found" in traj.tool_calls[1].error


def test_image_limit_is_recorded_as_a_failed_call(vlm, prompt):
    """With the image budget spent, a valid crop is refused and the model reads 'Tool error: image limit reached';
    the record rewards and metrics read (tool_success, tools/success_rate) must then say the call failed."""
    protocol = make_protocol("inline", vlm)
    traj, _ = _stopped(prompt, CROP_CALL, vlm)
    assert protocol.on_stop(traj, vlm, RolloutConfig(max_images=1)) is True
    assert len(traj.images) == 1
    assert "image limit reached" in vlm.tokenizer.decode(traj.ids[len(prompt.ids):])
    rec = traj.tool_calls[0]
    assert rec.ok is False and "image limit reached" in (rec.error or "")


def test_every_call_protocol_has_its_injection():
    """tools/protocols.py parses each protocol's calls; engine/rollout/tool_calls.py injects each one's results."""
    from engine.rollout.tool_calls import INJECTIONS
    from tools.protocols import PROTOCOLS

    assert set(INJECTIONS) == set(PROTOCOLS)
