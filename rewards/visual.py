"""Visual-grounding bonus "visual_grounding": 1.0 when the reasoning names visual elements of the problem.

Try one: `python -m rewards.explain visual_grounding --completion "<think>In triangle ABC...</think><answer>3</answer>"
--answer 3 --example '{"question": "Find AB in triangle ABC."}'`.

Source: seed 004 (Visual R1 GRPO on Geometry3K): a small bonus (weight 0.1 there) for reasoning that
"references visual elements (angles, shapes, etc.)". The rule here, on the text of the `<scan>` and `<think>`
blocks (no credit without them, and the answer block never counts):
1. an angle name: `∠ABC`, `\\angle ABC`, `m∠B`, or "angle ABC" / "angle B" (capital labels); or
2. a figure label of the question: a run of 2-4 capital letters (a side "AB", an angle or triangle "ABC",
   a quadrilateral "ABCD") whose letters are all point labels of the question, i.e. letters of such runs in
   the question or of "point P"; or
3. a shape word: triangle, circle, square, rectangle, quadrilateral, parallelogram, trapezoid, rhombus,
   polygon, pentagon, hexagon, arc, chord, radius, diameter, tangent, perpendicular, parallel, hypotenuse.
It is a bonus, not a check of correctness; keep its weight small (seed 004 uses 0.1 against 1.0 accuracy).
"""

from __future__ import annotations

import re

from data.example import Example
from rewards.format import response_text, tag_blocks
from rewards.registry import RewardContext, register

_ANGLE = re.compile(r"∠\s*[A-Z]|\\angle\s*[A-Z]|\b[Aa]ngles?\s+[A-Z]{1,3}\b")
_LABEL_RUN = re.compile(r"(?<![A-Za-z])[A-Z]{2,4}(?![A-Za-z])")
_POINT = re.compile(r"\b(?:point|vertex|center|centre)\s+([A-Z])\b", re.IGNORECASE)
_SHAPES = re.compile(
    r"\b(?:triangles?|circles?|squares?|rectangles?|quadrilaterals?|parallelograms?|trapezoids?|rhomb(?:us|i)"
    r"|polygons?|pentagons?|hexagons?|arcs?|chords?|radius|radii|diameters?|tangents?|perpendicular|parallel"
    r"|hypotenuse)\b",
    re.IGNORECASE,
)


def question_labels(question: str) -> set[str]:
    """Point labels of the figure named in the question: letters of capital runs ("AB", "ABC") and "point P"."""
    labels = {ch for run in _LABEL_RUN.findall(question) for ch in run}
    labels.update(m.upper() for m in _POINT.findall(question))
    return labels


def references_visual_elements(reasoning: str, question: str) -> bool:
    if _ANGLE.search(reasoning) or _SHAPES.search(reasoning):
        return True
    labels = question_labels(question)
    return any(set(run) <= labels for run in _LABEL_RUN.findall(reasoning))


@register("visual_grounding")
def visual_grounding_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    response = response_text(completion, ctx)
    reasoning = "\n".join(tag_blocks(response, "scan") + tag_blocks(response, "think"))
    return 1.0 if reasoning.strip() and references_visual_elements(reasoning, example.question) else 0.0
