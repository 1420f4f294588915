"""``wrap_model``: graphthrift's layers around any LangChain chat model, in one changed line.

A LangGraph node that calls ``model.invoke(messages)`` gets the cache, the budget, the
cheap-first router, context compression and ledger rows by calling
``wrap_model(model, store=store).invoke(messages)`` instead. The wrapped model is a
``BaseChatModel``: ``bind_tools`` (tool-calling agents), ``stream``/``astream`` and async
work as on the model it wraps.

No layer logic lives here. Each call becomes a ``ModelRequest`` and runs through the same
``create_agent`` middleware objects ``default_stack`` uses (``TenantCacheMiddleware``,
``ContextCompressionMiddleware``, ``ModelRoutingMiddleware``, ``BudgetMiddleware``), in the same
order, with the real model call innermost; ``recording_calls`` adds a ``CostTagger`` for
the ledger rows. So the rules hold as they do in an agent: the cache is scoped by the
run's tenant and user (``graphthrift.kernel``) and never stores graphthrift's own or
degraded answers (``graphthrift.provenance.unstorable``); a budget settles each call at
the model actually called.

Streaming yields the answer once the layers have it (a cache hit streams the cached
answer): the layers decide on whole answers (a router escalates an unsure one), so tokens
are not forwarded as they arrive.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ExtendedModelResponse,
    ModelRequest,
    ModelResponse,
)
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config, var_child_runnable_config
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.runtime import Runtime
from pydantic import ConfigDict, Field

from graphthrift.budget.budget import Budget
from graphthrift.cache.cache import ExactCache
from graphthrift.compress.compressor import Compressor
from graphthrift.errors import ConfigError
from graphthrift.kernel import model_name
from graphthrift.langchain.callbacks import RECORDED_FLAG, CostTagger
from graphthrift.ledger.ledger import Ledger
from graphthrift.middleware.budget import BudgetMiddleware
from graphthrift.middleware.route import ModelRoutingMiddleware
from graphthrift.middleware.stack import (
    ContextCompressionMiddleware,
    TenantCacheMiddleware,
    default_cache,
    recording_calls,
)
from graphthrift.route.router import Router
from graphthrift.store.postgres import Store

__all__ = ["WrappedChatModel", "wrap_model"]

#: LangGraph's tag for model calls its ``stream_mode="messages"`` must not show: the
#: wrapped model streams the answer once, the model it calls inside stays quiet.
_NOSTREAM = "nostream"

Handler = Callable[[ModelRequest[Any]], ModelResponse[Any]]
AsyncHandler = Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]


def _as_response(result: Any) -> ModelResponse[Any]:
    """A layer's return value as a ``ModelResponse`` (a budget's stop is a bare AIMessage)."""
    if isinstance(result, AIMessage):
        return ModelResponse(result=[result])
    if isinstance(result, ExtendedModelResponse):
        return result.model_response
    out: ModelResponse[Any] = result
    return out


def _step(layer: AgentMiddleware[Any, Any, Any], inner: Handler, request: ModelRequest[Any]) -> Any:
    return _as_response(layer.wrap_model_call(request, inner))


async def _astep(
    layer: AgentMiddleware[Any, Any, Any], inner: AsyncHandler, request: ModelRequest[Any]
) -> Any:
    return _as_response(await layer.awrap_model_call(request, inner))


def _bound(request: ModelRequest[Any]) -> Runnable[Any, Any]:
    """The request's model with its tools and settings bound (as ``create_agent`` binds)."""
    settings = dict(request.model_settings or {})
    if request.tools:
        if request.tool_choice is not None:
            settings["tool_choice"] = request.tool_choice
        return request.model.bind_tools(request.tools, **settings)
    return request.model.bind(**settings) if settings else request.model


def _prompt(request: ModelRequest[Any]) -> list[BaseMessage]:
    messages: list[BaseMessage] = list(request.messages)
    return [request.system_message, *messages] if request.system_message else messages


def _quiet() -> RunnableConfig:
    """The inner call's config: the run's (from the context variable), tagged ``nostream``."""
    tags = (var_child_runnable_config.get() or {}).get("tags") or []
    return {"tags": [*tags, _NOSTREAM]}


def _call(request: ModelRequest[Any]) -> ModelResponse[Any]:
    """The real model call, innermost."""
    return ModelResponse(result=[_bound(request).invoke(_prompt(request), _quiet())])


async def _acall(request: ModelRequest[Any]) -> ModelResponse[Any]:
    return ModelResponse(result=[await _bound(request).ainvoke(_prompt(request), _quiet())])


def _answer(response: ModelResponse[Any]) -> AIMessage:
    for message in reversed(response.result):
        if isinstance(message, AIMessage):
            return message
    raise ValueError(f"wrap_model: the layers returned no AIMessage ({response.result!r})")


def _chunk(message: AIMessage) -> ChatGenerationChunk:
    """The whole answer as one streamed chunk (tool calls as tool-call chunks)."""
    calls = [
        {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
        for i, c in enumerate(message.tool_calls)
    ]
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content=message.content,
            tool_call_chunks=calls,  # type: ignore[arg-type]
            usage_metadata=message.usage_metadata,
            response_metadata=dict(message.response_metadata),
            additional_kwargs=dict(message.additional_kwargs),
            chunk_position="last",
        )
    )


@contextmanager
def _run_context(config: RunnableConfig | None) -> Iterator[None]:
    """Make the call's config the current one, so the layers (``graphthrift.kernel``) and
    the inner model see its metadata and callbacks also outside a LangGraph node."""
    merged = ensure_config(config)
    merged.pop("run_id", None)  # the wrapper's own run id, not the inner call's
    merged.pop("run_name", None)
    token = var_child_runnable_config.set(merged)
    try:
        yield
    finally:
        var_child_runnable_config.reset(token)


class WrappedChatModel(BaseChatModel):
    """A chat model that runs graphthrift's layers around ``model``; see ``wrap_model``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: BaseChatModel
    layers: list[Any] = Field(default_factory=list)
    tagger: Any = None
    tools: list[Any] = Field(default_factory=list)
    tool_choice: Any = None
    settings: dict[str, Any] = Field(default_factory=dict)
    # the inner call writes the ledger row; CostTagger skips this wrapper's own run
    metadata: dict[str, Any] | None = Field(default_factory=lambda: {RECORDED_FLAG: True})

    @property
    def _llm_type(self) -> str:
        return "graphthrift-wrapped"

    @property
    def model_name(self) -> str | None:
        """The wrapped model's name (budgets and ledgers price the inner call by it)."""
        return model_name(self.model)

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools for the inner model; the layers see them (a router checks a cheap
        answer's tool arguments against their schemas)."""
        return self.model_copy(
            update={
                "tools": list(tools),
                "tool_choice": tool_choice,
                "settings": {**self.settings, **kwargs},
            }
        )

    # -- the run's config for the layers, also outside a graph -------------------------

    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AIMessage:
        with _run_context(config):
            return super().invoke(input, config, **kwargs)

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AIMessage:
        with _run_context(config):
            return await super().ainvoke(input, config, **kwargs)

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AIMessageChunk]:
        with _run_context(config):
            yield from super().stream(input, config, **kwargs)

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        with _run_context(config):
            async for chunk in super().astream(input, config, **kwargs):
                yield chunk

    # -- the layers -----------------------------------------------------------------------

    def _request(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> ModelRequest[Any]:
        system = messages[0] if messages and isinstance(messages[0], SystemMessage) else None
        rest = messages[1:] if system is not None else list(messages)
        settings = {**self.settings, **{k: v for k, v in kwargs.items() if k != "stop"}}
        return ModelRequest(
            model=self.model,
            messages=rest,  # type: ignore[arg-type]
            system_message=system,
            tools=list(self.tools),
            tool_choice=self.tool_choice,
            state=cast("AgentState[Any]", {"messages": list(messages)}),
            runtime=Runtime(context=self._answer_depends_on(settings)),
            model_settings=settings,
        )

    def _answer_depends_on(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        """What beside the messages shapes the answer: the bound tools, the tool choice and
        the model settings. The cache layer adds the runtime context to its key, so an
        answer given without tools (or at another temperature) is never served to a call
        with them."""
        if not self.tools and self.tool_choice is None and not settings:
            return None
        return {
            "tools": [convert_to_openai_tool(t) for t in self.tools],
            "tool_choice": self.tool_choice,
            "settings": settings,
        }

    def _run(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        handler: Handler = _call
        for layer in reversed(self.layers):
            handler = functools.partial(_step, layer, handler)
        with recording_calls(self.tagger):
            return _answer(handler(self._request(messages, kwargs)))

    async def _arun(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        handler: AsyncHandler = _acall
        for layer in reversed(self.layers):
            handler = functools.partial(_astep, layer, handler)
        with recording_calls(self.tagger):
            return _answer(await handler(self._request(messages, kwargs)))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._run(messages, kwargs))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = await self._arun(messages, kwargs)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield _chunk(self._run(messages, kwargs))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        yield _chunk(await self._arun(messages, kwargs))


def _router_layer(
    model: BaseChatModel,
    router: Router | None,
    cheap_model: BaseChatModel | None,
    ledger: Ledger | None,
) -> ModelRoutingMiddleware | None:
    if router is None and cheap_model is None:
        return None
    if cheap_model is None:
        raise ConfigError("router", router, "needs cheap_model=, the chat model it names cheap")
    cheap, strong = model_name(cheap_model), model_name(model)
    if cheap is None or strong is None:
        raise ConfigError("model", model, "both models must tell their name to be routed")
    if router is None:
        router = Router(cheap=cheap, strong=strong, ledger=ledger)
    if (router.cheap, router.strong) != (cheap, strong):
        raise ConfigError(
            "router",
            f"cheap={router.cheap!r}, strong={router.strong!r}",
            f"must name cheap_model ({cheap!r}) and the wrapped model ({strong!r})",
        )
    return ModelRoutingMiddleware(router, cheap_model=cheap_model, strong_model=model)


def _resolve_store(store: Store | None, *parts: Any) -> Store | None:
    for part in parts:
        other = getattr(part, "store", None)
        if other is None:
            continue
        if store is None:
            store = other
        elif other is not store:
            raise ConfigError(type(part).__name__, part, "must use the same Store as store=")
    return store


def wrap_model(
    model: BaseChatModel,
    *,
    store: Store | None = None,
    cache: ExactCache | bool | None = None,
    budget: Budget | None = None,
    router: Router | None = None,
    cheap_model: BaseChatModel | None = None,
    compressor: Compressor | None = None,
    ledger: Ledger | None = None,
    record_calls: bool = True,
    tenant_id: str | None = None,
    namespace: str = "default",
) -> WrappedChatModel:
    """``model`` with graphthrift's layers around every call, as a ``BaseChatModel``.

    Layers, outermost first (as in ``default_stack``): ledger rows (``CostTagger``),
    cache, context compression, cheap-first routing, budget, then ``model``.

    Args:
        model: any LangChain chat model (the strong one when routing).
        store: the shared ``Store``; with it and ``cache=None`` a ``SemanticCache`` in
            ``namespace`` is used, and the ledger is ``Ledger(store)``.
        cache: your ``ExactCache``/``SemanticCache``, ``True`` (the default cache; needs
            ``store``) or ``False``. It serves runs with a ``tenant_id`` only (run
            metadata or ``tenant_id=``), scoped to that tenant and, for answers that
            depend on earlier turns, to the user.
        budget: a ``Budget`` reserved before and settled after each call.
        router, cheap_model: cheap model first, ``model`` on escalation. ``cheap_model``
            alone builds the ``Router`` from the two names.
        compressor: shrink the turn's retrieved context (tool results) first.
        ledger: where model calls (``record_calls``), hits and routes are booked.
        record_calls: book each model call through a ``CostTagger`` unless the run has one.
        tenant_id: the tenant of calls whose run metadata names none.

    Raises:
        ConfigError: conflicting arguments (a router without ``cheap_model`` or naming
            other models, parts on different stores, ``cache=True`` without a store).

    Example:
        >>> model = wrap_model(ChatOpenAI(model="gpt-4o"), store=store)
        >>> model.invoke(messages, {"metadata": {"tenant_id": "acme", "user_id": "u1"}})
    """
    if not isinstance(model, BaseChatModel):
        raise ConfigError("model", model, "must be a LangChain chat model (BaseChatModel)")
    if isinstance(model, WrappedChatModel):
        raise ConfigError("model", model, "is already wrapped; pass the layers to one wrap_model")
    cache_obj = cache if isinstance(cache, ExactCache) else None
    store = _resolve_store(store, cache_obj, budget, ledger)
    if ledger is None and store is not None:
        ledger = Ledger(store)
    if cache is True or (cache is None and store is not None):
        if store is None:
            raise ConfigError("cache", cache, "the default cache needs store=")
        cache_obj = default_cache(store, namespace=namespace, ledger=ledger)
    elif cache not in (None, False) and cache_obj is None:
        raise ConfigError("cache", cache, "must be an ExactCache, a SemanticCache or a bool")
    scope = {"tenant_id": tenant_id} if tenant_id else {}
    layers: list[Any] = [
        TenantCacheMiddleware(cache_obj, **scope) if cache_obj is not None else None,
        ContextCompressionMiddleware(compressor) if compressor is not None else None,
        _router_layer(model, router, cheap_model, ledger),
        BudgetMiddleware(budget, tags=scope) if budget is not None else None,
    ]
    tagger = CostTagger(ledger, **scope) if record_calls and ledger is not None else None
    return WrappedChatModel(model=model, layers=[x for x in layers if x is not None], tagger=tagger)
