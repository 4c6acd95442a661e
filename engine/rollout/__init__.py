"""Sampling: prompts and trajectories, the rollout with tool results re-injected, the vLLM sampler, token classes."""
