"""models/files.py: every failure to read a file becomes one line naming it and what to do; safetensors headers
are checked against their files without reading the tensors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from models.files import UnreadableFile, check_weights, read_json, reading


def test_reading_names_the_file_and_passes_interrupts_through(tmp_path):
    with pytest.raises(UnreadableFile, match=r"^x.bin: cannot read the thing \(ZeroDivisionError: division by zero\); "
                                             r"do this$"):
        with reading("x.bin", "the thing", "do this"):
            1 / 0
    with pytest.raises(KeyboardInterrupt):
        with reading("x.bin", "the thing"):
            raise KeyboardInterrupt
    with pytest.raises(MemoryError):
        with reading("x.bin", "the thing", passthrough=(MemoryError,)):
            raise MemoryError


def test_read_json_says_what_is_wrong(tmp_path):
    (tmp_path / "a.json").write_text("{\n")
    (tmp_path / "b.json").write_text("[1]")
    with pytest.raises(UnreadableFile, match="a.json: cannot read the config .*JSONDecodeError.*line 2 column 1"):
        read_json(tmp_path / "a.json", "the config")
    with pytest.raises(UnreadableFile, match="b.json: .*expected a JSON object, got list"):
        read_json(tmp_path / "b.json", "the config")
    with pytest.raises(UnreadableFile, match="c.json: .*FileNotFoundError"):
        read_json(tmp_path / "c.json", "the config")


def test_check_weights_finds_cut_files_and_missing_shards(tmp_path):
    save_file({"w": torch.zeros(64, 64)}, tmp_path / "model.safetensors")
    assert check_weights(tmp_path) == [tmp_path / "model.safetensors"]
    raw = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UnreadableFile, match="model.safetensors: cannot read the model's weights .*not fully covered"):
        check_weights(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "part-1.safetensors"}}))
    with pytest.raises(UnreadableFile, match="names shards that are not in .*: part-1.safetensors"):
        check_weights(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    with pytest.raises(UnreadableFile, match="no model.safetensors"):
        check_weights(tmp_path)
