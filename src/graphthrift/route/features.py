"""Difficulty features: fast text markers (code, maths, multi-hop, tool need...) of a request.

Patterns are compiled once, at import, so scoring a request costs microseconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = ["FEATURE_NAMES", "difficulty_features", "heuristic_difficulty"]

# -- features --------------------------------------------------------------------------------

_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+[:(]|\bimport \w+|\bfunction\s*\w*\(|=>|#include|"
    r"\bSELECT\b.+\bFROM\b|\bstack ?trace\b|\bTraceback\b|\bregex\b|\bcompile\b|"
    r"\b(?:python|javascript|typescript|java|rust|golang|c\+\+|sql|bash)\b|[{};]\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_MATH = re.compile(
    r"\d\s*[-+*/^=]\s*\d|\\frac|\\sum|\\int|\bintegral\b|\bderivative\b|\bequation\b|"
    r"\bprove\b|\btheorem\b|\bprobability\b|\bsolve\b|\bcompute\b|\bcalculate\b|\bsqrt\b|"
    r"\bmatrix\b|\bpercent(?:age)?\b|%",
    re.IGNORECASE,
)
_MULTI_HOP = re.compile(
    r"\band (?:then|also|what|which|who|when|where|how)\b|\bboth\b|\bcompare\b|\bdifference "
    r"between\b|\bbefore\b|\bafter\b|\bwhich of\b|\brelationship\b|\bin relation to\b|"
    r"\bstep[- ]by[- ]step\b|\bfirst\b.+\bthen\b|\bcombine\b|\bacross\b|\beach of\b",
    re.IGNORECASE,
)
_REASONING = re.compile(
    r"^\s*(?:why|explain|analy[sz]e|evaluate|discuss|justify|derive|design|plan|critique)\b|"
    r"\bwhy\b|\bexplain\b|\bimplications?\b|\btrade-?offs?\b|\bpros and cons\b|\breason\b",
    re.IGNORECASE,
)
_FACTOID = re.compile(
    r"^\s*(?:what is|what's|what are|when|where|who|how (?:do|can|long|much|many) i|can i|"
    r"do you|is there|is it|how do i|i (?:want|need|would like) to|my )\b",
    re.IGNORECASE,
)
_TOOL_NEED = re.compile(
    r"\b(?:search|look up|lookup|fetch|browse|latest|today|current(?:ly)?|weather|price of|"
    r"book|schedule|send|email|run|execute|query the)\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"[.!?](?:\s|$)")

FEATURE_NAMES: tuple[str, ...] = (
    "length",
    "questions",
    "sentences",
    "code",
    "math",
    "multi_hop",
    "reasoning",
    "factoid",
    "tool_need",
)
_WEIGHTS: tuple[float, ...] = (0.4, 1.4, 0.1, 1.6, 1.3, 1.1, 0.9, -0.9, 0.6)
_BIAS = -1.6


def _ask(text: str) -> str:
    """The part of a request that asks: after the last line break, at most 400 characters.

    Pasted context (documents, passages) comes before the ask; its dates and words must not
    read as maths or multi-hop markers.
    """
    cut = text.rfind("\n")
    ask = text[cut + 1 :] if cut >= 0 and cut < len(text) - 1 else text
    return ask[-400:]


def difficulty_features(text: str, *, has_tools: bool = False) -> tuple[float, ...]:
    """The fast features of one request, in ``FEATURE_NAMES`` order (all in [0, 3]).

    Length and code markers look at the whole text; the question-type, maths, multi-hop and
    tool markers look at the ask (the last line).
    """
    words = text.count(" ") + 1 if text else 0
    ask = _ask(text)
    return (
        min(words / 40.0, 3.0),
        min(max(ask.count("?") - 1, 0), 3),
        min(len(_SENTENCE.findall(ask)) / 3.0, 3.0),
        1.0 if _CODE.search(text) else 0.0,
        1.0 if _MATH.search(ask) else 0.0,
        float(min(len(_MULTI_HOP.findall(ask)), 3)),
        1.0 if _REASONING.search(ask) else 0.0,
        1.0 if _FACTOID.search(ask) else 0.0,
        1.0 if has_tools or _TOOL_NEED.search(ask) else 0.0,
    )


def heuristic_difficulty(features: Sequence[float]) -> float:
    """P(the request needs the strong model) from the fast features, by fixed weights."""
    score = _BIAS + sum(w * f for w, f in zip(_WEIGHTS, features, strict=True))
    return 1.0 / (1.0 + math.exp(-score))


# -- answers and validators ------------------------------------------------------------------
