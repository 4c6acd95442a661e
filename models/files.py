"""One guard for the files the engine reads: whatever goes wrong inside it (a truncated or lying safetensors file,
JSON that does not parse, a missing shard, a pickle refused), the user reads one line naming the file, what it was
for and what to do, never a traceback.

    with reading(path, "the model's weights", fix="copy the folder again from where it came from"):
        tensors = load_file(path)
    config = read_json(folder / "config.json", "the model's config")
    check_weights(folder)       # every safetensors header parses and covers its file; an index names real shards

Raises `UnreadableFile`, a ValueError (the CLIs print it as `error: ...` and exit 2). models/load.py, the
checkpoints (engine/runtime/checkpoint.py) and the reward models' folders read through it; data/ has its own
`file:line: reason` path (data/records.py) for records. It stands on nothing of ours, like the rest of models/.
Tested in tests/test_files.py and, on real processes, tests/test_faults.py.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
COPY_AGAIN = "copy the folder again from where it came from (compare the file sizes with the original's)"


class UnreadableFile(ValueError):
    """A file the engine needs cannot be read; the message names it and says what to do."""


def _reason(exc: BaseException) -> str:
    """The exception in one short line: its type and the first line of its message."""
    text = (str(exc).strip().splitlines() or [""])[0]
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def reading(path, what: str, fix: str = COPY_AGAIN, passthrough: tuple[type[BaseException], ...] = ()):
    """Turn any failure inside the block into one UnreadableFile line: `{path}: cannot read {what} ({reason}); {fix}`.
    KeyboardInterrupt and SystemExit pass through (they are not failures of the file), and so do `passthrough`
    (e.g. out of memory while loading: a fact about the machine, not the file)."""
    try:
        yield
    except (UnreadableFile, *passthrough):
        raise
    except Exception as exc:  # noqa: BLE001 - the point: every library's own error type becomes one line
        raise UnreadableFile(f"{path}: cannot read {what} ({_reason(exc)}); {fix}") from None


def read_json(path, what: str, fix: str = COPY_AGAIN) -> dict:
    """A JSON object from `path`, read through the guard (missing, not UTF-8, not JSON, not an object: one line)."""
    with reading(path, what, fix):
        value = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder: model.safetensors, or the shards its index names (checked to exist)."""
    single, index = folder / WEIGHTS, folder / WEIGHTS_INDEX
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = read_json(index, "the weights' index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UnreadableFile(f"{index}: has no weight_map naming the shards; {COPY_AGAIN}")
        shards = sorted({folder / name for name in weight_map.values()})
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise UnreadableFile(f"{index}: names shards that are not in {folder}: {', '.join(missing[:3])}"
                                 f"{' ...' if len(missing) > 3 else ''}; {COPY_AGAIN}")
        return shards
    raise UnreadableFile(f"{folder}: no {WEIGHTS} (nor {WEIGHTS_INDEX} and its shards): a model folder holds its "
                         "weights as safetensors; convert a .bin checkpoint with save_pretrained(safe_serialization="
                         "True)")


def check_weights(folder: Path, fix: str = COPY_AGAIN) -> list[Path]:
    """Every weights file's header parses and its tensors' byte ranges lie inside the file (a truncated copy or a
    header that claims more bytes than there are fails here, naming the file). Reads headers only, not tensors."""
    from safetensors import safe_open

    files = weight_files(folder)
    for file in files:
        with reading(file, "the model's weights (safetensors)", fix):
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
    return files
