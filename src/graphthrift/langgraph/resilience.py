"""LangGraph-friendly wrappers for single-flight and request-id dedup.

- ``SingleFlightModel(model, flight)`` wraps a chat model: identical concurrent calls (same
  model, settings and messages, same tenant and scope) make one provider call. Use it in a
  node where you call the model (``model.invoke(messages, config)``).
- ``dedup_requests(graph, dedup)`` wraps a compiled graph (or any runnable, ``create_agent``'s
  agent included): a run with config metadata ``request_id`` runs once; a retry waits for it or
  gets its stored final output.

Scope and tags come from the run's config through ``graphthrift.kernel``. Messages travel
through the store as LangChain's own serialization (``dumpd``, loaded back with
``allowed_objects="messages"``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core._api.beta_decorator import suppress_langchain_beta_warning
from langchain_core.load import dumpd, load
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.tools import BaseTool, StructuredTool

from graphthrift.kernel import cache_scope, read_usage, run_tags
from graphthrift.ledger.usage import Usage
from graphthrift.resilience import (
    JSON_CODEC,
    Codec,
    RequestDedup,
    SingleFlight,
    ToolIdempotency,
    derive_tool_key,
)

__all__ = [
    "MESSAGE_CODEC",
    "SingleFlightModel",
    "dedup_requests",
    "idempotent_tool",
    "message_fingerprint",
    "message_usage",
    "model_identity",
    "model_name",
    "request_id_of",
    "tool_call_key",
]


def _encode(value: Any) -> Any:
    return dumpd(value)


def _decode(value: Any) -> Any:
    with suppress_langchain_beta_warning():  # ``load`` is LangChain's own, marked beta
        return load(value, allowed_objects="messages")


#: Messages, lists of them and states holding them, to JSON and back (LangChain's format).
MESSAGE_CODEC = Codec(encode=_encode, decode=_decode)


def model_name(model: Any) -> str | None:
    """The priced name of a chat model (``model_name``, ``model`` or ``model_id``)."""
    for attr in ("model_name", "model", "model_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def _message_key(message: Any) -> Any:
    if isinstance(message, BaseMessage):
        calls = [[c.get("name"), c.get("args")] for c in getattr(message, "tool_calls", None) or []]
        return [message.type, message.content, message.name, calls]
    return message  # a dict or a str: already its own key


def message_fingerprint(messages: Any, **settings: Any) -> str:
    """A hash of what a model call depends on: message types, contents, names and tool calls
    (never message ids, which differ between two identical requests) plus ``settings``."""
    if isinstance(messages, str | BaseMessage | Mapping):
        messages = [messages]
    body = [_message_key(m) for m in messages]
    raw = json.dumps([body, settings], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def message_usage(message: Any) -> Usage | None:
    """The validated usage of an ``AIMessage`` (through the kernel), ``None`` for anything else."""
    if isinstance(message, AIMessage):
        return read_usage(message.usage_metadata)
    return None


def model_identity(model: Any) -> dict[str, Any]:
    """The model's class and the settings that change its answer (part of a single-flight key)."""
    try:
        params = dict(model._identifying_params)
    except Exception:  # not a LangChain model: its repr is its identity
        params = {"repr": repr(model)}
    return {"class": type(model).__name__, **params}


class SingleFlightModel(Runnable[Any, BaseMessage]):
    """A chat model whose identical concurrent calls make one provider call.

    Args:
        model: the chat model (any ``BaseChatModel``, tools bound or not).
        flight: the ``SingleFlight`` (its ledger books the waiters as ``kind="dedup"``).
        name: the priced model name for ``saved_usd`` (default: read from the model).

    Streaming callers get the full answer when it completes (one chunk).

    Example:
        >>> model = SingleFlightModel(ChatOpenAI(model="gpt-4o-mini"), SingleFlight(store))
        >>> def answer(state, config):
        ...     return {"messages": [model.invoke(state["messages"], config)]}
    """

    def __init__(self, model: Runnable[Any, Any], flight: SingleFlight, *, name: str | None = None):
        if not isinstance(flight, SingleFlight):
            raise TypeError(f"SingleFlightModel needs a graphthrift SingleFlight, got {flight!r}")
        self.model = model
        self.flight = flight
        self.model_name = name or model_name(model) or model_name(getattr(model, "bound", None))
        self._identity = model_identity(getattr(model, "bound", model))
        if hasattr(model, "kwargs"):
            self._identity["bound_kwargs"] = getattr(model, "kwargs", None)
        if flight.engine.codec is JSON_CODEC:  # answers are messages: store them as such
            flight.engine.codec = MESSAGE_CODEC

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> SingleFlightModel:
        """The wrapped model with tools bound, still single-flight."""
        bound = self.model.bind_tools(tools, **kwargs)  # type: ignore[attr-defined]
        return SingleFlightModel(bound, self.flight, name=self.model_name)

    def _args(self, input: Any, config: RunnableConfig | None) -> dict[str, Any]:
        config = ensure_config(config)
        return {
            "key": message_fingerprint(input, **self._identity),
            "scope": cache_scope(config),
            "model": self.model_name,
            "usage_of": message_usage,
            "tags": run_tags(config),
        }

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """``model.invoke``, shared with identical calls already running."""
        args = self._args(input, config)
        return self.flight.call(fn=lambda: self.model.invoke(input, config, **kwargs), **args)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """``model.ainvoke``, shared with identical calls already running."""
        args = self._args(input, config)

        async def call() -> Any:
            return await self.model.ainvoke(input, config, **kwargs)

        return await self.flight.acall(fn=call, **args)


def request_id_of(config: Mapping[str, Any], header: str | None = "x-request-id") -> str | None:
    """The caller's request id of a run: config metadata ``request_id``, else the request
    header ``header`` (LangGraph's server forwards allowed request headers into
    ``config["configurable"]``, lower-cased); None when neither is set."""
    request_id = (config.get("metadata") or {}).get("request_id")
    if (request_id is None or request_id == "") and header:
        request_id = (config.get("configurable") or {}).get(header.lower())
    return None if request_id is None or request_id == "" else str(request_id)


class _RequestDedupRunnable(Runnable[Any, Any]):
    def __init__(
        self,
        runnable: Runnable[Any, Any],
        dedup: RequestDedup,
        fingerprint: bool,
        header: str | None,
    ):
        self.runnable = runnable
        self.dedup = dedup
        self.fingerprint = fingerprint
        self.header = header.lower() if header else None
        if dedup.engine.codec is JSON_CODEC:  # outputs hold messages: store them as such
            dedup.engine.codec = MESSAGE_CODEC

    def _args(self, input: Any, config: RunnableConfig) -> dict[str, Any] | None:
        request_id = request_id_of(config, self.header)
        if request_id is None:
            return None
        messages = input.get("messages", input) if isinstance(input, Mapping) else input
        return {
            "request_id": request_id,
            "scope": cache_scope(config),
            "fingerprint": message_fingerprint(messages) if self.fingerprint else None,
            "tags": run_tags(config),
        }

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        config = ensure_config(config)
        args = self._args(input, config)
        if args is None:
            return self.runnable.invoke(input, config, **kwargs)
        return self.dedup.call(fn=lambda: self.runnable.invoke(input, config, **kwargs), **args)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        config = ensure_config(config)
        args = self._args(input, config)
        if args is None:
            return await self.runnable.ainvoke(input, config, **kwargs)

        async def call() -> Any:
            return await self.runnable.ainvoke(input, config, **kwargs)

        return await self.dedup.acall(fn=call, **args)


def dedup_requests(
    runnable: Runnable[Any, Any],
    dedup: RequestDedup,
    *,
    fingerprint: bool = True,
    header: str | None = "x-request-id",
) -> Runnable[Any, Any]:
    """``runnable`` (a compiled graph, an agent) run once per config metadata ``request_id``,
    or per request header ``header`` (LangGraph's server forwards allowed request headers
    into ``config["configurable"]``, lower-cased).

    A retry of a run still going waits for it; a retry of a finished run gets its stored final
    output within the dedup's window. With ``fingerprint`` (default), reusing an id for other
    input messages raises ``RequestIdConflict``. Runs without a ``request_id`` pass through.

    Example:
        >>> agent = dedup_requests(create_agent(model, tools), RequestDedup(store))
        >>> agent.invoke({"messages": [...]}, {"metadata": {"request_id": "req-1"}})
    """
    return _RequestDedupRunnable(runnable, dedup, fingerprint, header)


# -- idempotent tools ------------------------------------------------------------------------


def tool_call_key(
    tool: str, args: Mapping[str, Any], thread_id: str | None, key_arg: str | None
) -> tuple[str, bool]:
    """A tool call's idempotency key and whether it was explicit.

    An explicit key is the ``key_arg`` argument of the call (the model or the caller passes
    it); otherwise (thread, tool, canonical arguments).
    """
    explicit = args.get(key_arg) if key_arg else None
    if explicit is not None and explicit != "":
        return f"{tool}:{explicit}", True
    return derive_tool_key(thread_id, tool, dict(args)), False


def idempotent_tool(
    tool: BaseTool, guard: ToolIdempotency, *, key_arg: str | None = "idempotency_key"
) -> BaseTool:
    """``tool`` run at most once per idempotency key (see ``ToolIdempotency``).

    The key is the call's ``key_arg`` argument when present, else (thread, tool, canonical
    arguments); the tenant comes from the run's config (``graphthrift.kernel``). The stored
    output is returned on every repeat, also after a LangGraph resume or replay.

    Example:
        >>> pay = idempotent_tool(pay_invoice, ToolIdempotency(store))
        >>> agent = create_agent(model, [pay])
    """
    if not isinstance(guard, ToolIdempotency):
        raise TypeError(f"idempotent_tool needs a graphthrift ToolIdempotency, got {guard!r}")

    def _ctx(kwargs: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        tags = run_tags(config)
        key, _ = tool_call_key(tool.name, kwargs, tags.get("thread_id"), key_arg)
        tenant = tags.get("tenant_id")
        return {
            "key": key,
            "tool": tool.name,
            "tenant_id": None if tenant is None else str(tenant),
            "tags": tags,
        }

    def run(config: RunnableConfig, **kwargs: Any) -> Any:
        return guard.run(fn=lambda: tool.invoke(kwargs, config), **_ctx(kwargs, config))

    async def arun(config: RunnableConfig, **kwargs: Any) -> Any:
        async def call() -> Any:
            return await tool.ainvoke(kwargs, config)

        return await guard.arun(fn=call, **_ctx(kwargs, config))

    return StructuredTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema if tool.args_schema is not None else tool.get_input_schema(),
        func=run,
        coroutine=arun,
        return_direct=tool.return_direct,
        response_format=tool.response_format,
    )
