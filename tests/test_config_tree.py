"""The real config tree: every field documented, presets parse, bad keys and silent no-op settings are errors."""

import re
from pathlib import Path

import pytest

from engine.config.parsing import build_config, from_toml_str, to_toml, undocumented_fields
from engine.config.registries import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, LOSSES
from engine.config.settings import Config
from models.tiny import ARCHS
from rewards.registry import REWARDS
from tools.protocols import PROTOCOLS

ROOT = Path(__file__).resolve().parent.parent


def test_every_field_is_documented():
    assert undocumented_fields(Config) == []


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_presets_build_and_round_trip(preset):
    cfg = build_config(Config, toml_path=ROOT / "configs" / preset)
    assert from_toml_str(Config, to_toml(cfg)) == cfg


def test_dotted_overrides_are_typed():
    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml",
                       overrides=["--rollout.group_size", "16", "--rl.lr=5e-4", "--algo.drop_uniform_groups", "true"])
    assert cfg.rollout.group_size == 16 and cfg.rl.lr == 5e-4 and cfg.algo.drop_uniform_groups is True


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
    (["--rollout.group_size", "1"], "group_size 1"),
    (["--train.stage", "rl", "--rl.steps", "0"], "rl.steps is 0"),
    (["--rollout.sampler", "vllm", "--rollout.top_p", "0.9"], "top_p"),
    (["--rollout.vllm_kv_cache_gib", "4"], "vllm_kv_cache_gib"),
    (["--rollout.vllm_tp", "2"], "vllm_tp set but rollout.sampler is 'native'"),
    (["--rollout.vllm_sleep", "true"], "vllm_sleep set but rollout.sampler is 'native'"),
    (["--rollout.sampler", "vllm", "--rollout.vllm_gpu_memory_utilization", "1.5"], "vllm_gpu_memory_utilization = 1.5 is out of range"),
    (["--rollout.sampler", "vllm", "--rollout.vllm_tp", "0"], "rollout.vllm_tp = 0 is out of range: must be >= 1"),
    (["--model.attn_implementation", "varlen"], "take bf16 / fp16 tensors only: set model.dtype = bfloat16"),
])
def test_settings_that_would_do_nothing_or_nonsense_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=overrides)


def test_off_is_none_not_zero():
    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml")
    assert cfg.algo.tis_cap is None and cfg.algo.settings("ppo_clip").dual_clip_c is None and cfg.rollout.protocol is None
    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml",
                       overrides=["--algo.tis_cap", "2", "--rollout.protocol", "inline", "--model.box_frame", "pixels"])
    assert cfg.algo.tis_cap == 2.0 and cfg.rollout.protocol == "inline" and cfg.model.box_frame == "pixels"
    assert from_toml_str(Config, to_toml(cfg)) == cfg
    with pytest.raises(ValueError, match="tis_cap"):  # 0 used to mean off; now it is an error, off is none
        build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=["--algo.tis_cap", "0"])


@pytest.mark.parametrize("old, new", [("train.steps", "rl.steps"), ("train.epochs", "rl.epochs"), ("optim.lr", "rl.lr"),
                                      ("algo.dynamic_sampling", "algo.drop_uniform_groups"),
                                      ("algo.adv_eps", "algo.grpo.eps"), ("reward.judge_url", "reward.judge.url")])
def test_moved_keys_say_where_they_went(tmp_path, old, new):
    with pytest.raises(ValueError, match=rf"--{old} moved to {new}"):
        build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=[f"--{old}", "3"])
    section, key = old.split(".")
    bad = tmp_path / "old.toml"
    bad.write_text(f'[data]\ntrain = "x.jsonl"\n[{section}]\n{key} = 3\n')
    with pytest.raises(ValueError, match=rf"old\.toml: {old} moved to {new}"):
        build_config(Config, toml_path=bad)


# Every name the config holds is checked when it is parsed (no model loads), and the message lists the choices,
# read here from the registries themselves (a name a fork adds changes nothing in this test).
def _choices(registry):
    return re.escape("choose one of " + ", ".join(registry.names()))


@pytest.mark.parametrize("overrides, message", [
    (["--algo.loss", "gpg"], "algo.loss = 'gpg' is unknown; " + _choices(LOSSES)),
    (["--algo.advantage", "nope"], "algo.advantage = 'nope' is unknown; " + _choices(ADVANTAGES)),
    (["--algo.aggregation", "sum"], "algo.aggregation = 'sum' is unknown; " + _choices(AGGREGATIONS)),
    (["--algo.kl_estimator", "k4"], "algo.kl_estimator = 'k4' is unknown; " + _choices(KL_ESTIMATORS)),
    (["--rollout.protocol", "pigeon"], "rollout.protocol = 'pigeon' is unknown; choose one of " +
     ", ".join(sorted(PROTOCOLS))),
    (["--rollout.sampler", "sglang"], "--rollout.sampler: expected one of 'native', 'vllm', got 'sglang'"),
    (["--model.tiny_arch", "llama"], "model.tiny_arch = 'llama' is unknown; choose one of " + ", ".join(sorted(ARCHS))),
    (["--reward.weights", "acuracy=1"], "unknown reward\\(s\\) 'acuracy'; choose from " + re.escape(", ".join(REWARDS.names()))),
    (["--reward.weights", "judge=1"], "\\[reward.judge\\] needs url"),
    (["--reward.weights", "image_self=1"], "need a model scorer: set reward.scorer = 'policy'"),
    (["--reward.scorer", "policy"], "no weighted reward uses it"),
    (["--reward.weights", "image_teacher=1", "--reward.scorer", "policy"], "need a teacher model"),
    (["--reward.embedder_path", "/x"], "does not name 'reasoning'"),
    (["--train.stage", "rlhf"], "--train.stage: expected one of 'rl', 'sft', 'sft,rl'"),
])
def test_unknown_names_fail_at_parse_time_with_the_choices(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=overrides)
