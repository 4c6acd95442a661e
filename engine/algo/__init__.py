"""The algorithm: the RL step, advantages, the one loss call, the losses, the update, SFT, and the step's metrics."""
