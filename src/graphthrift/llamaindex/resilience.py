"""LlamaIndex equivalents of the resilience adapters: a single-flight LLM with request-id
dedup, and an idempotent ``FunctionTool``.

- ``SingleFlightLLM(llm=..., flight=SingleFlight(store))`` wraps any LlamaIndex ``LLM``:
  identical concurrent ``chat``/``complete`` calls (same model, settings and messages, same
  tenant and scope) make one provider call, in this process and across processes. With a
  ``request_dedup`` and a caller's ``request_id`` (in ``tags``, or bound for the run with
  ``graphthrift.scoped(request_id=...)``), a retried request gets the answer its first attempt
  paid for. Streaming callers get the full answer as one chunk when it completes.
- ``idempotent_function_tool(tool, ToolIdempotency(store))``: a side-effecting
  ``FunctionTool`` runs at most once per key (its ``key_arg`` argument, else thread, tool
  and canonical arguments); a repeat gets the stored output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.llms import LLM
from llama_index.core.tools import FunctionTool
from pydantic import ConfigDict, Field

from graphthrift.errors import ConfigError
from graphthrift.kernel import cache_scope, current_run_tags, run_tags
from graphthrift.ledger.usage import Usage, read_usage
from graphthrift.resilience import (
    JSON_CODEC,
    Codec,
    RequestDedup,
    SingleFlight,
    ToolIdempotency,
    derive_tool_key,
)

__all__ = ["RESPONSE_CODEC", "SingleFlightLLM", "idempotent_function_tool"]


def _encode(response: Any) -> Any:
    usage = response_usage(response)
    used = None if usage is None else [usage.input_tokens, usage.output_tokens]
    if isinstance(response, ChatResponse):
        return {"chat": response.message.model_dump(mode="json"), "usage": used}
    if isinstance(response, CompletionResponse):
        return {"text": response.text, "usage": used}
    raise TypeError(f"cannot share a {type(response).__name__} between callers")


def _decode(data: Any) -> Any:
    used = data.get("usage")
    raw = None if used is None else {"usage": {"input_tokens": used[0], "output_tokens": used[1]}}
    if "chat" in data:
        return ChatResponse(message=ChatMessage.model_validate(data["chat"]), raw=raw)
    return CompletionResponse(text=data["text"], raw=raw)


#: LlamaIndex chat and completion responses to JSON and back (message, text and usage).
RESPONSE_CODEC = Codec(encode=_encode, decode=_decode)


def response_usage(response: Any) -> Usage | None:
    """The usage a LlamaIndex response reports (``raw["usage"]`` or ``raw.usage``)."""
    raw = getattr(response, "raw", None)
    if isinstance(raw, Mapping):
        return read_usage(raw.get("usage"))
    return None if raw is None else read_usage(getattr(raw, "usage", None))


class SingleFlightLLM(LLM):
    """A LlamaIndex ``LLM`` whose identical concurrent calls make one provider call.

    Args:
        llm: the LLM to call.
        flight: the ``SingleFlight`` (its ledger books the waiters as ``kind="dedup"``).
        request_dedup: a ``RequestDedup``: with a ``request_id`` in the tags, each call runs
            once per request id and a retried request gets its stored answer.
        model: the priced model name (default: ``llm.metadata.model_name``).
        tags: tenant_id, scope, request_id, ...; tags bound for the run fill what these lack.

    Example:
        >>> llm = SingleFlightLLM(llm=OpenAI(model="gpt-4o-mini"), flight=SingleFlight(store))
        >>> llm.chat([ChatMessage(role="user", content="hi")])
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    llm: LLM
    flight: Any = None
    request_dedup: Any = None
    model: str | None = None
    tags: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        # Checked before pydantic validates, which would wrap a ConfigError in its own error.
        if data.get("flight") is None and data.get("request_dedup") is None:
            raise ConfigError(
                "flight", None, "SingleFlightLLM needs a flight, a request_dedup or both"
            )
        super().__init__(**data)

    def model_post_init(self, __context: Any) -> None:
        if self.flight is not None and not isinstance(self.flight, SingleFlight):
            raise TypeError(
                f"SingleFlightLLM needs a graphthrift SingleFlight, got {self.flight!r}"
            )
        if self.request_dedup is not None and not isinstance(self.request_dedup, RequestDedup):
            raise TypeError(
                f"SingleFlightLLM needs a graphthrift RequestDedup, got {self.request_dedup!r}"
            )
        for user in (self.flight, self.request_dedup):
            if user is not None and user.engine.codec is JSON_CODEC:
                user.engine.codec = RESPONSE_CODEC

    @classmethod
    def class_name(cls) -> str:
        return "SingleFlightLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return self.llm.metadata

    def _key(self, kind: str, body: Any, kwargs: Mapping[str, Any]) -> str:
        identity = {
            "class": self.llm.class_name(),
            "metadata": self.llm.metadata.model_dump(mode="json"),
            "temperature": getattr(self.llm, "temperature", None),
        }
        raw = json.dumps([kind, identity, body, dict(kwargs)], sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()

    def _plan(self, kind: str, body: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        tags = run_tags(None, **self.tags)
        return {
            "key": self._key(kind, body, kwargs),
            "scope": cache_scope(None, **self.tags),
            "model": self.model or self.llm.metadata.model_name,
            "usage_of": response_usage,
            "tags": tags,
        }

    def _request_id(self) -> Any:
        """The caller's request id: ``tags["request_id"]``, else the one bound for the run
        (``graphthrift.scoped(request_id=...)`` or ``bound_run_tags``)."""
        found = self.tags.get("request_id")
        if found is None or found == "":
            found = (current_run_tags() or {}).get("request_id")
        return found

    def _run(self, plan: dict[str, Any], fn: Callable[[], Any]) -> Any:
        request_id = self._request_id()

        def shared() -> Any:
            return fn() if self.flight is None else self.flight.call(fn=fn, **plan)

        if self.request_dedup is None or request_id in (None, ""):
            return shared()
        key = plan["key"]
        plan = {k: v for k, v in plan.items() if k != "key"}
        return self.request_dedup.call(f"{request_id}|{key}", shared, **plan)

    async def _arun(self, plan: dict[str, Any], fn: Callable[[], Awaitable[Any]]) -> Any:
        request_id = self._request_id()

        async def shared() -> Any:
            return await (fn() if self.flight is None else self.flight.acall(fn=fn, **plan))

        if self.request_dedup is None or request_id in (None, ""):
            return await shared()
        key = plan["key"]
        plan = {k: v for k, v in plan.items() if k != "key"}
        return await self.request_dedup.acall(f"{request_id}|{key}", shared, **plan)

    @staticmethod
    def _messages(messages: Sequence[ChatMessage]) -> list[Any]:
        return [[m.role.value, m.content, m.additional_kwargs] for m in messages]

    # -- chat and complete ------------------------------------------------------------------

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """``llm.chat``, shared with identical calls running (or, by request id, done)."""
        plan = self._plan("chat", self._messages(messages), kwargs)
        return self._run(plan, lambda: self.llm.chat(messages, **kwargs))  # type: ignore[no-any-return]

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async twin of ``chat``."""
        plan = self._plan("chat", self._messages(messages), kwargs)

        async def call() -> ChatResponse:
            return await self.llm.achat(messages, **kwargs)

        return await self._arun(plan, call)  # type: ignore[no-any-return]

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """``llm.complete``, shared like ``chat``."""
        plan = self._plan("complete", [prompt, formatted], kwargs)
        return self._run(plan, lambda: self.llm.complete(prompt, formatted=formatted, **kwargs))  # type: ignore[no-any-return]

    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """Async twin of ``complete``."""
        plan = self._plan("complete", [prompt, formatted], kwargs)

        async def call() -> CompletionResponse:
            return await self.llm.acomplete(prompt, formatted=formatted, **kwargs)

        return await self._arun(plan, call)  # type: ignore[no-any-return]

    # -- streaming: the full answer as one chunk ----------------------------------------------

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        def gen() -> Generator[ChatResponse, None, None]:
            response = self.chat(messages, **kwargs)
            yield ChatResponse(
                message=response.message, delta=response.message.content, raw=response.raw
            )

        return gen()

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        def gen() -> Generator[CompletionResponse, None, None]:
            response = self.complete(prompt, formatted=formatted, **kwargs)
            yield CompletionResponse(text=response.text, delta=response.text, raw=response.raw)

        return gen()

    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        async def gen() -> AsyncGenerator[ChatResponse, None]:
            response = await self.achat(messages, **kwargs)
            yield ChatResponse(
                message=response.message, delta=response.message.content, raw=response.raw
            )

        return gen()

    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        async def gen() -> AsyncGenerator[CompletionResponse, None]:
            response = await self.acomplete(prompt, formatted=formatted, **kwargs)
            yield CompletionResponse(text=response.text, delta=response.text, raw=response.raw)

        return gen()


# -- idempotent tools ----------------------------------------------------------------------------


def idempotent_function_tool(
    tool: FunctionTool,
    guard: ToolIdempotency,
    *,
    key_arg: str | None = "idempotency_key",
    tags: Mapping[str, Any] | None = None,
) -> FunctionTool:
    """``tool`` run at most once per idempotency key (see ``ToolIdempotency``).

    The key is the call's ``key_arg`` argument when given, else (thread, tool, canonical
    arguments), with ``thread_id`` and ``tenant_id`` from ``tags`` or the tags bound for the
    run. A repeat, in this process or another, gets the stored output (the function's return
    value, JSON-able through the guard's codec) without running the function again.

    Example:
        >>> pay = idempotent_function_tool(FunctionTool.from_defaults(fn=pay_invoice),
        ...                                ToolIdempotency(store))
    """
    if not isinstance(guard, ToolIdempotency):
        raise TypeError(f"idempotent_function_tool needs a ToolIdempotency, got {guard!r}")
    name = tool.metadata.get_name()

    def context(kwargs: Mapping[str, Any]) -> dict[str, Any]:
        found = run_tags(None, **dict(tags or {}))
        explicit = kwargs.get(key_arg) if key_arg else None
        if explicit is not None and explicit != "":
            key = f"{name}:{explicit}"
        else:
            key = derive_tool_key(found.get("thread_id"), name, dict(kwargs))
        tenant = found.get("tenant_id")
        return {
            "key": key,
            "tool": name,
            "tenant_id": None if tenant is None else str(tenant),
            "tags": found,
        }

    def run(**kwargs: Any) -> Any:
        return guard.run(fn=lambda: tool.call(**kwargs).raw_output, **context(kwargs))

    async def arun(**kwargs: Any) -> Any:
        async def call() -> Any:
            return (await tool.acall(**kwargs)).raw_output

        return await guard.arun(fn=call, **context(kwargs))

    return FunctionTool.from_defaults(
        fn=run,
        async_fn=arun,
        name=name,
        description=tool.metadata.description,
        fn_schema=tool.metadata.fn_schema,
        return_direct=tool.metadata.return_direct,
    )
