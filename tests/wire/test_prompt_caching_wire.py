"""Anthropic prompt caching composed with our history pruning, checked on the request body.

Anthropic allows at most 4 cache breakpoints per request, and a breakpoint on a message that
pruning rewrites (the summary) would write a new cache entry at every fold for nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from test_cost_tagger_wire import anthropic_chat
from wire_server import WireServer

from graphthrift.middleware import HistoryPruningMiddleware

pytest.importorskip("langchain_anthropic.middleware")
from langchain_anthropic.middleware import AnthropicPromptCachingMiddleware


@tool
def lookup_order(order: int) -> str:
    """Look up an order."""
    return "shipped"


def _history(turns: int) -> list[Any]:
    messages: list[Any] = []
    for i in range(turns):
        messages.append(HumanMessage(f"Turn {i}: where is order {1000 + i}? " + "detail " * 60))
        messages.append(
            AIMessage(
                "",
                tool_calls=[
                    {"name": "lookup_order", "args": {"order": 1000 + i}, "id": f"toolu_{i:04d}"}
                ],
            )
        )
        messages.append(ToolMessage("shipped " + "x " * 80, tool_call_id=f"toolu_{i:04d}"))
        messages.append(AIMessage(f"Order {1000 + i} has shipped."))
    messages.append(HumanMessage("And the last one?"))
    return messages


def _breakpoints(body: dict[str, Any]) -> list[str]:
    """Where the body puts cache_control: 'top', 'system', 'tools', or 'message:<i>'."""
    found = ["top"] if body.get("cache_control") else []
    system = body.get("system")
    if isinstance(system, list):
        found += ["system" for block in system if block.get("cache_control")]
    found += ["tools" for t in body.get("tools") or [] if t.get("cache_control")]
    for i, message in enumerate(body["messages"]):
        content = message["content"]
        if isinstance(content, list):
            found += [f"message:{i}" for block in content if block.get("cache_control")]
    return found


@pytest.mark.parametrize("order", ["history-first", "caching-first"])
def test_pruned_prompt_keeps_valid_cache_breakpoints(wire: WireServer, order: str) -> None:
    history = HistoryPruningMiddleware(max_tokens=1_500, target_tokens=800, keep_turns=2)
    caching = AnthropicPromptCachingMiddleware(ttl="1h")
    stack = [history, caching] if order == "history-first" else [caching, history]
    agent = create_agent(
        anthropic_chat(wire),
        tools=[lookup_order],
        system_prompt="You are the order desk of ACME. " + "Policy text. " * 40,
        middleware=stack,
    )
    wire.reply(text="It shipped too.", input_tokens=900, cache_write_1h=600, output_tokens=6)
    agent.invoke({"messages": _history(12)})
    [body] = wire.bodies()
    points = _breakpoints(body)
    assert 0 < len(points) <= 4, points
    sent = body["messages"]
    assert len(sent) < 12 * 4 + 1  # pruning happened
    # the summary pruning wrote is the first message; no breakpoint may sit on it
    first = sent[0]["content"]
    first_text = first if isinstance(first, str) else " ".join(b.get("text", "") for b in first)
    assert "summary" in first_text.lower() or "earlier" in first_text.lower(), first_text[:200]
    assert "message:0" not in points
    system = body["system"]
    system_text = system if isinstance(system, str) else " ".join(b.get("text", "") for b in system)
    assert system_text.startswith("You are the order desk")  # the cached system prefix is intact
    assert "Summary of the earlier conversation" not in system_text


def test_system_summary_role_does_not_move_the_system_breakpoint(wire: WireServer) -> None:
    """With the summary in the system role, the cached system prompt must still be a stable prefix."""
    history = HistoryPruningMiddleware(
        max_tokens=1_500, target_tokens=800, keep_turns=2, summary_role="system"
    )
    agent = create_agent(
        anthropic_chat(wire),
        tools=[lookup_order],
        system_prompt="You are the order desk of ACME. " + "Policy text. " * 40,
        middleware=[history, AnthropicPromptCachingMiddleware()],
    )
    agent.invoke({"messages": _history(12)})
    [body] = wire.bodies()
    points = _breakpoints(body)
    assert len(points) <= 4, points
    system = body["system"]
    blocks = system if isinstance(system, list) else [{"type": "text", "text": system}]
    tagged = [b for b in blocks if b.get("cache_control")]
    assert tagged, "the system prompt keeps its breakpoint"
    for block in tagged:
        assert block["text"].startswith("You are the order desk"), block["text"][:120]
        assert "Summary of the earlier conversation" not in block["text"]  # not a rewritten block


def test_openai_prompt_cache_key_from_tenant_and_thread(wire: WireServer) -> None:
    from langgraph.checkpoint.memory import InMemorySaver
    from test_cost_tagger_wire import openai_chat

    from graphthrift.middleware import PromptCacheKeyMiddleware

    agent = create_agent(
        openai_chat(wire, model="gpt-4o-mini"),
        tools=[],
        middleware=[PromptCacheKeyMiddleware()],
        checkpointer=InMemorySaver(),
    )

    def ask(tenant: str, thread: str) -> str:
        agent.invoke(
            {"messages": [HumanMessage("hi")]},
            {"metadata": {"tenant_id": tenant}, "configurable": {"thread_id": thread}},
        )
        return wire.bodies()[-1]["prompt_cache_key"]

    first = ask("acme", "t-1")
    assert first == ask("acme", "t-1")  # a thread keeps its key: its prefix stays warm
    assert first != ask("acme", "t-2")
    assert first != ask("globex", "t-1")  # never shared across tenants
    assert "acme" not in first and "t-1" not in first  # ids stay out of the provider's logs
    agent.invoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "t-9"}})
    assert "prompt_cache_key" not in wire.bodies()[-1]  # no tenant: nothing stable to key on


def test_prompt_cache_key_is_left_to_anthropic_models(wire: WireServer) -> None:
    from graphthrift.middleware import PromptCacheKeyMiddleware

    agent = create_agent(anthropic_chat(wire), tools=[], middleware=[PromptCacheKeyMiddleware()])
    agent.invoke({"messages": [HumanMessage("hi")]}, {"metadata": {"tenant_id": "acme"}})
    assert "prompt_cache_key" not in wire.bodies()[-1]
