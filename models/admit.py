"""What the model's image processor will take, judged per record before training, so that a record it would refuse
fails (or is skipped, named) at load and never stops a run at step N.

    check = example_check(processing, short_side=448)     # models.load.load_processing(folder)
    reason = check(example, sizes)                         # None, or why the model cannot take this record
    data.load_examples(path, model_check=check, skip_bad=True)   # the loader applies it to every record

`sizes` are the record's images as displayed (EXIF orientation applied; data/records.py knows them at load).
An image goes to the processor after `data.image_short_side`'s resize (`short_side_size`, the one definition the
rollout's resize uses too); the processor's own arithmetic (`get_number_of_image_patches`, Qwen's smart_resize:
the aspect-ratio limit of 200, the min/max pixel bounds) decides, so the check agrees with what training meets.
A processor without that method is run on a blank image of the size instead. Stands on nothing of ours.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

Size = tuple[int, int]  # (width, height)


def short_side_size(size: Size, side: int) -> Size:
    """(width, height) after scaling so the shorter side is `side` (aspect kept, the long side rounded); 0: as is."""
    w, h = size
    if side <= 0 or min(w, h) == side:
        return size
    scale = side / min(w, h)
    return (side, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), side)


def _processor_refusal(image_processor, size: Size) -> str | None:
    """Why the processor refuses an image of `size`, in its own words, or None."""
    w, h = size
    try:
        if hasattr(image_processor, "get_number_of_image_patches"):
            image_processor.get_number_of_image_patches(h, w, {})
        else:
            image_processor(images=[Image.new("RGB", size)], return_tensors="pt")
    except (ValueError, RuntimeError, ZeroDivisionError, OverflowError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def image_check(image_processor, *, short_side: int = 0) -> Callable[[Size], str | None]:
    """fn(size) -> why the model cannot take an image of that displayed size, or None."""

    def problem(size: Size) -> str | None:
        seen = short_side_size(size, short_side)
        refusal = _processor_refusal(image_processor, seen)
        if refusal is None:
            return None
        resized = f", {seen[0]}x{seen[1]} after data.image_short_side" if seen != size else ""
        ratio = max(seen) / max(1, min(seen))
        return (f"the model's image processor refuses a {size[0]}x{size[1]} image{resized} (aspect ratio "
                f"{ratio:.0f}:1): {refusal}. Crop or pad it, or leave the record out (data.skip_bad)")

    return problem


def example_check(processing, *, short_side: int = 0) -> Callable[[object, list[Size]], str | None]:
    """fn(example, sizes) -> why the model cannot take this record, or None: every image through `image_check`.
    `processing` is a models.load.Processing (or a VLM: anything with an image_processor)."""
    per_image = image_check(processing.image_processor, short_side=short_side)

    def check(example, sizes: list[Size]) -> str | None:
        for k, size in enumerate(sizes):
            reason = per_image(size)
            if reason is not None:
                return f"image {k + 1} of {len(sizes)}: {reason}" if len(sizes) > 1 else reason
        return None

    return check
