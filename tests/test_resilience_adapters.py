"""Single-flight and request-id dedup inside real LangGraph graphs and create_agent agents."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import START, MessagesState, StateGraph

from graphthrift import Ledger, Store
from graphthrift.errors import RequestIdConflict
from graphthrift.langgraph import SingleFlightModel, dedup_requests
from graphthrift.middleware import ResilienceMiddleware
from graphthrift.resilience import RequestDedup, SingleFlight

from fakes import UsageFakeChatModel, usage_model


class GatedModel(UsageFakeChatModel):
    """Answers only once ``gate()`` is true, counting every provider call."""

    calls: list[int] = []  # noqa: RUF012 - a pydantic field, copied per instance
    gate: Any = None

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Any:
        self.calls.append(1)
        deadline = time.monotonic() + 60
        while self.gate is not None and not self.gate() and time.monotonic() < deadline:
            time.sleep(0.01)
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def gated(text: str = "Freeze it in the app.", **kwargs: Any) -> GatedModel:
    base = usage_model(text, input_tokens=800, output_tokens=60, **kwargs)
    return GatedModel(messages=base.messages, usage=base.usage, model_name=base.model_name)


def _threads(n: int, target: Any) -> None:
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_single_flight_model_in_concurrent_graph_runs(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    flight = SingleFlight(store, ledger=ledger)
    raw = gated()
    model = SingleFlightModel(raw, flight)
    raw.gate = lambda: flight.engine.waiting() == 9

    def answer(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"], config)]}

    graph = StateGraph(MessagesState).add_node("answer", answer)
    graph.add_edge(START, "answer")
    app = graph.compile()
    outputs: list[str] = []

    def run() -> None:
        out = app.invoke(
            {"messages": [HumanMessage("How do I freeze my card?")]},  # a fresh id each time
            {"metadata": {"tenant_id": tenant, "feature": "faq"}},
        )
        outputs.append(out["messages"][-1].content)

    _threads(10, run)
    assert len(raw.calls) == 1
    assert outputs == ["Freeze it in the app."] * 10
    ledger.flush()
    rows = ledger.records(tenant_id=tenant, kind="dedup")
    assert len(rows) == 9 and all(r["saved_usd"] > 0 for r in rows)
    assert {r["feature"] for r in rows} == {"faq"}


def test_messages_are_handed_over_between_processes(store: Store, tenant: str) -> None:
    """Two SingleFlights share nothing in memory, as two processes: only the store."""
    raw = gated()
    leader = SingleFlightModel(raw, SingleFlight(store))
    other_flight = SingleFlight(store, poll_interval=0.01)
    follower = SingleFlightModel(raw, other_flight)
    raw.gate = lambda: other_flight.engine.stats.shared_store > 0 or follower_waiting.is_set()
    follower_waiting = threading.Event()
    config = {"metadata": {"tenant_id": tenant}}
    got: dict[str, Any] = {}

    def lead() -> None:
        got["leader"] = leader.invoke([HumanMessage("hi")], config)

    t = threading.Thread(target=lead)
    t.start()
    while not raw.calls:
        time.sleep(0.01)
    timer = threading.Timer(0.3, follower_waiting.set)  # let the follower find the lock held
    timer.start()
    got["follower"] = follower.invoke([HumanMessage("hi")], config)
    t.join(60)
    assert len(raw.calls) == 1
    assert isinstance(got["follower"], AIMessage)
    assert got["follower"].content == got["leader"].content
    assert got["follower"].usage_metadata == got["leader"].usage_metadata
    assert other_flight.stats.shared_store == 1


def test_agent_run_is_deduplicated_by_request_id(store: Store, ledger: Ledger, tenant: str) -> None:
    raw = gated("Card frozen.")
    agent = dedup_requests(create_agent(raw, tools=[]), RequestDedup(store, ledger=ledger))
    config = {"metadata": {"tenant_id": tenant, "request_id": "req-1"}}
    first = agent.invoke({"messages": [HumanMessage("Freeze my card")]}, config)
    retry = agent.invoke({"messages": [HumanMessage("Freeze my card")]}, config)
    assert len(raw.calls) == 1
    assert [m.content for m in retry["messages"]] == [m.content for m in first["messages"]]
    assert isinstance(retry["messages"][-1], AIMessage)
    with pytest.raises(RequestIdConflict):
        agent.invoke({"messages": [HumanMessage("Close my account")]}, config)
    no_id = agent.invoke(
        {"messages": [HumanMessage("Freeze my card")]}, {"metadata": {"tenant_id": tenant}}
    )
    assert no_id["messages"][-1].content == "Card frozen." and len(raw.calls) == 2
    ledger.flush()
    (row,) = ledger.records(tenant_id=tenant, kind="dedup")
    assert row["layer"] == "request_id"


def test_middleware_makes_one_call_for_concurrent_agents(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    flight = SingleFlight(store, ledger=ledger)
    raw = gated("Use the app.")
    raw.gate = lambda: flight.engine.waiting() == 7
    agent = create_agent(raw, tools=[], middleware=[ResilienceMiddleware(flight)])
    outputs: list[str] = []

    def run() -> None:
        out = agent.invoke(
            {"messages": [HumanMessage("How do I freeze my card?")]},
            {"metadata": {"tenant_id": tenant}},
        )
        outputs.append(out["messages"][-1].content)

    _threads(8, run)
    assert len(raw.calls) == 1
    assert outputs == ["Use the app."] * 8
    ledger.flush()
    assert len(ledger.records(tenant_id=tenant, kind="dedup")) == 7


def test_middleware_async_agents_share_one_call(store: Store, tenant: str) -> None:
    flight = SingleFlight(store)
    raw = gated("Async answer.")
    raw.gate = lambda: flight.engine.waiting() == 5
    agent = create_agent(raw, tools=[], middleware=[ResilienceMiddleware(flight)])

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *(
                agent.ainvoke(
                    {"messages": [HumanMessage("same question")]},
                    {"metadata": {"tenant_id": tenant}},
                )
                for _ in range(6)
            )
        )

    outs = asyncio.run(burst())
    assert len(raw.calls) == 1
    assert [o["messages"][-1].content for o in outs] == ["Async answer."] * 6


def test_streaming_callers_get_the_full_answer_once(store: Store, tenant: str) -> None:
    flight = SingleFlight(store)
    raw = gated("The whole answer.")
    raw.gate = lambda: flight.engine.waiting() == 3
    model = SingleFlightModel(raw, flight)
    streamed: list[str] = []

    def stream() -> None:
        chunks = list(model.stream([HumanMessage("q")], {"metadata": {"tenant_id": tenant}}))
        streamed.append("".join(str(c.content) for c in chunks))

    _threads(4, stream)
    assert len(raw.calls) == 1
    assert streamed == ["The whole answer."] * 4


def test_request_id_from_a_forwarded_header(store: Store, tenant: str) -> None:
    raw = gated("Header answer.")
    agent = dedup_requests(create_agent(raw, tools=[]), RequestDedup(store))
    config = {"metadata": {"tenant_id": tenant}, "configurable": {"x-request-id": "hdr-1"}}
    first = agent.invoke({"messages": [HumanMessage("q")]}, config)
    retry = agent.invoke({"messages": [HumanMessage("q")]}, config)
    assert len(raw.calls) == 1
    assert retry["messages"][-1].content == first["messages"][-1].content == "Header answer."


@pytest.mark.parametrize("where", ["metadata", "header"])
def test_middleware_serves_a_retried_request_its_stored_model_answers(
    store: Store, ledger: Ledger, tenant: str, where: str
) -> None:
    """A client that retries a request (same request id, in the run's metadata or in a
    request header LangGraph's server forwards into ``configurable``) gets the answers its
    first attempt already paid for; another request id calls the model again."""
    raw = gated()
    dedup = RequestDedup(store, ledger=ledger)
    agent = create_agent(
        raw, tools=[], middleware=[ResilienceMiddleware(request_dedup=dedup, header="X-Request-Id")]
    )

    def run(request_id: str) -> str:
        config: dict[str, Any] = {"metadata": {"tenant_id": tenant}}
        if where == "metadata":
            config["metadata"]["request_id"] = request_id
        else:
            config["configurable"] = {"x-request-id": request_id}
        out = agent.invoke({"messages": [HumanMessage("How do I freeze my card?")]}, config)
        return str(out["messages"][-1].content)

    first = run(f"{tenant}-r1")
    assert run(f"{tenant}-r1") == first  # the retry
    assert len(raw.calls) == 1
    run(f"{tenant}-r2")
    assert len(raw.calls) == 2
    ledger.flush()
    dedups = [r for r in ledger.records(tenant_id=tenant) if r["kind"] == "dedup"]
    assert len(dedups) == 1 and dedups[0]["saved_usd"] > 0
