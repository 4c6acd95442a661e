"""What a run builds before its first step: the data, its order, the model (from any folder), the memory plan."""
