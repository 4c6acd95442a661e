"""Load a Hugging Face VLM folder (a real checkpoint or a tiny one from `models.tiny`) as one bundle: model,
tokenizer, image processor and the family's facts. Works whether or not torchvision imports.

    from models.load import load_vlm, load_processing
    vlm = load_vlm("path/to/Qwen2.5-VL-3B-Instruct", dtype="bfloat16", device="cuda")
    parts = load_processing(folder)   # tokenizer, image processor and family only (no weights): checks data first

Every file is read through models/files.py's guard, and what a run needs later is checked now: config.json and
preprocessor_config.json parse, tokenizer files and a chat template exist and the template writes one image
placeholder per image, every safetensors header covers its file, and no weight the model has is missing from it
(transformers would initialise it at random and say so only in a log table).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
from transformers.utils import logging as hf_logging

from models.attention import SDPA_GQA, VARLEN, set_attention, varlen_available
from models.family import SUPPORTED, Family, family_from
from models.files import COPY_AGAIN, UnreadableFile, check_weights, read_json, reading

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")  # any one: fast, BPE or sentencepiece


@dataclass
class Processing:
    """What turns data into model inputs, without the weights: enough to check a dataset before the model loads."""

    tokenizer: object
    image_processor: object
    family: Family
    path: Path


@dataclass
class VLM:
    model: torch.nn.Module
    tokenizer: object
    image_processor: object
    family: Family
    path: Path


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise ValueError(f"model folder {path} does not exist; pass a local folder (no hub downloads here), "
                         "e.g. one built by `python -m models.tiny --arch qwen2_5_vl --out DIR`")
    for name in ("config.json", "preprocessor_config.json"):
        if not (path / name).exists():
            raise ValueError(f"{path} has no {name}: it is not a Hugging Face VLM folder")
        read_json(path / name, f"the model's {name}")
    model_type = read_json(path / "config.json", "the model's config").get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"{path}/config.json: model_type {model_type!r} is not supported; "
                         f"supported: {sorted(SUPPORTED)}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}: any one): copy them, with "
                         "tokenizer_config.json and the chat template, from the checkpoint the model came from")


def check_chat_template(tokenizer, family: Family, path: Path) -> None:
    """The tokenizer has a chat template, and it writes exactly one image placeholder for a message with one image
    (else every prompt fails at step 1 with "0 image placeholders")."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{path}: the tokenizer has no chat template (chat_template.jinja, or chat_template in "
                         "tokenizer_config.json): copy it from the checkpoint the model came from")
    probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    with reading(path, "the chat template (rendering a message with one image)",
                 "fix the template or copy it from the checkpoint the model came from"):
        text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        count = tokenizer(text, add_special_tokens=False).input_ids.count(family.image_token_id)
    if count != 1:
        raise ValueError(f"{path}: the chat template writes {count} image placeholders (<|image_pad|>, id "
                         f"{family.image_token_id}) for a message with one image; it must write one: use the chat "
                         "template of the checkpoint the model came from")


def load_image_processor(path: Path):
    """The checkpoint's image processor; falls back to the PIL implementation when the fast (torchvision)
    one cannot be built."""
    try:
        return AutoImageProcessor.from_pretrained(path)
    except (ImportError, ValueError, RuntimeError):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        return Qwen2VLImageProcessorPil.from_pretrained(path)


def set_pixel_range(image_processor, *, min_pixels: int = 0, max_pixels: int = 0) -> None:
    """Qwen's min_pixels / max_pixels: the processor resizes every image to a pixel count in that range (0 keeps
    the folder's own bound). Both live in `size` as shortest_edge / longest_edge (transformers 5.x)."""
    if not (min_pixels or max_pixels):
        return
    size = dict(image_processor.size)
    if min_pixels:
        size["shortest_edge"] = min_pixels
    if max_pixels:
        size["longest_edge"] = max_pixels
    if size["shortest_edge"] > size["longest_edge"]:
        raise ValueError(f"min_pixels {size['shortest_edge']} is above max_pixels {size['longest_edge']} (with the "
                         "model folder's own bound for the one not set): raise max_pixels or lower min_pixels")
    image_processor.size = size


def resolve_attention(attn_implementation: str, device: str, dtype: str) -> str:
    """"auto" (the default) -> "varlen" on a CUDA device that runs its kernel (models/attention.varlen_available)
    with bf16 / fp16 weights, else "sdpa"; any other name as it is. varlen is the faster path measured on an H200
    (docs/BENCHMARKS.md, "GRPO step on a GPU"): packed rows without masks, one kernel call per vision block, and
    the "prefix" layout's ordinary batches through sdpa where engine/forward/layouts.py picks it."""
    if attn_implementation != "auto":
        return attn_implementation
    if dtype in ("bfloat16", "float16") and varlen_available(device):
        return "varlen"
    return "sdpa"


def _loadable(attn_implementation: str) -> str:
    """"varlen" (models/attention.py) is not a name transformers loads: load with sdpa, then switch."""
    return "sdpa" if attn_implementation == "varlen" else attn_implementation


def _switch_attention(model, attn_implementation: str, device: str) -> None:
    if attn_implementation == "varlen":
        if torch.device(device).type != "cuda":
            raise ValueError(f"attn_implementation varlen on {device}: torch's varlen_attn (and flash-attn) run on "
                             "CUDA only; use sdpa (or auto) on a CPU")
        set_attention(model, VARLEN)
    elif attn_implementation == "sdpa" and torch.device(device).type == "cpu":  # the same attention, less copying
        set_attention(model, SDPA_GQA)


def _folder(path: str | Path, dtype: str):
    """(path, tokenizer, config) of a checked model folder, after checking the dtype name."""
    path = Path(path)
    _check_folder(path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} unknown; choose one of {sorted(DTYPES)}")
    with reading(path, "the tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(path)
    with reading(path / "config.json", "the model's config"):
        config = AutoConfig.from_pretrained(path)
    return path, tokenizer, config


def load_processing(path: str | Path, *, box_frame: str | None = None, min_pixels: int = 0,
                    max_pixels: int = 0) -> Processing:
    """The folder's tokenizer (with its chat template checked), image processor (Qwen's pixel bounds applied) and
    family facts, and its weights files' headers: no weights are read, so a dataset can be checked against them
    before the model loads, and a cut or lying weights file is named before anything else is done."""
    path, tokenizer, config = _folder(path, "float32")
    check_weights(path)
    family = family_from(config, tokenizer, box_frame=box_frame)
    check_chat_template(tokenizer, family, path)
    with reading(path / "preprocessor_config.json", "the image processor's settings"):
        image_processor = load_image_processor(path)
    set_pixel_range(image_processor, min_pixels=min_pixels, max_pixels=max_pixels)
    return Processing(tokenizer=tokenizer, image_processor=image_processor, family=family, path=path)


def _from_pretrained(path: Path, dtype: str, attn_implementation: str):
    """transformers' loader, after checking every weights file; a weight the model has but the file lacks (or with
    another shape) is an error naming the file, not a silent random initialisation."""
    files = check_weights(path)
    named = files[0] if len(files) == 1 else path
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load-report table: we say what matters in one line instead
    try:
        with reading(named, "the model's weights", passthrough=(MemoryError, torch.OutOfMemoryError)):
            model, info = AutoModelForImageTextToText.from_pretrained(
                path, dtype=DTYPES[dtype], attn_implementation=_loadable(attn_implementation),
                output_loading_info=True, ignore_mismatched_sizes=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        shown = ", ".join((missing + mismatched)[:3]) + (" ..." if len(missing) + len(mismatched) > 3 else "")
        raise UnreadableFile(f"{named}: the weights do not fit the model its config.json describes ({len(missing)} "
                             f"missing, {len(mismatched)} of another shape: {shown}); {COPY_AGAIN}")
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        print(f"note: {named} holds {len(unexpected)} weights the model does not use (ignored): "
              f"{', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
    return model


def load_vlm(path: str | Path, *, dtype: str = "float32", device: str = "cpu", attn_implementation: str = "auto",
             box_frame: str | None = None, min_pixels: int = 0, max_pixels: int = 0,
             processing: Processing | None = None) -> VLM:
    """The model of `path` with its processing (`processing`: one loaded already by load_processing)."""
    parts = processing or load_processing(path, box_frame=box_frame, min_pixels=min_pixels, max_pixels=max_pixels)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} unknown; choose one of {sorted(DTYPES)}")
    attn_implementation = resolve_attention(attn_implementation, device, dtype)
    model = _from_pretrained(parts.path, dtype, attn_implementation).to(device)
    _switch_attention(model, attn_implementation, device)
    return VLM(model=model, tokenizer=parts.tokenizer, image_processor=parts.image_processor, family=parts.family,
               path=parts.path)


def init_vlm(path: str | Path, *, dtype: str = "bfloat16", device: str = "cpu", attn_implementation: str = "auto",
             seed: int = 0) -> VLM:
    """A randomly initialised model from a folder's config (its weights, if any, are not read), built directly on
    `device`, with the folder's tokenizer and image processor: e.g. a released checkpoint's shape written by
    `python -m models.tiny --shape 3b --no-weights` (a 3B model is built on a GPU in seconds; no 7 GB file)."""
    path, tokenizer, config = _folder(path, dtype)
    attn_implementation = resolve_attention(attn_implementation, device, dtype)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=DTYPES[dtype],
                                                        attn_implementation=_loadable(attn_implementation))
    _switch_attention(model, attn_implementation, device)
    with reading(path / "preprocessor_config.json", "the image processor's settings"):
        image_processor = load_image_processor(path)
    return VLM(model=model, tokenizer=tokenizer, image_processor=image_processor,
               family=family_from(config, tokenizer), path=path)
