"""Reading a model's behaviour: held-out evaluation, its report, rollout dumps, tool-use health."""
