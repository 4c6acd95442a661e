"""Answer accuracy ("accuracy"), the accuracy-gated tool reward ("tool_success") and seed 000's plain one ("tool").

Try one: `python -m rewards.explain accuracy --completion "<answer>Two</answer>" --answer 2`.

`answers_match(pred, ref, choices)` says whether one prediction matches one reference, trying in order:
1. equal after the official VQA normalisation (`rewards/normalize.py`, from the VQA evaluation script);
2. multiple choice (only when `choices` is non-empty): both sides resolve to the same option index. "B", "(B)",
   "B.", "B)", "B: blue", "B. blue" and "blue" all resolve to index 1 when choices[1] == "blue". A letter whose
   text names another option ("B. red") resolves to nothing: a hedge earns no credit;
3. numbers (`rewards/mathexpr.py`): "3.0" == "3", "1/2" == "0.5", "5 cm" == "5", "30°" == "30",
   `2\\sqrt{3}` == 3.4641 within a relative tolerance of 1e-2; two integer values must be equal exactly;
   "50%" == "50" (a percent sign is a unit; see mathexpr's docstring).

`vqa_score(pred, refs, choices)` applies the VQA consensus rule min(#matching references / 3, 1) when there
are 3 or more references (VQA v2 has 10 annotators). With fewer, the references are alternatives: any match
scores 1, so one reference is exact match. Departure from the VQA script: it averages the rule over the 10
leave-one-annotator-out subsets (3 matches -> 0.9); here the plain rule is used (3 matches -> 1.0).
An empty, missing or placeholder answer scores 0 always.

Sentence references (seed 001): its `<answer>` is a sentence, "The visible clothing of the person on the far left is
a dark jacket.", and the seed001 loader marks such examples (`metadata["answer_form"] = "sentence"`). For them
`sentence_match(pred, ref, question)` is used: the reference's words that are not in the question are its short
answer ("dark jacket"); a prediction matches when, after the VQA normalisation, it holds every one of those words and
no word found in neither the reference nor the question. So "a dark jacket", "dark jacket" and the whole sentence
score 1; "jacket" (half the answer), "a red jacket" and "dark or light jacket" (a hedge) score 0. A reference with
no word beyond the question's falls back to the match above.
"""

from __future__ import annotations

import re
from typing import Sequence

from data.example import Example
from rewards.format import extract_answer, response_text
from rewards.mathexpr import numbers_close, parse_number
from rewards.normalize import normalize_answer
from rewards.registry import RewardContext, register

# "B", "(B)", "B.", "B)", "B:", "Option B", "B. blue". A bare lowercase letter is not a choice ("a" is a word).
_LETTER = re.compile(
    r"\A\s*(?i:option\s+|answer\s*:?\s*)?(?:\(([A-Za-z])\)|([A-Z])(?=[.):]|\s|\Z)|([a-z])(?=[.):]))[.):]?\s*(.*)\Z",
    re.DOTALL,
)
_WORD = re.compile(r"\w+(?:['.]\w+)*")


def _same_text(a: str, b: str, rel_tol: float) -> bool:
    na, nb = normalize_answer(a), normalize_answer(b)
    if na and na == nb:
        return True
    x, y = parse_number(a), parse_number(b)
    return x is not None and y is not None and numbers_close(x, y, rel_tol)


def resolve_choice(text: str, choices: Sequence[str], rel_tol: float = 1e-2) -> int | None:
    """The option index `text` names (by letter, letter + its text, or the option's text), else None."""
    m = _LETTER.match(text)
    if m:
        letter = (m.group(1) or m.group(2) or m.group(3)).upper()
        index, rest = ord(letter) - ord("A"), m.group(4).strip()
        if index < len(choices) and (not rest or _same_text(rest, choices[index], rel_tol)):
            return index
    hits = [i for i, choice in enumerate(choices) if _same_text(text, choice, rel_tol)]
    return hits[0] if len(hits) == 1 else None


def answers_match(pred: str | None, ref: str, choices: Sequence[str] = (), rel_tol: float = 1e-2) -> bool:
    """True when `pred` answers the question the way `ref` does (see the module docstring for the order)."""
    if pred is None or not pred.strip() or not ref.strip():
        return False
    norm_pred = normalize_answer(pred)
    if norm_pred and norm_pred == normalize_answer(ref):
        return True
    if choices:
        i, j = resolve_choice(pred, list(choices), rel_tol), resolve_choice(ref, list(choices), rel_tol)
        if i is not None and j is not None:
            return i == j
    x, y = parse_number(pred), parse_number(ref)
    return x is not None and y is not None and numbers_close(x, y, rel_tol)


def _words(text: str) -> list[str]:
    """The VQA-normalised words of `text`, without the punctuation the normalisation keeps (":", "'s" stays)."""
    return _WORD.findall(normalize_answer(text))


def sentence_match(pred: str | None, ref: str, question: str) -> bool:
    """True when `pred` gives the short answer inside the sentence `ref` (the module docstring's rule)."""
    if answers_match(pred, ref):
        return True
    if pred is None or not pred.strip():
        return False
    said, asked, reference = _words(pred), set(_words(question)), _words(ref)
    short = {w for w in reference if w not in asked}
    return bool(short) and short <= set(said) and set(said) <= set(reference) | asked


def vqa_score(pred: str | None, refs: list[str], choices: Sequence[str] = (), rel_tol: float = 1e-2) -> float:
    """min(#matching refs / 3, 1) with 3+ references; 1.0 for any match with fewer; 0 for no answer."""
    if pred is None or not pred.strip():
        return 0.0
    matches = sum(answers_match(pred, ref, choices, rel_tol) for ref in refs)
    if len(refs) >= 3:
        return min(matches / 3.0, 1.0)
    return 1.0 if matches else 0.0


def _references(example: Example) -> list[str]:
    refs = [a for a in example.answers if a and a.strip()]
    if not refs:
        raise ValueError(f"{example.origin or 'example'}: no reference answers; 'accuracy' needs example.answers")
    return refs


@register("accuracy")
def accuracy_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    """VQA-style accuracy of the extracted answer (last `<answer>`, or the JSON "answer") against example.answers;
    for a sentence reference (metadata answer_form = sentence), `sentence_match`."""
    pred = extract_answer(response_text(completion, ctx), "auto")
    if example.metadata.get("answer_form") == "sentence":  # seed 001: the reference is a sentence
        return 1.0 if any(sentence_match(pred, ref, example.question) for ref in _references(example)) else 0.0
    return vqa_score(pred, _references(example), example.choices)


def _call_ok(call) -> bool:
    """A tool call worked when `.ok` is true, or, without `.ok`, when `.error` is empty. Dicts work too."""
    get = call.get if isinstance(call, dict) else lambda key, default=None: getattr(call, key, default)
    ok = get("ok", None)
    return bool(ok) if ok is not None else not get("error", None)


@register("tool_success")
def tool_success_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    """Fraction of the trajectory's tool calls that worked, paid only when "accuracy" > 0; 0 with no calls.

    The accuracy gate is the hacking guard: calling tools for their own sake, or calling many easy ones on the
    way to a wrong answer, earns nothing.
    """
    if not ctx.tool_calls or accuracy_reward(completion, example, ctx) <= 0.0:
        return 0.0
    return sum(_call_ok(c) for c in ctx.tool_calls) / len(ctx.tool_calls)


@register("answer_prob")
def answer_prob_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    """The policy's own probability of the reference answer at the point where it starts its answer (after its
    reasoning, tool calls and their results): the expected accuracy of the answer it writes there, without the
    draw, so a right guess after a useless tool call no longer scores like a right reading (VeriFree, RLPR).
    Computed by the step in one batched forward (engine/algo/reference_answer.py) and read here from the context.
    """
    if ctx.answer_prob is None:
        raise ValueError("answer_prob needs the policy's probability of the reference answer, which the RL step and "
                         "the evaluation compute (engine/algo/reference_answer.py); this caller did not")
    return float(ctx.answer_prob)


answer_prob_reward.computed_by_step = True  # its value comes from the policy, via the context (never from the text)


@register("tool")
def tool_reward(completion: str, example: Example, ctx: RewardContext) -> float:
    """Seed 000's plain tool reward: the fraction of the trajectory's tool calls that worked, right answer or not;
    0 with no calls.

    Without a gate it pays for calling tools for their own sake: weight it below "accuracy" (seed 000: 0.3 beside
    answer 0.3), or use "tool_success", which pays only when the answer is right.
    """
    if not ctx.tool_calls:
        return 0.0
    return sum(_call_ok(c) for c in ctx.tool_calls) / len(ctx.tool_calls)
