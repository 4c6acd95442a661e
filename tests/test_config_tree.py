"""The real config tree: every field documented, presets parse, bad keys and silent no-op settings are errors."""

from pathlib import Path

import pytest

from engine.config import Config
from engine.configlib import build_config, to_toml, from_toml_str, undocumented_fields
from engine.trainer import loss_config

ROOT = Path(__file__).resolve().parent.parent


def test_every_field_is_documented():
    assert undocumented_fields(Config) == []


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_presets_build_and_round_trip(preset):
    cfg = build_config(Config, toml_path=ROOT / "configs" / preset)
    assert from_toml_str(Config, to_toml(cfg)) == cfg


def test_dotted_overrides_are_typed():
    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml",
                       overrides=["--rollout.group_size", "16", "--optim.lr=5e-4", "--algo.dynamic_sampling", "true"])
    assert cfg.rollout.group_size == 16 and cfg.optim.lr == 5e-4 and cfg.algo.dynamic_sampling is True


def test_unknown_key_names_the_flag_and_suggests():
    with pytest.raises(ValueError, match=r"--rollout\.grop_size.*group_size"):
        build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=["--rollout.grop_size", "4"])


def test_unknown_toml_key_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\ntrain = "x.jsonl"\n[algo]\nlosss = "gspo"\n')
    with pytest.raises(ValueError, match=r"bad\.toml.*\[algo\].*losss.*loss"):
        build_config(Config, toml_path=bad)


@pytest.mark.parametrize("overrides, message", [
    (["--train.stage", "sft,rl", "--sft.steps", "0"], "sft.steps is 0"),
    (["--rollout.protocol", "pigeon"], "rollout.protocol"),
    (["--rollout.group_size", "1"], "group_size 1"),
    (["--train.stage", "rlhf"], "train.stage"),
    (["--rollout.sampler", "sglang"], "rollout.sampler"),
    (["--rollout.sampler", "vllm", "--rollout.top_p", "0.9"], "top_p"),
    (["--rollout.vllm_kv_cache_gib", "4"], "vllm_kv_cache_gib"),
])
def test_settings_that_would_do_nothing_or_nonsense_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=overrides)


def test_loss_config_maps_zero_to_off_and_fills_norm_len():
    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml",
                       overrides=["--algo.aggregation", "seq_mean_token_sum_norm", "--rollout.max_new_tokens", "48"])
    lc = loss_config(cfg)
    assert lc.dual_clip_c is None and lc.tis_cap is None and lc.norm_len == 48
    lc = loss_config(build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=["--algo.tis_cap", "2"]))
    assert lc.tis_cap == 2.0 and lc.norm_len is None
