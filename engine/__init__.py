"""The training engine: losses, advantages, and the step that wires them together."""
