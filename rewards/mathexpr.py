"""Numbers and small LaTeX expressions to floats, safely: a tokenizer and a recursive-descent evaluator.

Nothing is ever passed to `eval`: the grammar knows numbers, + - * / ^, parentheses and braces, `\\frac{a}{b}`
(`\\dfrac`, `\\tfrac`), `\\sqrt{x}`, `\\sqrt[n]{x}`, `\\pi` / `pi` / `π`, and implicit multiplication before a
bracket, a root, a fraction or pi (`2\\sqrt{3}`, `3\\pi`, `2(4)`), which covers Geometry3K answers.
Try it: `python -c "from rewards.mathexpr import parse_number as p; print(p('2\\\\sqrt{3} cm'))"`  -> 3.4641...

`parse_number` first strips what is not the value: `$` delimiters and currency, `\\left`/`\\right`/spacing, a
leading `x =` (everything up to the last `=`), degree marks (`°`, `^\\circ`), `\\text{...}` units, thousands
commas ("1,000"), and trailing unit words ("5 cm", "30 degrees", "12 cm^2", "5 square units").
Percent: "%" is a unit and is stripped, so "50%" == "50" and "50%" != "0.5". Chart datasets write percentages
as the number, and reading "50%" as both 50 and 0.5 would give a hedging answer two chances.
"""

from __future__ import annotations

import math
import re

_MAX_CHARS = 200  # longer texts are not short answers; also bounds the parser's work
_MAX_DEPTH = 40  # nesting limit, far below Python's recursion limit
_MAX_EXPONENT = 64.0
_RESERVED = {"pi", "sqrt"}  # trailing words that are values, not units

_REWRITES = [
    (re.compile(r"\\(?:left|right|displaystyle|[,;:! ])"), " "),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\(?:text|mathrm|mbox|textrm|operatorname)\s*\{[^{}]*\}"), " "),  # "\text{ cm}": a unit
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°"), " "),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"π"), r"\\pi"),
    (re.compile(r"√"), r"\\sqrt"),
    (re.compile(r"\\cdot|\\times|[×·]"), "*"),
    (re.compile(r"\\div|÷"), "/"),
    (re.compile(r"[−–]"), "-"),
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),  # thousands separators
]
_UNIT_TAIL = re.compile(r"(?<![a-zA-Z\\])([a-zA-Z]+)\.?(?:\^?\{?[23]\}?|[²³])?\s*\Z|(?:%|[²³])\s*\Z")
_TOKEN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+|\\?[a-zA-Z]+|\S)")


class _Parser:
    """expr := term (+|- term)*; term := factor (*|/|implicit factor)*; factor := (+|-) factor | power;
    power := atom (^ factor)?; atom := number | pi | (expr) | {expr} | \\frac g g | \\sqrt[n]? g; g := {expr} | atom.
    """

    def __init__(self, text: str):
        self.tokens = _TOKEN.findall(text)  # every non-space character lands in some token
        self.i = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise ValueError(f"expected {expected or 'more input'}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> float:
        value = self.expr()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek()!r}")
        return value

    def expr(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.factor()
        while True:
            tok = self.peek()
            if tok in ("*", "/"):
                self.take()
                rhs = self.factor()
                value = value * rhs if tok == "*" else value / rhs
            elif tok in ("(", "{", "\\pi", "pi", "\\frac", "\\sqrt", "sqrt"):  # implicit: 2\sqrt{3}, 3\pi
                value = value * self.factor()
            else:
                return value

    def factor(self) -> float:
        if self.peek() in ("+", "-"):
            sign = -1.0 if self.take() == "-" else 1.0
            return sign * self.factor()
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        exponent = self.factor()
        if abs(exponent) > _MAX_EXPONENT:
            raise ValueError("exponent too large")
        return math.pow(base, exponent)  # raises ValueError for a negative base with a fractional exponent

    def atom(self) -> float:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ValueError("expression nested too deeply")
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            value = float(tok)
        elif tok in ("\\pi", "pi"):
            value = math.pi
        elif tok in ("(", "{"):
            value = self.expr()
            self.take(")" if tok == "(" else "}")
        elif tok == "\\frac":
            value = self.group() / self.group()
        elif tok in ("\\sqrt", "sqrt"):
            value = self.root()
        else:
            raise ValueError(f"unexpected {tok!r}")
        self.depth -= 1
        return value

    def root(self) -> float:
        degree = 2.0
        if self.peek() == "[":
            self.take()
            degree = self.expr()
            self.take("]")
        radicand = self.group()
        return math.sqrt(radicand) if degree == 2.0 else math.pow(radicand, 1.0 / degree)

    def group(self) -> float:
        if self.peek() == "{":
            self.take()
            value = self.expr()
            self.take("}")
            return value
        return self.atom()


def evaluate(expr: str) -> float | None:
    """The value of an expression in the grammar above, or None (syntax error, division by zero, overflow...)."""
    if not expr.strip() or len(expr) > _MAX_CHARS:
        return None
    try:
        value = _Parser(expr).parse()
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def strip_to_value(text: str) -> str:
    """Remove delimiters, `x =`, degree marks, \\text units, thousands commas and trailing unit words."""
    s = text.strip()
    for pattern, repl in _REWRITES:
        s = pattern.sub(repl, s)
    s = s.strip().strip("$").strip()
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = re.sub(r"\A\s*[$€£¥]", "", s)
    while True:
        m = _UNIT_TAIL.search(s)
        if not m or (m.group(1) or "").lower() in _RESERVED:
            return s.strip()
        s = s[: m.start()]


def parse_number(text: str | None) -> float | None:
    """The numeric value of an answer ("3.0", "1/2", "5 cm", "30°", "2\\sqrt{3}", "\\frac{7}{2}"), or None."""
    if text is None or len(text) > _MAX_CHARS:
        return None
    return evaluate(strip_to_value(text))


def numbers_close(a: float, b: float, rel_tol: float = 1e-2) -> bool:
    """Equal within `rel_tol` of the larger magnitude; two integer values must be equal exactly.

    A count or a year off by one is wrong even when within 1% ("2019" vs "2020"); a non-integer is compared
    with the tolerance ("3.46" vs 2\\sqrt{3} = 3.4641).
    """
    if float(a).is_integer() and float(b).is_integer():
        return a == b
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
