"""The best any fold-based pruner could do on a data set: the ceiling under the history targets.

Every fold replaces the start of the prompt, so it breaks the prefix once; between folds the
prompt only grows. For a given summary size, the optimum is a choice of fold points per
conversation, made here with knowledge of the whole conversation: a dynamic programme
minimising tokens sent plus a price per fold, with the price bisected until the folds fit the
prefix-stability target across the whole set. No online pruner can save more at that
stability with a summary of that size, so this tells whether the targets can be met together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from graphthrift.bench._data_history import Conversation
from graphthrift.text import TOKENS_REPLY_PRIMING

__all__ = ["fold_bound"]

_BISECT_STEPS = 24


@dataclass(frozen=True, slots=True)
class _Replay:
    long: bool  # 20+ turns
    ends: tuple[int, ...]  # history length at each prompt
    starts: tuple[int, ...]  # where that prompt's latest run of user messages begins
    cumulative: tuple[int, ...]  # tokens of the first k messages
    full: int  # tokens the full history sends over the conversation


def _replay(conv: Conversation, ends: Sequence[int], tokens: Sequence[int]) -> _Replay:
    starts = []
    for end in ends:
        start = end - 1
        while start > 0 and conv.turns[start - 1].role == "user":
            start -= 1
        starts.append(start)
    cumulative = [0]
    for t in tokens:
        cumulative.append(cumulative[-1] + t)
    full = sum(cumulative[e] + TOKENS_REPLY_PRIMING for e in ends)
    return _Replay(len(conv.turns) >= 20, tuple(ends), tuple(starts), tuple(cumulative), full)


def _best(r: _Replay, summary: int, price: float) -> tuple[int, int]:
    """Tokens sent and folds of the cheapest schedule for one conversation."""
    cum, priming = r.cumulative, TOKENS_REPLY_PRIMING
    # last fold point (-1: none yet) -> (objective, folds, tokens)
    states: dict[int, tuple[float, int, int]] = {-1: (0.0, 0, 0)}
    for q, end in enumerate(r.ends):
        best_before = min(states.values()) if q else None
        nxt: dict[int, tuple[float, int, int]] = {}
        for fold, (objective, folds, tokens) in states.items():
            sent = (
                cum[end] + priming
                if fold < 0
                else summary + cum[end] - cum[r.starts[fold]] + priming
            )
            nxt[fold] = (objective + sent, folds, tokens + sent)
        if best_before is not None:
            sent = summary + cum[end] - cum[r.starts[q]] + priming
            objective, folds, tokens = best_before
            nxt[q] = (objective + sent + price, folds + 1, tokens + sent)
        states = nxt
    _, folds, tokens = min(states.values())
    return tokens, folds


def _totals(replays: Sequence[_Replay], summary: int, price: float) -> dict[str, float]:
    full = sent = full20 = sent20 = transitions = folds = 0
    for r in replays:
        tokens, n_folds = _best(r, summary, price)
        full += r.full
        sent += tokens
        transitions += len(r.ends) - 1
        folds += n_folds
        if r.long:
            full20 += r.full
            sent20 += tokens
    return {
        "saved_fraction": round(1 - sent / full, 4) if full else 0.0,
        "saved_fraction_20plus": round(1 - sent20 / full20, 4) if full20 else 0.0,
        "prefix_stability": round(1 - folds / transitions, 4) if transitions else 1.0,
    }


def fold_bound(
    items: Sequence[tuple[Conversation, Sequence[int], Sequence[int]]],
    *,
    summary_tokens: Sequence[int] = (0, 40, 80),
    stability: float = 0.9,
) -> dict[str, object]:
    """The most any fold schedule saves at ``stability``, for each summary size.

    ``items`` are (conversation, prompt points, tokens of each message).
    """
    replays = [_replay(c, ends, tokens) for c, ends, tokens in items if ends]
    points = []
    for summary in summary_tokens:
        low, high = 0.0, 1.0
        while _totals(replays, summary, high)["prefix_stability"] < stability:
            high *= 4  # a price per fold high enough to meet the stability target
        for _ in range(_BISECT_STEPS):
            mid = (low + high) / 2
            if _totals(replays, summary, mid)["prefix_stability"] < stability:
                low = mid
            else:
                high = mid
        points.append({"summary_tokens": summary, **_totals(replays, summary, high)})
    return {"prefix_stability": stability, "points": points}
