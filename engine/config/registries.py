"""The algorithm's registries: what `algo.loss`, `algo.advantage`, `algo.kl_estimator`, `algo.aggregation` and
`algo.token_selection` choose from. The built-ins register themselves with the same decorators a plugin uses (engine/algo/losses.py,
engine/algo/advantages.py, engine/algo/token_selection.py), so help texts, "choose one of" errors and tests read these objects, never a list.
Rewards and tools have theirs on their own floors: rewards.registry.REWARDS, tools.registry.TOOLS.

What each kind declares when it registers (its traits; `settings=` is a dataclass that becomes `[algo.<name>]`):
- a loss, `fn(x: LossInputs, s) -> (per_token_loss, metrics)` (s: its settings, or None):
  `needs` — the optional LossInputs it reads: "entropy" (then computed with gradient), "ref_logp" (a reference
  forward even at kl_beta 0), "sampler_logp" (the sampler's log-probs, e.g. TIS inside the loss);
  `token_local` — each token's loss depends only on that token and its sequence (micro-batching never changes it);
  `step_pass` — `fn(tokens: StepTokens, s) -> dict[str, Tensor]`, run once per optimizer step over every token of
  the step (all micro-batches and ranks) before the micro-batch losses, which read its result as `x.step_stats`.
- an advantage estimator, `fn(*, rewards_B, group_B, settings) -> adv_B`, called once per step on the rewards of
  every rank (gathered), so its result never depends on the number of processes.
- a KL estimator, `fn(*, logp, ref_logp) -> kl per token`.
- an aggregation, `fn(*, keep, seq_idx, num_tokens, num_seqs, settings, default_len, dtype) -> per-token weights`.
- a token selection, `fn(*, entropy, mask, token_class, stats, settings) -> per-token weight on the policy-gradient term, or None`
  (None: every token, nothing multiplied); `entropy` is the behaviour policy's, detached;
  `step_pass` — `fn(tokens: StepTokens, s) -> dict[str, Tensor]` over every loss token of the step (their entropy
  filled: one forward without gradient), whose result the per-row calls read as `stats`.
"""

from registry import Registry

LOSSES = Registry("loss", "algo.loss", builtins=("engine.algo.losses",),
                  traits={"needs": (), "token_local": True, "step_pass": None})
ADVANTAGES = Registry("advantage estimator", "algo.advantage", builtins=("engine.algo.advantages",))
KL_ESTIMATORS = Registry("KL estimator", "algo.kl_estimator", builtins=("engine.algo.losses",))
AGGREGATIONS = Registry("aggregation", "algo.aggregation", builtins=("engine.algo.losses",))
TOKEN_SELECTIONS = Registry("token selection", "algo.token_selection", builtins=("engine.algo.token_selection",),
                            traits={"step_pass": None})

LOSS_NEEDS = ("entropy", "ref_logp", "sampler_logp")  # the inputs a loss may ask for (the others are always there)
