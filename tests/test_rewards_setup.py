"""rewards/setup.py and rewards/text_embedder.py: the judge and the sentence embedder built from the reward config,
and every setting that would do nothing (or could not work) refused at start-up."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from data.example import Example
from engine.config.settings import Config, RewardConfig
from engine.config.parsing import build_config, to_toml
from rewards import REWARDS, RewardContext
from rewards.judge import Judge
from rewards.reasoning import THRESHOLD, match_f1, token_f1
from rewards.scorer import ModelScorer
from rewards.combine import reward_fn
from rewards.setup import build_embedder, setup_rewards
from rewards.text_embedder import TextEmbedder, build_tiny_text_encoder

ROOT = Path(__file__).resolve().parent.parent
URL = "http://127.0.0.1:9/v1"  # never contacted here


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return build_tiny_text_encoder(tmp_path_factory.mktemp("enc") / "tiny-encoder")


def test_judge_is_built_once_from_its_own_section():
    cfg = build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=[
        "--reward.weights", "judge=1", "--reward.judge.url", URL, "--reward.judge.model", "m",
        "--reward.judge.prompt", "Q {question} A {answer}", "--reward.judge.timeout_s", "0.5",
        "--reward.judge.retries", "1", "--reward.judge.max_concurrency", "3"])
    assert setup_rewards(cfg.reward, policy=None) is None  # nothing model-based: no handle
    judge = reward_fn("judge", cfg.reward.components)
    assert isinstance(judge, Judge) and callable(judge.batch)
    assert (judge.base_url, judge.model, judge.prompt_template) == (URL, "m", "Q {question} A {answer}")
    assert (judge.timeout_s, judge.retries, judge.max_concurrency) == (0.5, 1, 3)
    assert reward_fn("judge", cfg.reward.components) is judge  # built once per distinct settings
    assert "[reward.judge]" in to_toml(cfg) and 'url = "http://127.0.0.1:9/v1"' in to_toml(cfg)
    with pytest.raises(ValueError, match=r"needs its settings \(\[reward.judge\]\)"):
        reward_fn("judge", {})


@pytest.mark.parametrize("overrides, message", [
    (["--reward.weights", "judge=1"], r"\[reward.judge\] needs url"),
    (["--reward.weights", "judge=0"], r"\[reward.judge\] needs url"),  # a 0 weight still computes the part
    (["--reward.judge.url", URL], r"\[reward.judge\] is set but reward.weights does not name 'judge'"),
    (["--reward.judge.timeout_s", "3"], r"\[reward.judge\] is set but reward.weights does not name 'judge'"),
    (["--reward.weights", "judge=1", "--reward.judge.url", URL, "--reward.judge.model", "m",
      "--reward.judge.retries", "-1"], r"reward.judge.retries = -1 is out of range: must be >= 0"),
    (["--reward.weights", "judge=1", "--reward.judge.url", URL, "--reward.judge.model", "m",
      "--reward.judge.prompt", "{nope}"], "may only use"),
    (["--reward.judge_url", URL], "reward.judge_url moved to reward.judge.url"),
    (["--reward.clip_backend", "open_clip"], "clip_path is empty"),
    (["--reward.clip_backend", "openclip", "--reward.clip_path", "x"], "expected one of 'transformers', 'open_clip'"),
])
def test_config_refuses_judge_and_clip_settings_that_do_nothing(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config(Config, toml_path=ROOT / "configs/demo.toml", overrides=overrides)


def test_tiny_encoder_embeddings_are_unit_deterministic_and_padding_free(encoder_dir, tmp_path):
    embedder = TextEmbedder.load(encoder_dir)
    texts = ["the sign is red", "a dog is sleeping on the road near the car", "the sign is red"]
    v = embedder.embed(texts)
    assert v.shape == (3, 32) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    assert np.allclose(v[0], v[2], atol=1e-6) and not np.allclose(v[0], v[1], atol=1e-3)
    # alone (no padding) == next to a longer text (padded): the mean runs over real tokens only
    assert np.allclose(embedder.embed(["the sign is red"])[0], v[0], atol=1e-5)
    # the same seed writes the same model: a second build and load gives the same vectors
    again = TextEmbedder.load(build_tiny_text_encoder(tmp_path / "again")).embed(texts)
    assert np.allclose(again, v, atol=1e-6)
    assert embedder.embed([]).shape == (0, 32)


def test_embedder_path_switches_reasoning_from_words_to_cosine(encoder_dir):
    ex = Example(question="q", answers=["red"], images=[], reference_steps=["the sign is red"])
    completion = '{"reasoning_steps": ["a dog is sleeping on the road"], "answer": "red"}'
    # Lexically: [dog, is, sleeping, on, road] vs [sign, is, red] share "is": p 1/5, r 1/3, F1 0.25 < 0.5: no match.
    assert token_f1("a dog is sleeping on the road", "the sign is red") == pytest.approx(0.25)
    assert REWARDS["reasoning"](completion, ex, RewardContext()) == 0.0
    handle = setup_rewards(RewardConfig(weights={"reasoning": 1.0}, embedder_path=str(encoder_dir)), policy=None)
    assert isinstance(handle, TextEmbedder)  # reward.scorer "none": the embedder alone is the handle
    v = handle.embed(["a dog is sleeping on the road", "the sign is red"])
    # A random tiny encoder puts every sentence in a narrow cone: the cosine is far above the 0.5 threshold,
    # so the one predicted step matches the one reference: F1 1.0 where word F1 gives 0.
    assert float(v[0] @ v[1]) > THRESHOLD + 0.2
    assert REWARDS["reasoning"](completion, ex, RewardContext(scorer=handle)) == 1.0
    assert match_f1(["a dog is sleeping on the road"], ["the sign is red"], embed=handle.embed) == 1.0


def test_policy_scorer_carries_the_embedder_and_reasoning_stays_lexical_without_one(encoder_dir):
    fake_vlm = SimpleNamespace(tokenizer=lambda word, add_special_tokens: SimpleNamespace(input_ids=[ord(word[0])]))
    scorer = ModelScorer(fake_vlm)
    assert scorer.embed is None  # the property: reasoning sees no embedder and matches words
    ex = Example(question="q", answers=["red"], images=[], reference_steps=["the sign is red"])
    completion = '{"reasoning_steps": ["a dog is sleeping on the road"], "answer": "red"}'
    assert REWARDS["reasoning"](completion, ex, RewardContext(scorer=scorer)) == 0.0
    scorer.embedder = build_embedder(RewardConfig(weights={"reasoning": 1.0}, embedder_path=str(encoder_dir)))
    assert REWARDS["reasoning"](completion, ex, RewardContext(scorer=scorer)) == 1.0


def test_embedder_errors(encoder_dir, tmp_path):
    with pytest.raises(ValueError, match="does not name 'reasoning'"):
        build_embedder(RewardConfig(weights={"accuracy": 1.0}, embedder_path=str(encoder_dir)))
    with pytest.raises(ValueError, match="no config.json"):
        build_embedder(RewardConfig(weights={"reasoning": 1.0}, embedder_path=str(tmp_path)))
    assert build_embedder(RewardConfig(weights={"reasoning": 1.0})) is None
    cls_pooled = tmp_path / "cls"
    build_tiny_text_encoder(cls_pooled)
    (cls_pooled / "1_Pooling").mkdir()
    (cls_pooled / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true, '
                                                          '"pooling_mode_mean_tokens": false}')
    with pytest.raises(ValueError, match="mean pooling only"):
        TextEmbedder.load(cls_pooled)
