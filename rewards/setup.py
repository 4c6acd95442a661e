"""Build what the reward config asks for, in one call from the trainer: the sentence embedder and the model
scorer, each checked against `reward.weights` (a part set up that no weighted reward uses, or a weighted reward
whose part is missing, is a ValueError at start-up, not a stream of zeros).

    handle = setup_rewards(cfg.reward, policy_vlm, dtype="float32", device="cpu")   # engine/trainer.py
    # every RewardContext of the run then carries `scorer=handle`

- `check_reward_config(reward_cfg)`: every name in reward.weights is a registered reward, every selected reward's
  `check` holds, and the options fit the names (embedder_path ↔ reasoning, scorer/teacher/clip ↔ the rewards that
  use them). Pure: engine/config/settings.py calls it when the config is parsed, before any model loads. A reward
  that owns settings (the judge: `[reward.judge]`) is checked by its settings' own validate and ranges there too.
- `build_embedder(reward_cfg)`: the TextEmbedder of reward.embedder_path (rewards/text_embedder.py), or None.
  It only serves "reasoning" (cosine Match-F1 instead of word F1).
- `setup_rewards`: both, then `rewards.scorer.build_scorer` (the policy scorer, teacher and CLIP model). The handle
  returned is the ModelScorer with the embedder attached (`scorer.embed`), the TextEmbedder alone when
  reward.scorer is none, or None when nothing model-based is configured.
"""

from __future__ import annotations

from rewards.registry import REWARDS


def check_reward_config(reward_cfg) -> None:
    """ValueError for an unknown reward name or an option that does not fit the weighted rewards (see above)."""
    from rewards.scorer import check_scorer_needs

    r = reward_cfg
    unknown = [name for name in r.weights if name not in REWARDS]
    if unknown:
        raise ValueError(f"reward.weights names unknown reward(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(REWARDS.names())}")
    for name in r.weights:
        check = REWARDS.entry(name).traits["check"]
        if check is not None:
            check(r)
    if r.embedder_path and "reasoning" not in r.weights:
        raise ValueError("reward.embedder_path is set but reward.weights does not name 'reasoning', the only reward "
                         "that uses sentence embeddings: weight it or clear embedder_path")
    check_scorer_needs(r.weights, scorer=r.scorer is not None, teacher=bool(r.teacher_path), clip=bool(r.clip_path))


def build_embedder(reward_cfg, device: str = "cpu"):
    """The sentence embedder of reward.embedder_path (None when empty); checked by `check_reward_config`."""
    if not reward_cfg.embedder_path:
        return None
    check_reward_config(reward_cfg)
    from rewards.text_embedder import TextEmbedder

    return TextEmbedder.load(reward_cfg.embedder_path, device=device)


def setup_rewards(reward_cfg, policy, *, dtype: str = "float32", device: str = "cpu"):
    """Load the embedder, build the scorer; return the `ctx.scorer` handle (see above)."""
    from rewards.scorer import build_scorer

    r = reward_cfg
    check_reward_config(r)
    embedder = build_embedder(r, device=device)
    scorer = build_scorer(policy, r.weights, kind=r.scorer, teacher_path=r.teacher_path, clip_path=r.clip_path,
                          clip_backend=r.clip_backend, max_new_tokens=r.scorer_max_new_tokens, dtype=dtype,
                          device=device)
    if scorer is None:
        return embedder  # reasoning only needs `.embed`; None when nothing model-based is configured
    scorer.embedder = embedder
    return scorer
