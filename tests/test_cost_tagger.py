"""CostTagger: one correct record per LLM call, for every way LangChain and LangGraph run."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph

from graphthrift import CostTagger, Ledger, diagnostics
from graphthrift.ledger import cost_usd

from fakes import RateLimitError, UpstreamError, flaky_model, triage_answer_graph, usage_model


def _records(ledger: Ledger, tenant: str) -> list[dict[str, Any]]:
    ledger.flush()
    return ledger.records(tenant_id=tenant)


def _config(tagger: CostTagger, tenant: str, **meta: Any) -> Any:
    return {"callbacks": [tagger], "metadata": {"tenant_id": tenant, **meta}}


def test_langgraph_nodes_threads_and_tags(ledger: Ledger, tenant: str) -> None:
    app = triage_answer_graph(checkpointer=InMemorySaver())
    tagger = CostTagger(ledger, feature="support", prompt_version="v1")
    config = {
        **_config(tagger, tenant, prompt_version="v2"),
        "configurable": {"thread_id": "thread-7"},
    }
    app.invoke({"messages": [("user", "my card was declined")]}, config=config)

    rows = {r["node"]: r for r in _records(ledger, tenant)}
    assert set(rows) == {"triage", "answer"}
    assert rows["answer"]["model"] == "gpt-4o" and rows["triage"]["model"] == "gpt-4o-mini"
    assert rows["answer"]["cached_tokens"] == 1024
    assert rows["answer"]["cost_usd"] == pytest.approx(cost_usd("gpt-4o", 1500, 400, 1024))
    for row in rows.values():
        assert row["thread_id"] == "thread-7"
        assert row["feature"] == "support"  # default tag
        assert row["prompt_version"] == "v2"  # run metadata beats the default
        assert row["usage_source"] == "provider" and row["success"]
        assert row["latency_ms"] is not None and row["latency_ms"] >= 0
    assert rows["triage"]["run_id"] == rows["answer"]["run_id"]  # one graph run
    report = {r["node"]: r for r in ledger.report(["node"], tenant_id=tenant)}
    assert report["answer"]["cost_usd"] > report["triage"]["cost_usd"]


@pytest.mark.parametrize(
    "mode", ["invoke", "batch", "stream", "astream", "ainvoke", "astream_events", "abatch"]
)
def test_every_invocation_mode_records_provider_usage(
    ledger: Ledger, tenant: str, mode: str
) -> None:
    model = usage_model(input_tokens=250, output_tokens=30, reasoning=12, model_name="o3-mini")
    config = _config(CostTagger(ledger), tenant)
    if mode == "invoke":
        model.invoke("q", config=config)
    elif mode == "batch":
        model.batch(["q1", "q2", "q3"], config=config)
    elif mode == "stream":
        assert (
            "".join(str(c.content) for c in model.stream("q", config=config)) == "The answer is 42."
        )
    else:

        async def run() -> None:
            if mode == "astream":
                async for _ in model.astream("q", config=config):
                    pass
            elif mode == "ainvoke":
                await model.ainvoke("q", config=config)
            elif mode == "abatch":
                await model.abatch(["q1", "q2"], config=config)
            else:
                async for _ in model.astream_events("q", config=config, version="v2"):
                    pass

        asyncio.run(run())
    rows = _records(ledger, tenant)
    expected_calls = {"batch": 3, "abatch": 2}.get(mode, 1)
    assert len(rows) == expected_calls
    for row in rows:
        assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (250, 30, 12)
        assert row["usage_source"] == "provider"
        assert row["model"] == "o3-mini"
        assert row["cost_usd"] == pytest.approx(cost_usd("o3-mini", 250, 30))
        assert row["streamed"] == (mode in ("stream", "astream", "astream_events"))


def test_stream_without_usage_is_estimated_where_langchain_reports_nothing(
    ledger: Ledger, tenant: str
) -> None:
    message = AIMessage(
        "A fairly long answer about refunds and chargebacks.",
        response_metadata={"model_name": "gpt-4o-mini"},
    )
    model = GenericFakeChatModel(messages=itertools.repeat(message))
    peer = UsageMetadataCallbackHandler()
    config = _config(CostTagger(ledger), tenant)
    config["callbacks"].append(peer)
    for _ in model.stream("How do chargebacks work for card payments?", config=config):
        pass
    (row,) = _records(ledger, tenant)
    assert peer.usage_metadata == {}  # the peer saw zero tokens
    assert row["usage_source"] == "estimated"
    assert row["input_tokens"] > 5 and row["output_tokens"] > 5
    assert row["streamed"]


def test_retries_are_extra_records_with_the_retry_flag(ledger: Ledger, tenant: str) -> None:
    model = flaky_model(
        RateLimitError("slow down"), UpstreamError("overloaded"), input_tokens=100, output_tokens=10
    )
    retrying = model.with_retry(stop_after_attempt=3, wait_exponential_jitter=False)
    retrying.invoke("hello", config=_config(CostTagger(ledger), tenant))
    rows = sorted(_records(ledger, tenant), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["retry"], r["success"], r["error_type"]) for r in rows] == [
        (1, False, False, "rate_limit"),
        (2, True, False, "upstream"),
        (3, True, True, None),
    ]
    assert rows[2]["cost_usd"] > 0 and rows[0]["cost_usd"] == 0
    retry_cost = sum(r["cost_usd"] for r in rows if r["retry"])
    assert retry_cost == pytest.approx(rows[2]["cost_usd"])


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TimeoutError("t"), "timeout"),
        (ValueError("bad"), "other"),
        (UpstreamError("x"), "upstream"),
    ],
)
def test_failed_calls_are_classified(
    ledger: Ledger, tenant: str, error: Exception, kind: str
) -> None:
    with pytest.raises(type(error)):
        flaky_model(error).invoke("x", config=_config(CostTagger(ledger), tenant))
    (row,) = _records(ledger, tenant)
    assert not row["success"] and row["error_type"] == kind


def test_bad_provider_usage_is_estimated_and_counted(ledger: Ledger, tenant: str) -> None:
    before = diagnostics.get("bad_usage")
    config = _config(CostTagger(ledger), tenant)
    usage_model(input_tokens=-40, output_tokens=7).invoke("how many tokens?", config=config)
    usage_model(input_tokens=10**11, output_tokens=7).invoke("how many tokens?", config=config)
    usage_model(input_tokens=50, output_tokens=7).invoke("a fine call", config=config)
    rows = _records(ledger, tenant)
    assert len(rows) == 3  # no record lost
    sources = sorted(r["usage_source"] for r in rows)
    assert sources == ["estimated", "estimated", "provider"]
    assert all(0 < r["input_tokens"] < 1000 for r in rows)
    assert diagnostics.get("bad_usage") >= before + 2


def test_metadata_of_the_wrong_type_is_coerced_or_dropped(ledger: Ledger, tenant: str) -> None:
    before = diagnostics.get("bad_tag_type")
    config = {
        "callbacks": [CostTagger(ledger)],
        "metadata": {"tenant_id": tenant, "feature": {"nested": 1}, "prompt_version": 3},
    }
    usage_model().invoke("x", config=config)
    (row,) = _records(ledger, tenant)
    assert row["feature"] is None and row["prompt_version"] == "3"
    assert diagnostics.get("bad_tag_type") == before + 1


def test_unknown_model_and_empty_content(ledger: Ledger, tenant: str) -> None:
    before = diagnostics.get("unknown_model_price")
    model = usage_model("", input_tokens=12, output_tokens=0, model_name="acme-internal-llm")
    model.invoke("", config=_config(CostTagger(ledger), tenant))
    (row,) = _records(ledger, tenant)
    assert row["cost_usd"] is None and row["model"] == "acme-internal-llm"
    assert diagnostics.get("unknown_model_price") > before


def test_default_model_prices_fake_models(ledger: Ledger, tenant: str) -> None:
    model = GenericFakeChatModel(messages=itertools.repeat(AIMessage("ok")))
    model.invoke("hello", config=_config(CostTagger(ledger, model="gpt-4o-mini"), tenant))
    (row,) = _records(ledger, tenant)
    assert (
        row["model"] == "gpt-4o-mini" and row["cost_usd"] > 0 and row["usage_source"] == "estimated"
    )


def test_unknown_default_tag_is_refused(ledger: Ledger) -> None:
    with pytest.raises(TypeError, match="colour"):
        CostTagger(ledger, colour="blue")


def test_graph_astream_events_in_concurrent_tasks(ledger: Ledger, tenant: str) -> None:
    model = usage_model(input_tokens=90, output_tokens=9)

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_edge(START, "agent")
    app = graph.compile()
    tagger = CostTagger(ledger)

    async def one(i: int) -> None:
        config = {
            "callbacks": [tagger],
            "metadata": {"tenant_id": tenant, "feature": f"f{i % 2}"},
            "configurable": {"thread_id": f"th{i}"},
        }
        async for _ in app.astream_events(
            {"messages": [("user", f"q{i}")]}, config=config, version="v2"
        ):
            pass

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(8)))

    asyncio.run(main())
    rows = _records(ledger, tenant)
    assert len(rows) == 8
    assert {r["thread_id"] for r in rows} == {f"th{i}" for i in range(8)}
    assert len({r["run_id"] for r in rows}) == 8
    assert {r["node"] for r in rows} == {"agent"}


def test_a_bad_tag_falls_back_to_the_default(ledger: Ledger, tenant: str) -> None:
    config = {
        "callbacks": [CostTagger(ledger, feature="billing")],
        "metadata": {"tenant_id": tenant, "feature": ["a", "list"]},
    }
    usage_model().invoke("x", config=config)
    (row,) = _records(ledger, tenant)
    assert row["feature"] == "billing"


def test_calls_booked_by_graphthrift_itself_are_not_counted_twice(
    ledger: Ledger, tenant: str
) -> None:
    from graphthrift.summarize import ChatModelSummarizer

    model = usage_model("Summary: order A-1 ships Friday.", input_tokens=300, output_tokens=12)
    summarizer = ChatModelSummarizer(model, max_output_tokens=64, ledger=ledger, tenant_id=tenant)
    from graphthrift.text import Message

    # A tagger on the same model (e.g. through global callbacks) must skip the summary call.
    model.callbacks = [CostTagger(ledger, tenant_id=tenant)]
    summarizer.summarize([Message("user", "Order A-1 ships Friday.")], "", 64)
    rows = _records(ledger, tenant)
    assert len(rows) == 1 and rows[0]["route"] == "summary"


def test_a_cache_sees_each_calls_own_tags_though_they_are_read_late(
    ledger: Ledger, tenant: str
) -> None:
    """The tagger binds a call's tags for our ``BaseCache`` and they are worked out only
    when read: each call must still see its own metadata (changed between calls), the
    tags bound around it, and its own run id, and nothing may stay bound after it."""
    import uuid

    from langchain_core.caches import BaseCache

    from graphthrift.kernel import current_run_tags, scoped

    class SeeingCache(BaseCache):
        def __init__(self) -> None:
            self.seen: list[dict[str, Any]] = []

        def lookup(self, prompt: str, llm_string: str) -> Any:
            self.seen.append(dict(current_run_tags() or {}))
            return None

        def update(self, prompt: str, llm_string: str, return_val: Any) -> None:
            pass

        def clear(self, **kwargs: Any) -> None:
            pass

    cache = SeeingCache()
    model = GenericFakeChatModel(messages=itertools.repeat(AIMessage("ok")), cache=cache)
    tagger = CostTagger(ledger, feature="support", model="gpt-4o-mini")
    runs = [uuid.uuid4(), uuid.uuid4()]
    metadata: dict[str, Any] = {"tenant_id": tenant, "scope": "team-a", "route": "cheap"}
    with scoped(user_id="alice", route="outer", prompt_version="p0"):
        model.invoke("q", config={"callbacks": [tagger], "metadata": metadata, "run_id": runs[0]})
        metadata = {"tenant_id": f"{tenant}-b", "feature": "billing"}  # the next call's
        model.invoke("q", config={"callbacks": [tagger], "metadata": metadata, "run_id": runs[1]})
    assert not current_run_tags()
    assert cache.seen == [
        {
            "tenant_id": tenant,
            "feature": "support",
            "route": "cheap",
            "scope": "team-a",
            "user_id": "alice",
            "prompt_version": "p0",
            "run_id": str(runs[0]),
        },
        {
            "tenant_id": f"{tenant}-b",
            "feature": "billing",
            "route": "outer",
            "user_id": "alice",
            "prompt_version": "p0",
            "run_id": str(runs[1]),
        },
    ]
    rows = _records(ledger, tenant) + _records(ledger, f"{tenant}-b")
    assert [r["run_id"] for r in rows] == [str(r) for r in runs]


def test_tags_bound_for_a_call_are_those_of_its_start_whenever_they_are_read() -> None:
    """``bind_config_tags`` (what the tagger binds) works the tags out at the first read:
    they must be what ``run_tags`` gave when the call started, though the tags bound
    beneath ended and others were bound over it since, and a config without a run id
    (whose root run comes from its handlers) gives what ``run_tags`` gives."""
    import uuid

    from graphthrift.kernel import (
        bind_config_tags,
        bind_run_tags,
        current_run_tags,
        run_tags,
        scoped,
        unbind_run_tags,
    )

    root = uuid.uuid4()
    config: dict[str, Any] = {
        "metadata": {"tenant_id": "acme", "scope": "team-a", "thread_id": 7, "route": ""},
        "run_id": root,
    }
    with scoped(user_id="alice", route="outer"):
        expected = {**run_tags(config, feature="faq"), "scope": "team-a"}
        binding = bind_config_tags(config, keep=("scope",), feature="faq")
    later = bind_run_tags({"route": "later", "tenant_id": "other"})
    assert binding.tags == expected
    assert expected == {
        "tenant_id": "acme",
        "user_id": "alice",
        "feature": "faq",
        "route": "outer",
        "thread_id": "7",
        "run_id": str(root),
        "scope": "team-a",
    }
    assert current_run_tags() == {**expected, "route": "later", "tenant_id": "other"}
    unbind_run_tags(later)
    unbind_run_tags(binding)
    assert not current_run_tags()

    no_run = {"metadata": {"tenant_id": "acme", "scope": ""}}
    binding = bind_config_tags(no_run, keep=("scope",))
    assert binding.tags == run_tags(no_run) == {"tenant_id": "acme"}
    unbind_run_tags(binding)
