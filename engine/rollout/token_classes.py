"""Token classes of a trajectory, from the text the policy wrote: "tool" (every sampled token of a tool call,
tags included), "answer" (the `<answer>...</answer>` block; an unclosed one runs to the end) and "text" (the rest).
The rollout classes every trajectory once (`traj.token_class`); engine/algo/diagnostics.py reduces per class.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from engine.config.settings import TOKEN_CLASSES  # noqa: F401  (re-exported: the classes' one definition)

_SPANS = (  # class index, pattern over the sampled text; the first class whose span holds a token wins
    (0, re.compile(r"<tool_call>.*?</tool_call>|<tool>.*?</tool>", re.DOTALL)),
    (1, re.compile(r"<answer>.*?(?:</answer>|$)", re.DOTALL)),
)


def classify_tokens(ids: list[int], mask: list[int], batch_decode: Callable[[list[list[int]]], list[str]]
                    ) -> list[int]:
    """Per position of a trajectory: the TOKEN_CLASSES index of each sampled token (mask 1), -1 elsewhere. The
    sampled tokens' texts are joined (injected tool results are not the policy's words) and matched against the
    span patterns; a token is in a span when any of its characters is."""
    sampled = [k for k, m in enumerate(mask) if m]
    out = [-1] * len(ids)
    if not sampled:
        return out
    pieces = batch_decode([[ids[k]] for k in sampled])
    text = "".join(pieces)
    owner = [len(TOKEN_CLASSES) - 1] * len(text)  # "text" unless a span claims the character
    for cls, pattern in reversed(_SPANS):  # earlier classes written last: they win overlaps
        for match in pattern.finditer(text):
            owner[match.start():match.end()] = [cls] * (match.end() - match.start())
    start = 0
    for k, piece in zip(sampled, pieces):
        chars = owner[start:start + len(piece)]
        out[k] = min(chars) if chars else len(TOKEN_CLASSES) - 1  # an empty piece (a special token) is "text"
        start += len(piece)
    return out
