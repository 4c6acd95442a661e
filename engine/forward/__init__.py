"""The model's forward over trajectories: packing into rows, their layout for the kernel, per-token log-probs."""
