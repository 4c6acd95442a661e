"""Tests for engine/config/parsing.py: layering (defaults → TOML → CLI), parsing by annotated type, error messages,
validate(), the exact TOML round trip, to_dict, describe and undocumented_fields.

The tree below uses string annotations (`from __future__ import annotations`) on purpose, so every test also
checks that types are resolved with typing.get_type_hints.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import pytest

from engine.config.parsing import (build_config, describe, differences, from_toml_str, to_dict, to_toml,
                                   undocumented_fields)


def doc(default, help: str):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Sampling:
    top_k: int = doc(0, "Top-k (0: off).")
    stop: list[str] = doc(["</answer>"], "Stop strings.")


@dataclass
class Rollout:
    group_size: int = doc(8, "Samples per prompt.")
    temperature: float = doc(1.0, "Sampling temperature.")
    protocol: Literal["none", "inline"] = doc("none", "Tool protocol.")
    max_tokens: int | None = doc(None, "Cap (none: no cap).")
    sampling: Sampling = field(default_factory=Sampling)

    def validate(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"rollout.group_size {self.group_size} must be ≥ 1")


@dataclass
class Tree:
    name: str = doc("run", "Run name.")
    seed: int = doc(0, "Seed.")
    debug: bool = doc(False, "Debug mode.")
    lr: float = doc(1e-5, "Learning rate.")
    tag: str | None = doc(None, "Optional tag.")
    ids: list[int] = doc([1, 2], "Some ids.")
    scales: list[float] = doc([], "Some floats.")
    weights: dict[str, float] = doc({"format": 0.2, "accuracy": 1.0}, "Reward weights.")
    rollout: Rollout = field(default_factory=Rollout)

    def validate(self) -> None:
        if self.debug and self.rollout.group_size > 64:
            raise ValueError("debug with rollout.group_size > 64 is too slow: lower --rollout.group_size")


def test_defaults_then_toml_then_cli(tmp_path):
    path = tmp_path / "preset.toml"
    path.write_text('seed = 3\nlr = 1\n[rollout]\ngroup_size = 4\ntemperature = 0.7\n[rollout.sampling]\ntop_k = 5\n')
    cfg = build_config(Tree, toml_path=str(path), overrides=["--rollout.group_size", "16", "--seed=7"])
    assert cfg.seed == 7 and cfg.rollout.group_size == 16          # CLI beats TOML
    assert cfg.rollout.temperature == 0.7 and cfg.rollout.sampling.top_k == 5  # TOML beats defaults
    assert cfg.lr == 1.0 and type(cfg.lr) is float                  # TOML int widened for a float field
    assert cfg.name == "run" and cfg.rollout.sampling.stop == ["</answer>"]  # untouched defaults


def test_cli_values_parse_by_annotated_type():
    cfg = build_config(Tree, overrides=[
        "--debug", "yes", "--tag", "exp-1", "--ids", "3, 4,5", "--scales=[0.5, 2]", "--weights", "acc=1,fmt=0.5",
        "--rollout.max-tokens", "128", "--rollout.protocol", "inline", "--rollout.sampling.stop", '["a,b", "c"]',
        "--lr", "3e-4"])
    assert cfg.debug is True and cfg.tag == "exp-1" and cfg.lr == 3e-4
    assert cfg.ids == [3, 4, 5] and cfg.scales == [0.5, 2.0]
    assert cfg.weights == {"acc": 1.0, "fmt": 0.5}                   # replaced whole, not merged
    assert cfg.rollout.max_tokens == 128 and cfg.rollout.protocol == "inline"
    assert cfg.rollout.sampling.stop == ["a,b", "c"]                 # JSON keeps the comma inside a string
    cfg = build_config(Tree, overrides=["--tag", "NONE", "--debug", "0", "--ids", "", "--weights", '{"x": 2}'])
    assert cfg.tag is None and cfg.debug is False and cfg.ids == [] and cfg.weights == {"x": 2.0}


@pytest.mark.parametrize("overrides, message", [
    (["--rollout.grop_size", "3"], "unknown flag --rollout.grop_size; did you mean --rollout.group_size?"),
    (["--zzz", "1"], "unknown flag --zzz; see --help-config"),
    (["--seed", "1.5"], "--seed: expected int, got '1.5'"),
    (["--debug", "maybe"], "--debug: expected bool, got 'maybe'"),
    (["--seed", "none"], "--seed: expected int, got 'none'"),  # not optional: none is not a value
    (["--rollout.protocol", "multi"], "--rollout.protocol: expected one of 'none', 'inline', got 'multi'"),
    (["--weights", "a:1"], "--weights: expected dict[str, float] as k=v,k=v or JSON, got 'a:1'"),
    (["--weights", '{"a": "x"}'], "--weights.a: expected float, got 'x'"),
    (["--ids", "1,x"], "--ids[1]: expected int, got 'x'"),
    (["--rollout", "3"], "--rollout is a section, not a setting"),
    (["--seed"], "flag --seed needs a value"),
    (["--seed", "--lr", "1"], "flag --seed needs a value"),
    (["seed", "1"], "unexpected argument 'seed'"),
])
def test_cli_errors_name_the_flag(overrides, message):
    with pytest.raises(ValueError) as e:
        build_config(Tree, overrides=overrides)
    assert message in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("[rollout]\ngrop_size = 3\n", "demo.toml: [rollout] unknown key 'grop_size'; did you mean 'group_size'?"),
    ("[rollout.sampling]\ntopk = 3\n", "demo.toml: [rollout.sampling] unknown key 'topk'; did you mean 'top_k'?"),
    ("sed = 3\n", "demo.toml: [top level] unknown key 'sed'; did you mean 'seed'?"),
    ("[rolout]\n", "demo.toml: [top level] unknown key 'rolout'; did you mean 'rollout'?"),
    ("rollout = 3\n", "demo.toml: [top level] rollout is a section: expected a table [rollout], got 3"),
    ("[seed]\nx = 1\n", "demo.toml: [top level] seed: expected int, got a table"),
    ("[rollout]\ngroup_size = '8'\n", "demo.toml: [rollout] group_size: expected int, got '8'"),
    ("debug = 1\n", "demo.toml: [top level] debug: expected bool, got 1"),
    ("seed = true\n", "demo.toml: [top level] seed: expected int, got True"),  # bool is not an int here
    ("ids = [1, 2.5]\n", "demo.toml: [top level] ids[1]: expected int, got 2.5"),
    ("weights = {a = 'x'}\n", "demo.toml: [top level] weights.a: expected float, got 'x'"),
    ("seed = = 1\n", "demo.toml: invalid TOML"),
])
def test_toml_errors_name_file_table_and_key(tmp_path, text, message):
    path = tmp_path / "demo.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        build_config(Tree, toml_path=path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="config file not found: .*nope.toml"):
        build_config(Tree, toml_path=tmp_path / "nope.toml")


def test_validate_runs_on_every_section_and_the_root():
    with pytest.raises(ValueError, match=r"rollout.group_size 0 must be ≥ 1"):
        build_config(Tree, overrides=["--rollout.group_size", "0"])
    with pytest.raises(ValueError, match="debug with rollout.group_size > 64"):
        build_config(Tree, overrides=["--debug", "true", "--rollout.group_size", "65"])
    cfg = build_config(Tree, overrides=["--rollout.group_size", "0"], validate=False)
    assert cfg.rollout.group_size == 0


def test_toml_text_is_exact_for_a_small_tree():
    cfg = build_config(Tree, overrides=["--tag", 'say "hi"\n', "--scales", "inf,-0.5"])
    text = to_toml(cfg)
    # Hand-written expectation: settings in field order with help comments, None as "none", sections last.
    assert text.startswith(
        '# Run name.\nname = "run"\n# Seed.\nseed = 0\n# Debug mode.\ndebug = false\n# Learning rate.\nlr = 1e-05\n'
        '# Optional tag.\ntag = "say \\"hi\\"\\n"\n# Some ids.\nids = [1, 2]\n# Some floats.\nscales = [inf, -0.5]\n'
        '# Reward weights.\nweights = {format = 0.2, accuracy = 1.0}\n\n[rollout]\n')
    assert 'max_tokens = "none"\n' in text
    assert text.endswith('\n[rollout.sampling]\n# Top-k (0: off).\ntop_k = 0\n# Stop strings.\nstop = ["</answer>"]\n')


def test_round_trip_is_exact_for_every_type():
    tricky = 'quote " back\\slash\ttab\nnewline é 🙂 \x7f \x01'
    cfg = build_config(Tree, overrides=[
        "--name", tricky, "--seed", "-3", "--debug", "true", "--lr", "1.2345678901234567e-7", "--tag", "",
        "--ids", "[]", "--scales", "-inf,0.1,1e300", "--weights", '{"a b": 0.1, "x.y": -2, "": 3}',
        "--rollout.max_tokens", "0", "--rollout.protocol", "inline", "--rollout.sampling.top_k", "9",
        "--rollout.sampling.stop", '["", "=", "#"]'])
    back = from_toml_str(Tree, to_toml(cfg))
    assert back == cfg
    assert back.name == tricky and back.tag == "" and back.rollout.max_tokens == 0
    assert back.scales[0] == -math.inf and list(back.weights) == ["a b", "x.y", ""]
    assert from_toml_str(Tree, to_toml(Tree())) == Tree()  # None survives too (tag, max_tokens)


def test_to_toml_refuses_what_cannot_read_back():
    with pytest.raises(ValueError, match="^tag = 'none' would read back as None"):
        to_toml(dataclasses.replace(Tree(), tag="none"))
    with pytest.raises(ValueError, match="^seed is None but its type int does not allow None"):
        to_toml(dataclasses.replace(Tree(), seed=None))


def test_to_dict_is_flat_and_dotted():
    flat = to_dict(build_config(Tree, overrides=["--rollout.sampling.top_k", "4"]))
    assert flat["rollout.sampling.top_k"] == 4 and flat["lr"] == 1e-5
    assert flat["weights"] == {"format": 0.2, "accuracy": 1.0}
    assert len(flat) == 8 + 4 + 2  # 8 top-level settings, 4 in rollout, 2 in rollout.sampling; no section keys
    assert "rollout" not in flat


def test_describe_lists_every_key_with_type_default_and_help():
    text = describe(Tree)
    assert "  --lr: float = 1e-05\n      Learning rate.\n" in text
    assert "  --tag: str | None = \"none\"\n      Optional tag.\n" in text
    assert "  --rollout.protocol: one of 'none', 'inline' = \"none\"\n" in text
    assert "  --weights: dict[str, float] = {format = 0.2, accuracy = 1.0}\n" in text
    assert "\n[rollout.sampling]\n  --rollout.sampling.top_k: int = 0\n      Top-k (0: off).\n" in text
    assert text.count("  --") == 14


@dataclass
class Undocumented:
    a: int = 1
    b: int = field(default=2, metadata={"help": "Documented."})
    c: str = field(default="", metadata={"help": "  "})
    inner: Sampling = field(default_factory=Sampling)  # sections need no help


def test_undocumented_fields_finds_missing_help():
    assert undocumented_fields(Tree) == []
    assert undocumented_fields(Undocumented) == ["a", "c"]


@dataclass
class Unsupported:
    pairs: list[tuple[int, int]] = field(default_factory=list, metadata={"help": "Not a supported type."})


def test_unsupported_annotation_is_a_type_error():
    with pytest.raises(TypeError, match="Unsupported.pairs: config type"):
        build_config(Unsupported)


def test_a_base_config_is_the_bottom_layer_and_differences_name_each_changed_key():
    """A run's own resolved config as the base: the TOML file and the flags go over it, and `differences` lists
    exactly the keys that then differ from it (what eval.py prints against the run's own settings)."""
    run = build_config(Tree, toml_text="[rollout]\ngroup_size = 16\n", overrides=["--rollout.temperature", "0.7"])
    again = build_config(Tree, base=run, toml_text="[rollout]\nmax_tokens = 48\n",
                         overrides=["--rollout.group_size=4"])
    assert again.rollout.temperature == 0.7  # kept from the base, which the TOML file did not name
    assert differences(run, again) == [("rollout.group_size", 16, 4), ("rollout.max_tokens", None, 48)]
    assert differences(run, build_config(Tree, base=run)) == []
    nested = build_config(Tree, base=run, overrides=["--rollout.sampling.top_k", "5"])
    assert differences(run, nested) == [("rollout.sampling.top_k", 0, 5)]
