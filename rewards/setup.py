"""Build what the reward config asks for, in one call from the trainer: the HTTP judge, the sentence embedder and
the model scorer, each checked against `reward.weights` (a part set up that no weighted reward uses, or a weighted
reward whose part is missing, is a ValueError at start-up, not a stream of zeros).

    handle = setup_rewards(cfg.reward, policy_vlm, dtype="float32", device="cpu")   # engine/trainer.py
    # every RewardContext of the run then carries `scorer=handle`

- `check_reward_config(reward_cfg)`: every name in reward.weights is a registered reward (or "judge"), and the
  options fit the names (judge ↔ judge_url, embedder_path ↔ reasoning, scorer/teacher/clip ↔ the rewards that
  use them). Pure: engine/config/settings.py calls it when the config is parsed, before any model loads.
- `register_configured_rewards(reward_cfg)`: when reward.weights names "judge", REWARDS["judge"] =
  `rewards.judge.make_judge_reward(judge_url, judge_model, judge_prompt, ...)` (rewards/judge.py: timeouts,
  retries, bounded concurrency and a per-batch deadline; a failure scores 0 and counts in reward_errors/judge).
  The judge is built, not registered at import, because it needs a server.
- `build_embedder(reward_cfg)`: the TextEmbedder of reward.embedder_path (rewards/text_embedder.py), or None.
  It only serves "reasoning" (cosine Match-F1 instead of word F1).
- `setup_rewards`: both, then `rewards.scorer.build_scorer` (the policy scorer, teacher and CLIP model). The handle
  returned is the ModelScorer with the embedder attached (`scorer.embed`), the TextEmbedder alone when
  reward.scorer is none, or None when nothing model-based is configured.
"""

from __future__ import annotations

from rewards.registry import REWARDS

BUILT_REWARDS = ("judge",)  # registered by register_configured_rewards from settings, not at import


def check_reward_config(reward_cfg) -> None:
    """ValueError for an unknown reward name or an option that does not fit the weighted rewards (see above)."""
    import rewards  # noqa: F401  (every reward module: fills REWARDS)
    from rewards.scorer import check_scorer_needs

    r = reward_cfg
    known = sorted(set(REWARDS) | set(BUILT_REWARDS))
    unknown = [name for name in r.weights if name not in known]
    if unknown:
        raise ValueError(f"reward.weights names unknown reward(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(known)}")
    weighted = "judge" in r.weights
    if weighted and not r.judge_url:
        raise ValueError("reward.weights names 'judge' but reward.judge_url is empty: set it to an OpenAI-compatible "
                         "base URL (e.g. http://127.0.0.1:8000/v1, a local vLLM server) or drop 'judge' from the weights")
    if r.judge_url and not weighted:
        raise ValueError(f"reward.judge_url is {r.judge_url!r} but reward.weights does not name 'judge': weight it "
                         "(e.g. judge = 1.0; 0 logs it as a monitor) or clear judge_url")
    if r.embedder_path and "reasoning" not in r.weights:
        raise ValueError("reward.embedder_path is set but reward.weights does not name 'reasoning', the only reward "
                         "that uses sentence embeddings: weight it or clear embedder_path")
    check_scorer_needs(r.weights, scorer=r.scorer is not None, teacher=bool(r.teacher_path), clip=bool(r.clip_path))


def register_configured_rewards(reward_cfg) -> None:
    """Register the rewards that need settings to exist (today: the judge), after `check_reward_config`."""
    from rewards.judge import make_judge_reward

    r = reward_cfg
    check_reward_config(r)
    if "judge" in r.weights:
        REWARDS["judge"] = make_judge_reward(r.judge_url, r.judge_model, r.judge_prompt, timeout_s=r.judge_timeout_s,
                                             retries=r.judge_retries, max_concurrency=r.judge_max_concurrency)


def build_embedder(reward_cfg, device: str = "cpu"):
    """The sentence embedder of reward.embedder_path (None when empty); checked by `check_reward_config`."""
    if not reward_cfg.embedder_path:
        return None
    check_reward_config(reward_cfg)
    from rewards.text_embedder import TextEmbedder

    return TextEmbedder.load(reward_cfg.embedder_path, device=device)


def setup_rewards(reward_cfg, policy, *, dtype: str = "float32", device: str = "cpu"):
    """Register the judge, load the embedder, build the scorer; return the `ctx.scorer` handle (see above)."""
    from rewards.scorer import build_scorer

    r = reward_cfg
    register_configured_rewards(r)
    embedder = build_embedder(r, device=device)
    scorer = build_scorer(policy, r.weights, kind=r.scorer, teacher_path=r.teacher_path, clip_path=r.clip_path,
                          clip_backend=r.clip_backend, max_new_tokens=r.scorer_max_new_tokens, dtype=dtype,
                          device=device)
    if scorer is None:
        return embedder  # reasoning only needs `.embed`; None when nothing model-based is configured
    scorer.embedder = embedder
    return scorer
