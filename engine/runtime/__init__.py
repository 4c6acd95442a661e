"""Processes and what keeps a run alive: FSDP2 and collectives, checkpoints, signals and faults, LoRA, the optimizer, logging."""
