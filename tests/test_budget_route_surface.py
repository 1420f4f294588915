"""Issue 15 for budget and routing: new names, one edge shape, declared state, ConfigError.

The old names (``budget_guard``, ``route_model``, ``route_by_model``, ``RouterMiddleware``,
``model_name_of``, ``call_model_name``) keep working and warn.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph

from graphthrift.budget import Budget, BudgetScopeMissing
from graphthrift.errors import BudgetScopeMissing as ErrorsBudgetScopeMissing
from graphthrift.errors import ConfigError
from graphthrift.langgraph.budget import (
    budget_guard,
    call_model_name,
    enforce_budget,
    route_on_budget,
)
from graphthrift.langgraph.cache import route_on_cache_hit
from graphthrift.langgraph.route import (
    RouteState,
    choose_model,
    route_by_model,
    route_model,
    route_on_model,
)
from graphthrift.middleware.budget import BudgetMiddleware, model_name_of
from graphthrift.middleware.route import ModelRoutingMiddleware, RouterMiddleware
from graphthrift.route import Router

from fakes import usage_model

CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"
ROUTE_KEYS = ("route", "route_model", "route_reason", "route_difficulty", "route_next")


def test_route_state_declares_every_key_choose_model_writes() -> None:
    declared = set(RouteState.__annotations__)
    assert {*ROUTE_KEYS, "route_calls"} <= declared


def test_a_graph_on_route_state_alone_routes_with_choose_model_and_route_on_model() -> None:
    """No hand-rolled schema: LangGraph would drop any key RouteState did not declare."""
    router = Router(CHEAP, STRONG)
    cheap = usage_model("Your balance is 12 euros.")
    strong = usage_model("strong answer", model_name=STRONG)
    builder = StateGraph(RouteState)
    builder.add_node("route", choose_model(router))
    builder.add_node("cheap", lambda s: {"messages": [cheap.invoke(s["messages"])]})
    builder.add_node("strong", lambda s: {"messages": [strong.invoke(s["messages"])]})
    builder.add_edge(START, "route")
    builder.add_conditional_edges("route", route_on_model("cheap", "strong"))
    builder.add_edge("cheap", "route")
    builder.add_edge("strong", "route")
    out = builder.compile().invoke({"messages": [HumanMessage("What is my balance?")]})
    assert [m.content for m in out["messages"]][-1] == "Your balance is 12 euros."
    assert out["route"] == "cheap" and out["route_model"] == CHEAP
    assert out["route_next"] == END
    assert isinstance(out["route_difficulty"], float)
    assert "route_reason" in out and out["route_calls"] == []


def test_the_three_edges_have_one_shape() -> None:
    """Destinations in, ``state -> node`` out; the terminal destination defaults to END."""
    on_cache = route_on_cache_hit("model")
    on_budget = route_on_budget("model")
    on_model = route_on_model("cheap", "strong")
    assert on_cache({"cache_hit": True}) == END and on_cache({"cache_hit": False}) == "model"
    assert on_budget({"budget_status": "ended"}) == END
    assert on_budget({"budget_status": "ok"}) == "model"
    assert on_model({"route_next": END, "route": "cheap"}) == END
    assert on_model({"route_next": CHEAP, "route": "cheap"}) == "cheap"
    assert on_model({"route_next": STRONG, "route": "escalated"}) == "strong"
    assert route_on_budget("model", "stop")({"budget_status": "ended"}) == "stop"
    assert route_on_model("a", "b", done="z")({"route_next": None}) == "z"
    with pytest.raises(ConfigError):
        route_on_model("", "strong")


def test_old_names_still_work_and_warn(store: Any) -> None:
    budget = Budget(store, max_tokens={"tenant": 10_000})
    with pytest.warns(DeprecationWarning, match="enforce_budget"):
        guard = budget_guard(budget, model=CHEAP)
    assert guard.model == CHEAP
    with pytest.warns(DeprecationWarning, match="choose_model"):
        route_model(Router(CHEAP, STRONG))
    with pytest.warns(DeprecationWarning, match="route_on_model"):
        assert route_by_model({"route_next": CHEAP}) == CHEAP
    with pytest.warns(DeprecationWarning, match="route_on_budget"):
        assert route_on_budget({"budget_status": "ended"}) == "end"
    with pytest.warns(DeprecationWarning, match="ModelRoutingMiddleware"):
        old = RouterMiddleware(
            Router(CHEAP, STRONG), cheap_model=usage_model(), strong_model=usage_model()
        )
    assert isinstance(old, ModelRoutingMiddleware)
    answer = AIMessage("hi", response_metadata={"model_name": STRONG})
    with pytest.warns(DeprecationWarning, match="answered_by"):
        assert call_model_name(answer) == STRONG
    with pytest.warns(DeprecationWarning, match="model_name"):
        assert model_name_of(usage_model(model_name=STRONG)) == STRONG
    nameless = usage_model()
    nameless.model_name = ""
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="model name"):
        model_name_of(nameless)


def test_cheaper_model_is_a_chat_model(store: Any) -> None:
    budget = Budget(store, max_tokens={"tenant": 10_000})
    guard = enforce_budget(budget, model=STRONG, cheaper_model=usage_model(model_name=CHEAP))
    assert guard.cheaper_model == CHEAP
    with pytest.warns(DeprecationWarning, match="chat model"):
        assert enforce_budget(budget, model=STRONG, cheaper_model=CHEAP).cheaper_model == CHEAP
    nameless = usage_model()
    nameless.model_name = ""
    with pytest.raises(ConfigError, match="cheaper_model"):
        enforce_budget(budget, model=STRONG, cheaper_model=nameless)


def test_conflicting_arguments_raise_config_error(store: Any) -> None:
    budget = Budget(store, max_tokens={"tenant": 10_000})
    guard = enforce_budget(budget, model=CHEAP)
    state: dict[str, Any] = {"messages": [], "budget_steps": [], "budget_run": {}}
    with pytest.raises(ConfigError, match="max_tokens_param"):
        guard.capped(usage_model(), state, max_tokens_param="max_tokens", param="max_completion")
    with pytest.warns(DeprecationWarning, match="max_tokens_param"):
        guard.capped(usage_model(), state, param="max_tokens")
    with pytest.raises(ConfigError, match="model_name"):
        BudgetMiddleware(budget, model=CHEAP, model_name=STRONG)
    with pytest.warns(DeprecationWarning, match="model="):
        assert BudgetMiddleware(budget, model_name=CHEAP).model_name == CHEAP
    assert BudgetMiddleware(budget, model=CHEAP).model_name == CHEAP


def test_budget_settings_and_tags_raise_config_error(store: Any, tenant: str) -> None:
    with pytest.raises(ConfigError) as info:
        Budget(store, max_usd={"planet": 1.0})
    assert info.value.value == "planet"
    with pytest.raises(ConfigError) as bad_type:
        Budget(store, max_request_usd=True)
    assert isinstance(bad_type.value, TypeError)  # as before: a wrong type is a TypeError
    with pytest.raises(ConfigError, match="need a store"):
        Budget(max_usd={"tenant": 1.0})
    budget = Budget(store, max_tokens={"tenant": 10_000})
    with pytest.raises(ConfigError, match="tenant"):
        budget.usage(tenant=tenant)  # type: ignore[call-arg]  # the tag is tenant_id
    with pytest.raises(ConfigError, match="tag"):
        budget.reserve(CHEAP, [HumanMessage("hi")], tag={"tenant_id": tenant})  # type: ignore[call-arg]
    reservation = budget.reserve(CHEAP, [HumanMessage("hi")], tags={"tenant_id": tenant})
    budget.settle(reservation, input_tokens=5, output_tokens=5)
    assert budget.usage(tenant_id=tenant)["tenant"]["spent_tokens"] == 10
    assert budget.usage({"tenant_id": tenant})["tenant"]["spent_tokens"] == 10


def test_budget_scope_missing_lives_in_errors() -> None:
    assert BudgetScopeMissing is ErrorsBudgetScopeMissing


def test_budgeted_llm_takes_model_and_refuses_two_names(store: Any) -> None:
    from llama_index.core.llms import MockLLM

    from graphthrift.llamaindex.budget import BudgetedLLM

    budget = Budget(store, max_tokens={"tenant": 10_000})
    assert BudgetedLLM(llm=MockLLM(), budget=budget, model=CHEAP)._name == CHEAP
    with pytest.warns(DeprecationWarning, match="model="):
        assert BudgetedLLM(llm=MockLLM(), budget=budget, model_name=CHEAP)._name == CHEAP
    with pytest.raises(ConfigError, match="model_name"):
        BudgetedLLM(llm=MockLLM(), budget=budget, model=CHEAP, model_name=STRONG)
