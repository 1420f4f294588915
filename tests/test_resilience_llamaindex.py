"""Single-flight, request-id dedup and idempotent tools on the real LlamaIndex runtime."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from llama_index.core.llms import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CustomLLM,
    LLMMetadata,
)
from llama_index.core.tools import FunctionTool

from graphthrift import Ledger, Store
from graphthrift.errors import ConfigError
from graphthrift.kernel import bound_run_tags
from graphthrift.llamaindex import SingleFlightLLM, idempotent_function_tool
from graphthrift.resilience import RequestDedup, SingleFlight, ToolIdempotency

MODEL = "gpt-4o-mini"


class CountingLLM(CustomLLM):
    """Answers once ``gate()`` is true, counting every provider call, reporting usage."""

    calls: list[str] = []  # noqa: RUF012 - a pydantic field, copied per instance
    gate: Any = None

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=MODEL, is_chat_model=True)

    def _answer(self, prompt: str) -> CompletionResponse:
        self.calls.append(prompt)
        deadline = time.monotonic() + 60
        while self.gate is not None and not self.gate() and time.monotonic() < deadline:
            time.sleep(0.01)
        usage = {"prompt_tokens": 700, "completion_tokens": 40}
        return CompletionResponse(text=f"answer {len(self.calls)}", raw={"usage": usage})

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._answer(prompt)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError

    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        done = self._answer(str(messages[-1].content))
        return ChatResponse(message=ChatMessage(role="assistant", content=done.text), raw=done.raw)


def test_identical_concurrent_chats_make_one_call(
    store: Store, ledger: Ledger, tenant: str
) -> None:
    flight = SingleFlight(store, ledger=ledger)
    raw = CountingLLM()
    raw.gate = lambda: flight.engine.waiting() == 5
    llm = SingleFlightLLM(llm=raw, flight=flight, tags={"tenant_id": tenant})
    answers: list[str] = []

    def ask() -> None:
        reply = llm.chat([ChatMessage(role="user", content="How do I freeze my card?")])
        answers.append(str(reply.message.content))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(raw.calls) == 1 and answers == ["answer 1"] * 6
    raw.gate = None
    llm.chat([ChatMessage(role="user", content="Another question")])
    assert len(raw.calls) == 2  # other messages: their own call
    ledger.flush()
    dedups = [r for r in ledger.records(tenant_id=tenant) if r["kind"] == "dedup"]
    assert len(dedups) == 5 and all(r["saved_usd"] > 0 for r in dedups)


def test_a_retried_request_gets_its_stored_answer(store: Store, tenant: str) -> None:
    raw = CountingLLM()
    llm = SingleFlightLLM(llm=raw, request_dedup=RequestDedup(store), tags={"tenant_id": tenant})
    ask = [ChatMessage(role="user", content="Summarise my statement")]
    with bound_run_tags({"request_id": f"{tenant}-r1"}):
        first = llm.chat(ask)
    with bound_run_tags({"request_id": f"{tenant}-r1"}):  # the client's retry
        again = llm.chat(ask)
        streamed = list(llm.stream_chat(ask))
    assert again.message.content == first.message.content == streamed[-1].message.content
    assert len(raw.calls) == 1
    with bound_run_tags({"request_id": f"{tenant}-r2"}):
        llm.chat(ask)
    llm.complete("no request id")
    llm.complete("no request id")  # nothing to dedup by: called each time
    assert len(raw.calls) == 4


def test_async_calls_share_one_flight(store: Store, tenant: str) -> None:
    flight = SingleFlight(store)
    raw = CountingLLM()
    raw.gate = lambda: flight.engine.waiting() == 3
    llm = SingleFlightLLM(llm=raw, flight=flight, tags={"tenant_id": tenant})

    async def main() -> list[str]:
        replies = await asyncio.gather(*(llm.acomplete("Where is my parcel?") for _ in range(4)))
        return [r.text for r in replies]

    assert asyncio.run(main()) == ["answer 1"] * 4 and len(raw.calls) == 1


def test_function_tool_runs_once_per_key(store: Store, tenant: str) -> None:
    paid: list[tuple[str, float]] = []

    def pay_invoice(invoice: str, amount: float, idempotency_key: str = "") -> dict[str, Any]:
        """Pay an invoice."""
        paid.append((invoice, amount))
        return {"paid": invoice, "amount": amount, "receipt": len(paid)}

    guard = ToolIdempotency(store)
    tool = idempotent_function_tool(
        FunctionTool.from_defaults(fn=pay_invoice), guard, tags={"tenant_id": tenant}
    )
    assert tool.metadata.name == "pay_invoice"
    with bound_run_tags({"thread_id": f"{tenant}-t1"}):
        first = tool.call(invoice="INV-1", amount=40.0)
        repeat = tool.call(invoice="INV-1", amount=40.0)  # a replay of the same step
    assert first.raw_output == repeat.raw_output == {"paid": "INV-1", "amount": 40.0, "receipt": 1}
    assert len(paid) == 1
    tool.call(invoice="INV-2", amount=5.0, idempotency_key=f"{tenant}-k")
    again = asyncio.run(tool.acall(invoice="INV-2", amount=6.0, idempotency_key=f"{tenant}-k"))
    assert len(paid) == 2 and again.raw_output["receipt"] == 2  # the explicit key decides
    with pytest.raises(ConfigError, match="flight"):
        SingleFlightLLM(llm=CountingLLM())
    with pytest.raises(TypeError):
        idempotent_function_tool(FunctionTool.from_defaults(fn=pay_invoice), object())  # type: ignore[arg-type]
