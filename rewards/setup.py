"""Build what the reward config asks for, in one call from the trainer: the HTTP judge, the sentence embedder and
the model scorer, each checked against `reward.weights` (a part set up that no weighted reward uses, or a weighted
reward whose part is missing, is a ValueError at start-up, not a stream of zeros).

    handle = setup_rewards(cfg.reward, policy_vlm, dtype="float32", device="cpu")   # engine/trainer.py
    # every RewardContext of the run then carries `scorer=handle`

- `register_configured_rewards(reward_cfg)`: when reward.weights names "judge", REWARDS["judge"] =
  `rewards.judge.make_judge_reward(judge_url, judge_model, judge_prompt, ...)` (rewards/judge.py: timeouts,
  retries, bounded concurrency and a per-batch deadline; a failure scores 0 and counts in reward_errors/judge).
  The judge is built, not registered at import, because it needs a server.
- `build_embedder(reward_cfg)`: the TextEmbedder of reward.embedder_path (rewards/text_embedder.py), or None.
  It only serves "reasoning" (cosine Match-F1 instead of word F1).
- `setup_rewards`: both, then `rewards.scorer.build_scorer` (the policy scorer, teacher and CLIP model). The handle
  returned is the ModelScorer with the embedder attached (`scorer.embed`), the TextEmbedder alone when
  reward.scorer is "none", or None when nothing model-based is configured.
"""

from __future__ import annotations

from rewards.registry import REWARDS


def register_configured_rewards(reward_cfg) -> None:
    """Register the rewards that need settings to exist (today: the judge). ValueError when "judge" is weighted
    without reward.judge_url, or judge_url is set while "judge" is not weighted (a setting that does nothing)."""
    from rewards.judge import make_judge_reward

    r = reward_cfg
    weighted = "judge" in r.weights
    if weighted and not r.judge_url:
        raise ValueError("reward.weights names 'judge' but reward.judge_url is empty: set it to an OpenAI-compatible "
                         "base URL (e.g. http://127.0.0.1:8000/v1, a local vLLM server) or drop 'judge' from the weights")
    if r.judge_url and not weighted:
        raise ValueError(f"reward.judge_url is {r.judge_url!r} but reward.weights does not name 'judge': weight it "
                         "(e.g. judge = 1.0; 0 logs it as a monitor) or clear judge_url")
    if weighted:
        REWARDS["judge"] = make_judge_reward(r.judge_url, r.judge_model, r.judge_prompt, timeout_s=r.judge_timeout_s,
                                             retries=r.judge_retries, max_concurrency=r.judge_max_concurrency)


def build_embedder(reward_cfg, device: str = "cpu"):
    """The sentence embedder of reward.embedder_path (None when empty); ValueError when "reasoning", its only
    user, is not weighted."""
    if not reward_cfg.embedder_path:
        return None
    if "reasoning" not in reward_cfg.weights:
        raise ValueError("reward.embedder_path is set but reward.weights does not name 'reasoning', the only reward "
                         "that uses sentence embeddings: weight it or clear embedder_path")
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
