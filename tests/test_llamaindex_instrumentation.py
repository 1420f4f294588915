"""The LlamaIndex instrumentation handler: real LLM objects, real dispatcher, real ledger."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.dispatcher import (  # type: ignore[attr-defined]
    instrument_tags,
)
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.mock import MockLLM

from graphthrift import diagnostics
from graphthrift.errors import MissingExtra
from graphthrift.llamaindex.instrumentation import (
    CostEventHandler,
    instrument,
    tags,
    uninstrument,
)
from graphthrift.text import count_text

_dispatcher = get_dispatcher(__name__)
ANSWER = "The answer is 42."


class RateLimitError(Exception):
    """Named like the OpenAI client's error, with the HTTP status it carries."""

    status_code = 429


class UpstreamError(Exception):
    status_code = 503


class UsageLLM(CustomLLM):
    """Answers like llama-index-llms-openai: usage in ``raw`` (on the last chunk when streamed)
    or in ``additional_kwargs``.

    Without a fixed ``usage``, a prompt containing ``q<n>`` gets 1000+n input and 10+n output
    tokens, so a test can tell which call a record belongs to.
    """

    model: str = "gpt-4o-mini"
    served_model: str | None = None
    usage: dict[str, Any] | None = None
    usage_in: str = "raw"
    delay: float = 0.0

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model)

    def _usage(self, prompt: str) -> dict[str, Any]:
        if self.usage is not None:
            return self.usage
        match = re.search(r"q(\d+)", prompt)
        n = int(match.group(1)) if match else 0
        return {
            "prompt_tokens": 1000 + n,
            "completion_tokens": 10 + n,
            "total_tokens": 1010 + 2 * n,
        }

    def _response(
        self, prompt: str, text: str, delta: str | None = None, last: bool = True
    ) -> CompletionResponse:
        usage = self._usage(prompt) if last else None
        if self.usage_in == "additional_kwargs":
            return CompletionResponse(text=text, delta=delta, additional_kwargs=usage or {})
        raw: dict[str, Any] = {"usage": usage}
        if self.served_model:
            raw["model"] = self.served_model
        return CompletionResponse(text=text, delta=delta, raw=raw)

    def _chunks(self, prompt: str) -> Iterator[CompletionResponse]:
        words = ANSWER.split(" ")
        text = ""
        for i, word in enumerate(words):
            delta = word if i == 0 else f" {word}"
            text += delta
            yield self._response(prompt, text, delta, last=i == len(words) - 1)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        time.sleep(self.delay)
        return self._response(prompt, ANSWER)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        def gen() -> CompletionResponseGen:
            for chunk in self._chunks(prompt):
                time.sleep(self.delay / 4)
                yield chunk

        return gen()

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        await asyncio.sleep(self.delay)
        return self._response(prompt, ANSWER)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        async def gen() -> CompletionResponseAsyncGen:
            for chunk in self._chunks(prompt):
                await asyncio.sleep(self.delay / 4)
                yield chunk

        return gen()


class FailingLLM(UsageLLM):
    """Raises ``error``: at once, or after ``fail_after`` streamed chunks."""

    error: type[Exception] = RateLimitError
    fail_after: int = 0

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise self.error("try again later")

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        def gen() -> CompletionResponseGen:
            for i, chunk in enumerate(self._chunks(prompt)):
                if i == self.fail_after:
                    raise self.error("connection reset mid-stream")
                yield chunk

        return gen()

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        raise self.error("try again later")


class HelperLLM(UsageLLM):
    """Delegates to a helper with its own completion callback but no span of its own, as some
    integrations do, so both calls share one ``span_id``."""

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        response: CompletionResponse = self._provider_call(prompt)
        return response

    @llm_completion_callback()
    def _provider_call(self, prompt: str) -> CompletionResponse:
        return self._response(prompt, ANSWER)


@pytest.fixture
def handler(ledger: Any, tenant: str) -> Iterator[CostEventHandler]:
    """A handler on the root dispatcher that tags every call with the test's tenant."""
    with instrument(ledger, tenant_id=tenant) as registered:
        yield registered


def records(ledger: Any, tenant: str) -> list[dict[str, Any]]:
    ledger.flush()
    rows: list[dict[str, Any]] = ledger.records(tenant_id=tenant)
    return rows


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


async def call(llm: Any, style: str, text: str) -> str:
    """Call ``llm`` in one of LlamaIndex's eight ways and return the final text."""
    if style == "chat":
        return str(llm.chat(user(text)).message.content)
    if style == "complete":
        return str(llm.complete(text).text)
    if style == "stream_chat":
        return str([r.message.content for r in llm.stream_chat(user(text))][-1])
    if style == "stream_complete":
        return str([r.text for r in llm.stream_complete(text)][-1])
    if style == "achat":
        return str((await llm.achat(user(text))).message.content)
    if style == "acomplete":
        return str((await llm.acomplete(text)).text)
    if style == "astream_chat":
        return str([r.message.content async for r in await llm.astream_chat(user(text))][-1])
    if style == "astream_complete":
        return str([r.text async for r in await llm.astream_complete(text)][-1])
    raise ValueError(style)


STYLES = [
    "chat",
    "complete",
    "stream_chat",
    "stream_complete",
    "achat",
    "acomplete",
    "astream_chat",
    "astream_complete",
]


# -- one record per call, however it is made ---------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
async def test_mock_llm_records_each_call_once(
    handler: CostEventHandler, ledger: Any, tenant: str, style: str
) -> None:
    # MockLLM's chat delegates to complete, achat to chat, astream_chat to stream_chat...:
    # several start events, one provider call, one record.
    await call(MockLLM(), style, "hello there")
    [row] = records(ledger, tenant)
    assert row["kind"] == "llm" and row["success"] is True
    assert row["usage_source"] == "estimated"
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0  # MockLLM echoes the prompt
    assert row["streamed"] is style.endswith(("stream_chat", "stream_complete"))
    assert row["model"] is None  # MockLLM's metadata names no model
    assert row["call_id"].startswith(("MockLLM.complete-", "MockLLM.stream_complete-"))
    assert row["run_id"].startswith(f"MockLLM.{style}-")  # the call the user made
    assert row["latency_ms"] >= 0


@pytest.mark.parametrize("style", STYLES)
async def test_usage_from_raw(
    handler: CostEventHandler, ledger: Any, tenant: str, style: str
) -> None:
    assert await call(UsageLLM(), style, "q7") == ANSWER
    [row] = records(ledger, tenant)
    assert row["usage_source"] == "provider"
    assert (row["input_tokens"], row["output_tokens"]) == (1007, 17)
    assert row["model"] == "gpt-4o-mini"  # from the event's model_dict
    assert row["streamed"] is ("stream" in style)


@pytest.mark.parametrize("style", ["complete", "stream_chat", "astream_complete"])
async def test_usage_from_additional_kwargs(
    handler: CostEventHandler, ledger: Any, tenant: str, style: str
) -> None:
    await call(UsageLLM(usage_in="additional_kwargs"), style, "q3")
    [row] = records(ledger, tenant)
    assert row["usage_source"] == "provider"
    assert (row["input_tokens"], row["output_tokens"]) == (1003, 13)


async def test_served_model_in_raw_wins(
    handler: CostEventHandler, ledger: Any, tenant: str
) -> None:
    await call(UsageLLM(served_model="gpt-4o-mini-2024-07-18"), "chat", "q1")
    [row] = records(ledger, tenant)
    assert row["model"] == "gpt-4o-mini-2024-07-18"


async def test_default_model_for_unnamed_llm(ledger: Any, tenant: str) -> None:
    with instrument(ledger, model="gpt-4o-mini", tenant_id=tenant):
        await call(MockLLM(), "chat", "hello there")
    [row] = records(ledger, tenant)
    assert row["model"] == "gpt-4o-mini"


async def test_estimate_counts_prompt_and_output(
    handler: CostEventHandler, ledger: Any, tenant: str
) -> None:
    await call(UsageLLM(usage={}), "complete", "How far is the moon?")
    [row] = records(ledger, tenant)
    assert row["usage_source"] == "estimated"
    assert row["input_tokens"] == count_text("How far is the moon?", "gpt-4o-mini")
    assert row["output_tokens"] == count_text(ANSWER, "gpt-4o-mini")


async def test_helper_sharing_the_span_records_once(
    handler: CostEventHandler, ledger: Any, tenant: str
) -> None:
    await call(HelperLLM(), "complete", "q2")
    await call(HelperLLM(), "chat", "q4")
    rows = records(ledger, tenant)
    assert [(r["input_tokens"], r["usage_source"]) for r in rows] == [
        (1002, "provider"),
        (1004, "provider"),
    ]


# -- tags --------------------------------------------------------------------------------------


async def test_tags_from_defaults_instrument_tags_and_context(ledger: Any, tenant: str) -> None:
    llm = UsageLLM()
    with instrument(ledger, tenant_id=tenant, feature="default", route="r0"):
        llm.complete("q1")
        with tags(feature="search", prompt_version="v2"):
            llm.complete("q2")
            with tags(route="r9", feature=None):  # None keeps the outer value
                llm.complete("q3")
        with instrument_tags({"feature": "from-llamaindex", "other": "ignored"}):
            llm.complete("q4")
            with tags(feature="ours-win"):
                llm.complete("q5")
    rows = {r["input_tokens"] - 1000: r for r in records(ledger, tenant)}
    got = {n: (r["feature"], r["route"], r["prompt_version"]) for n, r in rows.items()}
    assert got == {
        1: ("default", "r0", None),
        2: ("search", "r0", "v2"),
        3: ("search", "r9", "v2"),
        4: ("from-llamaindex", "r0", None),
        5: ("ours-win", "r0", None),
    }


async def test_tags_follow_tasks_and_streams(
    handler: CostEventHandler, ledger: Any, tenant: str
) -> None:
    llm = UsageLLM(delay=0.01)
    with tags(feature="fanout"):
        await asyncio.gather(*(llm.acomplete(f"q{i}") for i in range(3)))
        stream = await MockLLM().astream_chat(user("hello"))  # consumed outside the block
    assert [r async for r in stream]
    rows = records(ledger, tenant)
    assert len(rows) == 4
    assert {r["feature"] for r in rows} == {"fanout"}


def test_unknown_tags_are_rejected(ledger: Any) -> None:
    with pytest.raises(TypeError, match="unknown tags"):
        CostEventHandler(ledger, tenant="acme")
    with pytest.raises(TypeError, match="unknown tags"), tags(customer="acme"):
        pass


# -- concurrency -------------------------------------------------------------------------------


async def test_concurrent_threads_and_tasks(
    handler: CostEventHandler, ledger: Any, tenant: str
) -> None:
    llm = UsageLLM(delay=0.05)  # one LLM object shared by every caller, as in real apps
    thread_styles = ["chat", "complete", "stream_chat", "stream_complete"]
    task_styles = ["achat", "acomplete", "astream_chat", "astream_complete"]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def in_thread(i: int) -> None:
        try:
            with tags(feature=f"f{i}", route="thread"):
                barrier.wait()
                asyncio.run(call(llm, thread_styles[i % 4], f"q{i}"))
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    async def in_task(i: int) -> None:
        with tags(feature=f"f{i}", route="task"):
            await call(llm, task_styles[i % 4], f"q{i}")

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    await asyncio.gather(*(in_task(i) for i in range(8, 16)))
    for t in threads:
        await asyncio.to_thread(t.join)
    assert not errors

    rows = records(ledger, tenant)
    assert len(rows) == 16
    assert len({r["call_id"] for r in rows}) == 16
    for row in rows:
        n = int(row["feature"][1:])
        assert (row["input_tokens"], row["output_tokens"]) == (1000 + n, 10 + n), row
        assert row["route"] == ("thread" if n < 8 else "task")
        assert row["usage_source"] == "provider" and row["success"] is True


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["complete", "chat", "acomplete"])
async def test_failed_call_is_recorded_with_error_type(
    handler: CostEventHandler, ledger: Any, tenant: str, style: str
) -> None:
    with pytest.raises(RateLimitError):
        await call(FailingLLM(), style, "q1")
    [row] = records(ledger, tenant)  # chat delegates to complete: still one record
    assert row["success"] is False
    assert row["error_type"] == "rate_limit"
    assert row["usage_source"] == "none"
    assert row["cost_usd"] == 0.0
    assert row["model"] == "gpt-4o-mini"


@pytest.mark.parametrize("style", ["stream_complete", "stream_chat", "astream_chat"])
async def test_stream_failing_midway(
    handler: CostEventHandler, ledger: Any, tenant: str, style: str
) -> None:
    with pytest.raises(UpstreamError):
        await call(FailingLLM(error=UpstreamError, fail_after=2), style, "q1")
    [row] = records(ledger, tenant)
    assert (row["success"], row["error_type"], row["streamed"]) == (False, "upstream", True)


async def test_stream_stopped_early_records_what_streamed(
    handler: CostEventHandler, ledger: Any, tenant: str
) -> None:
    stream = UsageLLM().stream_complete("Tell me")
    assert [next(stream).text, next(stream).text] == ["The", "The answer"]
    stream.close()
    [row] = records(ledger, tenant)
    assert (row["success"], row["streamed"], row["usage_source"]) == (True, True, "estimated")
    assert row["input_tokens"] == count_text("Tell me", "gpt-4o-mini")
    assert row["output_tokens"] == count_text("The answer", "gpt-4o-mini")


async def test_cancelled_stream_records_what_streamed(
    handler: CostEventHandler, ledger: Any, tenant: str
) -> None:
    got: list[str] = []
    two_chunks = asyncio.Event()

    async def consume() -> None:
        async for chunk in await UsageLLM(delay=0.2).astream_complete("Tell me"):
            got.append(chunk.text)
            if len(got) == 2:
                two_chunks.set()

    task = asyncio.create_task(consume())
    await two_chunks.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = records(ledger, tenant)
    assert (row["success"], row["streamed"], row["usage_source"]) == (True, True, "estimated")
    assert row["output_tokens"] == count_text(got[-1], "gpt-4o-mini")


async def test_cancelled_call_without_response_is_a_failure(
    handler: CostEventHandler, ledger: Any, tenant: str
) -> None:
    task = asyncio.create_task(UsageLLM(delay=5.0).acomplete("q1"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = records(ledger, tenant)
    assert (row["success"], row["error_type"], row["usage_source"]) == (False, "other", "none")


async def test_retry_inside_a_span_is_numbered(
    handler: CostEventHandler, ledger: Any, tenant: str
) -> None:
    @_dispatcher.span
    def answer(prompt: str) -> str:
        with contextlib.suppress(RateLimitError):
            FailingLLM().complete(prompt)
        return str(UsageLLM().complete(prompt).text)

    assert answer("q5") == ANSWER
    failed, retried = records(ledger, tenant)
    assert (failed["success"], failed["attempt"], failed["retry"]) == (False, 1, False)
    assert (retried["success"], retried["attempt"], retried["retry"]) == (True, 2, True)
    assert failed["run_id"] == retried["run_id"]
    assert failed["run_id"].startswith("test_retry_inside_a_span_is_numbered.<locals>.answer-")


async def test_bad_usage_is_estimated_and_counted(
    handler: CostEventHandler, ledger: Any, tenant: str
) -> None:
    before = diagnostics.get("bad_usage")
    good, bad = UsageLLM(), UsageLLM(usage={"prompt_tokens": -5, "completion_tokens": 3})
    good.complete("q1")
    bad.complete("q2 is here")
    await call(bad, "astream_chat", "q3")
    good.complete("q4")
    rows = records(ledger, tenant)
    assert diagnostics.get("bad_usage") == before + 2
    assert [r["usage_source"] for r in rows] == ["provider", "estimated", "estimated", "provider"]
    assert rows[1]["input_tokens"] == count_text("q2 is here", "gpt-4o-mini")
    assert rows[1]["output_tokens"] == count_text(ANSWER, "gpt-4o-mini")
    assert all(r["input_tokens"] > 0 and r["success"] for r in rows)


# -- registration ------------------------------------------------------------------------------


async def test_uninstrument_stops_recording(ledger: Any, tenant: str) -> None:
    root = get_dispatcher()
    handler = instrument(ledger, tenant_id=tenant)
    assert any(h is handler for h in root.event_handlers)
    assert any(h is handler.span_handler for h in root.span_handlers)
    UsageLLM().complete("q1")
    uninstrument(handler)
    uninstrument(handler)  # idempotent
    UsageLLM().complete("q2")
    assert not any(h is handler for h in root.event_handlers)
    assert not any(h is handler.span_handler for h in root.span_handlers)
    assert [r["input_tokens"] for r in records(ledger, tenant)] == [1001]


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_index.core.llms.callbacks", None)
    monkeypatch.delitem(sys.modules, "graphthrift.llamaindex.instrumentation")
    with pytest.raises(MissingExtra, match=re.escape("graphthrift[llamaindex]")):
        importlib.import_module("graphthrift.llamaindex.instrumentation")
