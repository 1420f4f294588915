"""Run tags bound by callbacks never outlive their call, whatever order the calls end in.

Two callback handlers (a user's ``CostTagger`` and graphthrift's own) see a model call's start
and end in the same order, so their bindings end first-in first-out, not last-in first-out.
A context variable reset by token restores the value from before *that* binding: the tags of
the first call stayed bound after both ended, and the next call with no tenant was looked up
under the previous caller's tenant.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

from graphthrift.kernel import (
    bind_run_tags,
    current_run_tags,
    run_tags,
    scoped,
    unbind_run_tags,
)
from graphthrift.langchain.callbacks import CostTagger


class _NoLedger:
    def record(self, record: Any) -> None:
        pass

    def record_deferred(self, build: Any) -> None:
        pass


def test_bindings_ended_first_in_first_out_leave_nothing_bound() -> None:
    first = bind_run_tags({"tenant_id": "acme"})
    second = bind_run_tags({"route": "cheap"})
    assert current_run_tags() == {"tenant_id": "acme", "route": "cheap"}
    unbind_run_tags(first)
    assert current_run_tags() == {"route": "cheap"}
    unbind_run_tags(second)
    assert not current_run_tags()


def test_two_cost_taggers_on_one_call_leave_no_tenant_bound() -> None:
    model = GenericFakeChatModel(messages=iter(["one", "two"]))
    config: Any = {
        "metadata": {"tenant_id": "acme", "route": "cheap"},
        "callbacks": [CostTagger(_NoLedger()), CostTagger(_NoLedger())],
    }
    model.invoke("hi", config)
    assert not current_run_tags()


def test_scoped_blocks_still_nest_and_unwind() -> None:
    with scoped(tenant_id="acme"):
        with scoped(user_id="alice"):
            assert current_run_tags() == {"tenant_id": "acme", "user_id": "alice"}
        assert current_run_tags() == {"tenant_id": "acme"}
    assert not current_run_tags()


def test_concurrent_tasks_never_see_each_others_tags() -> None:
    async def one(tenant: str) -> Any:
        binding = bind_run_tags({"tenant_id": tenant})
        await asyncio.sleep(0)
        seen = dict(current_run_tags() or {})
        unbind_run_tags(binding)
        return seen

    async def main() -> list[Any]:
        return await asyncio.gather(*(one(f"t{i}-{uuid.uuid4().hex[:4]}") for i in range(8)))

    results = asyncio.run(main())
    assert len({r["tenant_id"] for r in results}) == 8


def test_one_cost_tagger_listed_twice_binds_the_call_once() -> None:
    tagger = CostTagger(_NoLedger())
    model = GenericFakeChatModel(messages=iter(["one"]))
    config: Any = {"metadata": {"tenant_id": "acme"}, "callbacks": [tagger, tagger]}
    model.invoke("hi", config)
    assert not current_run_tags()


class _Recording:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def record(self, record: Any) -> None:
        self.rows.append(record)

    def record_deferred(self, build: Any) -> None:
        self.rows.append(build())


def _graph(seen: list[Any], fail: bool = False) -> Any:
    from langgraph.config import get_config
    from langgraph.graph import START, MessagesState, StateGraph

    model = GenericFakeChatModel(messages=iter(["one", "two", "three", "four"]))

    def agent(state: MessagesState) -> dict[str, Any]:
        seen.append(run_tags(get_config()))  # what middleware and cache nodes book with
        if fail:
            raise RuntimeError("node failed")
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_edge(START, "agent")
    return graph.compile()


@pytest.mark.parametrize("how", ["invoke", "stream", "ainvoke", "astream"])
@pytest.mark.parametrize("fail", [False, True])
def test_a_node_reads_its_graph_run_id_and_nothing_stays_bound_after_the_run(
    how: str, fail: bool
) -> None:
    """Middleware and cache nodes book rows (a cache hit, a refusal) with ``run_tags`` of
    the node's config: they must name the run the call rows name. Nothing may stay bound
    in the caller's context after the run (a root binding did, after async runs)."""
    seen: list[Any] = []
    ledger = _Recording()
    graph = _graph(seen, fail)
    config: Any = {"callbacks": [CostTagger(ledger)], "metadata": {"tenant_id": "acme"}}
    inputs = {"messages": [("user", "hi")]}
    after: list[Any] = []

    async def run_async() -> None:
        try:
            if how == "ainvoke":
                await graph.ainvoke(inputs, config)
            else:
                async for _ in graph.astream(inputs, config):
                    pass
        finally:
            after.append(current_run_tags())  # in the task that ran the graph

    try:
        if how == "invoke":
            graph.invoke(inputs, config)
        elif how == "stream":
            for _ in graph.stream(inputs, config):
                pass
        else:
            asyncio.run(run_async())
    except RuntimeError:
        assert fail
    after.append(current_run_tags())
    assert not any(after), after
    assert seen and seen[0].get("run_id")
    if not fail:
        [row] = ledger.rows
        assert row.run_id == seen[0]["run_id"]
