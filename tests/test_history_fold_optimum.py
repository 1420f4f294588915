"""The online fold policy against the offline optimum, on effective cost (issue 16 item 2).

The offline reference is the fold-ceiling programme of ``graphthrift.bench._history_bound``
(its replay: prompt points, where each prompt's request begins, cumulative tokens), solved
here for effective cost instead of tokens: with the whole conversation known, choose the
fold points that minimise what the provider bills (cached reads, cache writes, list) with
every prompt within the budget, and a fold's summary as large as what it folds, up to the
pruner's summary cap (the most the online pruner's summary may hold).
The online pruner is replayed on the same conversations and priced by ``price_turns``.

Run with ``-s`` to see the figures: ``online / optimum`` per price model and data set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from graphthrift.bench._data_history import Conversation, load_default_sets
from graphthrift.bench._history_bound import _replay
from graphthrift.bench.history import prompt_points
from graphthrift.bench.longthread import build_long_threads
from graphthrift.history.fold_cost import CachePricing
from graphthrift.history.pricing import (
    DEFAULT_PRICE_MODELS,
    PromptCacheRules,
    cache_rules_for,
    effective_cost_usd,
    turns_from_messages,
)
from graphthrift.history.pruner import HistoryPruner
from graphthrift.text.messages import Message
from graphthrift.text.tokens import TOKENS_REPLY_PRIMING, count_messages


def _online(conv: Conversation, pruner: HistoryPruner) -> list[list[dict[str, str]]]:
    """The prompts the pruner sends at each prompt point."""
    history = [
        {"role": t.role, "content": t.content, "id": f"m{k}"} for k, t in enumerate(conv.turns)
    ]
    state = None
    prompts: list[list[dict[str, str]]] = []
    for end in prompt_points(conv):
        result = pruner.prune(history[:end], state)
        state = result.state
        assert result.tokens_out <= pruner.max_tokens or result.over_budget
        prompts.append([{"role": m.role, "content": m.text} for m in result.messages])
    return prompts


def _turn_usd(p: CachePricing, rules: PromptCacheRules, size: int, shared: int, prev: int) -> float:
    """One prompt billed as ``price_turns`` bills it."""
    cached = 0
    if size >= rules.min_cacheable_tokens and prev >= rules.min_cacheable_tokens:
        cached = min(shared, prev) // rules.increment_tokens * rules.increment_tokens
        cached = cached if cached >= rules.min_cacheable_tokens else 0
    written = size - cached if size >= rules.min_cacheable_tokens and rules.writes_cached else 0
    rest = size - cached - written
    return cached * p.cached_read_usd + written * p.cache_write_usd + rest * p.input_usd


def _optimum(
    conv: Conversation, budget: int, cap: int, p: CachePricing, rules: PromptCacheRules
) -> float:
    """The cheapest fold schedule in effective cost, knowing the whole conversation."""
    tokens = [
        count_messages([Message(t.role, t.content)], reply_priming=False).tokens for t in conv.turns
    ]
    r = _replay(conv, prompt_points(conv), tokens)
    cum, priming = r.cumulative, TOKENS_REPLY_PRIMING
    # last fold point (-1: none) -> (cost so far, size of the last prompt)
    states: dict[int, tuple[float, int]] = {-1: (0.0, 0)}
    for q, end in enumerate(r.ends):
        nxt: dict[int, tuple[float, int]] = {}
        for fold, (cost, prev) in states.items():
            size = (
                cum[end] + priming
                if fold < 0
                else min(cap, cum[r.starts[fold]]) + cum[end] - cum[r.starts[fold]] + priming
            )
            if size <= budget:
                nxt[fold] = (cost + _turn_usd(p, rules, size, prev - priming, prev), size)
        if states:
            cost, _ = min(states.values())
            size = min(cap, cum[r.starts[q]]) + cum[end] - cum[r.starts[q]] + priming
            nxt[q] = (cost + _turn_usd(p, rules, size, 0, 0), size)  # the cache misses once
        states = nxt
    return min(c for c, _ in states.values())


def _compare(convs: Sequence[Conversation], budget: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for model in DEFAULT_PRICE_MODELS:
        pricing, rules = CachePricing.for_model(model), cache_rules_for(model)
        online = {"cost": 0.0, "budget": 0.0}
        optimum = 0.0
        for conv in convs:
            costs: dict[str, float] = {}
            cap = 0
            for policy in ("cost", "budget"):
                pruner = HistoryPruner(max_tokens=budget, price_model=model, fold_policy=policy)  # type: ignore[arg-type]
                costs[policy] = effective_cost_usd(
                    turns_from_messages(_online(conv, pruner)), model
                )
                cap = pruner.max_summary_tokens
            online = {k: online[k] + costs[k] for k in online}
            optimum += _optimum(conv, budget, cap, pricing, rules)
        out[model] = {
            "online_cost_policy_usd": online["cost"],
            "online_budget_policy_usd": online["budget"],
            "offline_optimum_usd": optimum,
            "online_over_optimum": online["cost"] / optimum,
        }
    return out


@pytest.mark.parametrize("budget", [384, 1024])
def test_online_policy_against_the_offline_optimum_on_sgd(bench_data: Path, budget: int) -> None:
    convs = load_default_sets(bench_data, limit=12)["sgd_test"]
    figures = _compare(convs, budget)
    print(f"\nsgd_test x{len(convs)} at {budget} tokens:", figures)
    for model, f in figures.items():
        # the optimum folds to the bare request whenever that is cheapest (it keeps no
        # window, so it loses what the online pruner keeps): it is the floor, not a peer
        assert 0 < f["offline_optimum_usd"] <= f["online_cost_policy_usd"], (model, f)
        # folding by cost never costs more than folding by budget alone (small noise allowed)
        assert f["online_cost_policy_usd"] <= f["online_budget_policy_usd"] * 1.01, (model, f)


def test_online_policy_against_the_offline_optimum_on_long_threads(bench_data: Path) -> None:
    threads = build_long_threads(2, root=bench_data)
    convs = [t.as_conversation() for t in threads]
    figures = _compare(convs, 8192)
    print(f"\nlong threads x{len(convs)} at 8192 tokens:", figures)
    for model, f in figures.items():
        assert f["offline_optimum_usd"] > 0, model
        assert f["online_cost_policy_usd"] <= f["online_budget_policy_usd"] * 1.01, (model, f)
