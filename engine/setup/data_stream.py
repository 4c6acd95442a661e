"""Deterministic, resumable order over a dataset: a fresh permutation each epoch, seeded by (seed, epoch).

    stream = DataStream(len(examples), seed=0); idx = stream.take(4); state = stream.state_dict()
"""

from __future__ import annotations

import torch


class DataStream:
    def __init__(self, size: int, seed: int):
        if size < 1:
            raise ValueError("the training set is empty: nothing to sample prompts from")
        self.size, self.seed, self.epoch, self.pos = size, seed, 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.pos == self.size:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation()
            out.append(self._perm[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise ValueError(f"checkpoint was written for a dataset of {state['size']} examples, this one has "
                             f"{self.size}: resume with the same data")
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self._perm = self._permutation()
