"""``default_stack``: graphthrift's middleware for ``create_agent``, in the order that is right.

One line adds every layer to an agent you already have::

    agent = create_agent(model, tools, middleware=default_stack(store, cheap_model=mini))

The order (the first is the outermost: it sees the request first and the response last):

1. ``CallRecordingMiddleware``: every model call below it gets a ``CostTagger`` (one ledger
   row per call, tagged with the run's tenant, user, thread and node), unless the run
   already has one in ``config["callbacks"]`` (then that one records, once).
2. ``TenantCacheMiddleware`` (a ``SemanticCache``): a hit skips everything below it
   (pruning, routing, reserving, the model), so it spends no budget; it sees the whole
   thread, so its key covers what the answer depends on. It serves only runs that name a
   tenant (``metadata["tenant_id"]`` or ``default_stack(tenant_id=...)``): one tenant's
   answer is never another's. Answers the layers below fabricate or degrade are marked
   before it sees them, so it never stores them.
3. ``HistoryPruningMiddleware``: prunes what is sent, so compression, the router and the
   budget all work on the prompt that is actually paid for.
4. ``ContextCompressionMiddleware`` (only with ``compressor=``): shrinks this turn's
   retrieved context (tool results) before the model is chosen and the call reserved.
5. ``AgentModelRoutingMiddleware`` (only with ``cheap_model=``): cheap model first, the
   agent's own model when the cheap answer is unsure or fails a tool schema.
6. ``BudgetMiddleware`` (only with ``budget=``): inside the router, so each call of a
   cascade is reserved at the model actually called and settled with that call's usage.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
)
from langchain_core.callbacks import BaseCallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config

from graphthrift import diagnostics
from graphthrift.budget.budget import Budget
from graphthrift.cache.cache import ExactCache, SemanticCache
from graphthrift.compress.compressor import Compressor
from graphthrift.config import env_float
from graphthrift.errors import ConfigError
from graphthrift.history.pruner import HistoryPruner
from graphthrift.kernel import model_name, run_config, run_tags
from graphthrift.langchain.callbacks import CostTagger
from graphthrift.ledger.ledger import Ledger
from graphthrift.middleware.budget import BudgetMiddleware
from graphthrift.middleware.cache import ExactCacheMiddleware
from graphthrift.middleware.history import HistoryPruningMiddleware
from graphthrift.middleware.route import ModelRoutingMiddleware
from graphthrift.route.router import Router
from graphthrift.store.postgres import Store

__all__ = [
    "AgentModelRoutingMiddleware",
    "CallRecordingMiddleware",
    "ContextCompressionMiddleware",
    "TenantCacheMiddleware",
    "default_cache",
    "default_stack",
    "recording_calls",
]

log = logging.getLogger(__name__)

#: The default cache's lookup deadline in seconds (see ``default_cache``).
DEFAULT_LOOKUP_TIMEOUT = 1.0


# ------------------------------------------------------------------ ledger rows per call


def _has_tagger(callbacks: Any) -> bool:
    handlers = callbacks.handlers if isinstance(callbacks, BaseCallbackManager) else callbacks
    return any(isinstance(h, CostTagger) for h in handlers or ())


@contextmanager
def recording_calls(tagger: CostTagger | None) -> Iterator[None]:
    """Run the block with ``tagger`` added to the current run's callbacks, so each model
    call made in it (with no explicit config, as ``create_agent`` and ``wrap_model`` make
    them) writes one ledger row. A run that already carries a ``CostTagger`` keeps only
    its own: a call is never booked twice."""
    current = var_child_runnable_config.get()
    callbacks: Any = (current or {}).get("callbacks")
    if tagger is None or _has_tagger(callbacks):
        yield
        return
    if isinstance(callbacks, BaseCallbackManager):
        callbacks = callbacks.copy()
        callbacks.add_handler(tagger, inherit=True)
    else:
        callbacks = [*(callbacks or ()), tagger]
    config: RunnableConfig = {**(current or {}), "callbacks": callbacks}
    token = var_child_runnable_config.set(config)
    try:
        yield
    finally:
        var_child_runnable_config.reset(token)


class CallRecordingMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Books every model call of the agent in the ledger through a ``CostTagger``.

    The same rows as ``config={"callbacks": [CostTagger(ledger)]}`` without touching the
    config; a run that already has a ``CostTagger`` is left to it.
    """

    def __init__(self, ledger: Ledger, **default_tags: Any) -> None:
        super().__init__()
        self.tagger = CostTagger(ledger, **default_tags)

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Call the layers below with the tagger in the run's callbacks."""
        with recording_calls(self.tagger):
            return handler(request)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async twin of ``wrap_model_call``."""
        with recording_calls(self.tagger):
            return await handler(request)


# ------------------------------------------------------------------ cache: tenants only


class TenantCacheMiddleware(ExactCacheMiddleware):
    """``ExactCacheMiddleware`` that serves and stores only runs that name a tenant.

    A run without ``tenant_id`` (in its metadata or the middleware's scope) would share
    one anonymous cache with every other such run, so it passes through to the model
    (counted as ``cache_no_tenant`` in ``graphthrift.diagnostics``, logged once).
    """

    _warned = False

    def _prepare(self, request: ModelRequest[Any]) -> tuple[list[Any], dict[str, Any]] | None:
        prepared = super()._prepare(request)
        if prepared is not None and not prepared[1].get("tenant_id"):
            diagnostics.count("cache_no_tenant")
            if not self._warned:
                self._warned = True
                log.warning(
                    "graphthrift: cache skipped: the run names no tenant_id (set"
                    " config['metadata']['tenant_id'] or default_stack(tenant_id=...))"
                )
            return None
        return prepared


# ------------------------------------------------------------------ retrieved context


def _question_and_context(messages: Sequence[Any]) -> tuple[str, list[int]]:
    """The last user message's text and the indices of the tool results after it."""
    for i in range(len(messages) - 1, -1, -1):
        if getattr(messages[i], "type", None) == "human":
            tools = [
                j
                for j in range(i + 1, len(messages))
                if isinstance(messages[j], ToolMessage) and isinstance(messages[j].content, str)
            ]
            return str(messages[i].text), tools
    return "", []


class ContextCompressionMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Shrinks this turn's retrieved context (tool results) to what answers the question.

    Each ``ToolMessage`` after the last user message longer than ``min_tokens`` is
    compressed by ``compressor`` (query-aware, one call per message); the saving is booked
    in the compressor's ledger with the run's tags. The messages in state are not changed:
    only what this model call sends.
    """

    def __init__(self, compressor: Compressor, *, min_tokens: int = 200) -> None:
        super().__init__()
        if not callable(getattr(compressor, "compress", None)):
            raise ConfigError("compressor", compressor, "needs a compress(question, chunks) method")
        if min_tokens < 0:
            raise ConfigError("min_tokens", min_tokens, "must be >= 0")
        self.compressor = compressor
        self.min_tokens = min_tokens

    def _plan(self, request: ModelRequest[Any]) -> tuple[str, list[int], dict[str, Any]]:
        question, indices = _question_and_context(request.messages)
        tags = run_tags(run_config())
        return question, indices, tags

    def _rebuilt(self, request: ModelRequest[Any], shrunk: Mapping[int, str]) -> ModelRequest[Any]:
        if not shrunk:
            return request
        messages = list(request.messages)
        for i, text in shrunk.items():
            messages[i] = messages[i].model_copy(update={"content": text})
        return request.override(messages=messages)

    def _worth_it(self, result: Any) -> str | None:
        if result.original_tokens < self.min_tokens or result.removed_tokens <= 0:
            return None
        return str(result.text())

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Compress the turn's tool results, then call the layers below."""
        question, indices, tags = self._plan(request)
        shrunk: dict[int, str] = {}
        for i in indices:
            text = self._worth_it(
                self.compressor.compress(question, [request.messages[i].text], tags=tags)
            )
            if text is not None:
                shrunk[i] = text
        return handler(self._rebuilt(request, shrunk))

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async twin of ``wrap_model_call``."""
        question, indices, tags = self._plan(request)
        shrunk: dict[int, str] = {}
        for i in indices:
            result = await self.compressor.acompress(
                question, [request.messages[i].text], tags=tags
            )
            text = self._worth_it(result)
            if text is not None:
                shrunk[i] = text
        return await handler(self._rebuilt(request, shrunk))


# ------------------------------------------------------------------ routing


class AgentModelRoutingMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """``ModelRoutingMiddleware`` whose strong model is the agent's own (``ModelRequest.model``).

    ``default_stack`` does not see the model given to ``create_agent``; this layer reads it
    at each call, so only the cheap model has to be named. One ``Router`` per strong model
    (its sticky threads and ledger rows are per pair of names).
    """

    def __init__(
        self,
        cheap_model: BaseChatModel,
        *,
        ledger: Ledger | None = None,
        threshold: float = 0.5,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        name = model_name(cheap_model)
        if name is None:
            raise ConfigError(
                "cheap_model", type(cheap_model).__name__, "must tell its model name (model=...)"
            )
        self.cheap_model = cheap_model
        self.cheap_name = name
        self.ledger = ledger
        self.threshold = threshold
        self.tags = dict(tags or {})
        self._routers: dict[str, ModelRoutingMiddleware] = {}

    def _layer(self, request: ModelRequest[Any]) -> ModelRoutingMiddleware | None:
        strong = model_name(request.model)
        if strong is None or strong == self.cheap_name:
            return None  # nothing to route between: the call goes to the model as is
        if strong not in self._routers:
            router = Router(
                cheap=self.cheap_name, strong=strong, ledger=self.ledger, threshold=self.threshold
            )
            self._routers[strong] = ModelRoutingMiddleware(
                router, cheap_model=self.cheap_model, strong_model=request.model, tags=self.tags
            )
        return self._routers[strong]

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Route between the cheap model and the agent's model."""
        layer = self._layer(request)
        return handler(request) if layer is None else layer.wrap_model_call(request, handler)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async twin of ``wrap_model_call``."""
        layer = self._layer(request)
        if layer is None:
            return await handler(request)
        return await layer.awrap_model_call(request, handler)


# ------------------------------------------------------------------ the stack


def _same_store(name: str, value: Any, store: Store) -> None:
    other = getattr(value, "store", None)
    if other is not None and other is not store:
        raise ConfigError(name, value, "must use the same Store as default_stack(store, ...)")


def default_cache(
    store: Store, *, namespace: str = "default", ledger: Ledger | None = None
) -> SemanticCache:
    """The cache ``default_stack`` and ``wrap_model`` build: a ``SemanticCache`` whose
    embedder is loaded now, so the first lookup meets its deadline instead of timing out
    (a miss) while the model loads.

    Its lookup deadline is ``GRAPHTHRIFT_CACHE_TIMEOUT``, else ``DEFAULT_LOOKUP_TIMEOUT``
    (1 s, not the bare cache's 0.1 s): it sits in front of a model call of seconds, and on
    a busy machine embedding alone can take over 0.1 s, which would turn every lookup into
    a miss. A lookup past the deadline still fails open (a miss).
    """
    timeout = env_float("GRAPHTHRIFT_CACHE_TIMEOUT", DEFAULT_LOOKUP_TIMEOUT)
    cache = SemanticCache(store, namespace=namespace, ledger=ledger, timeout=timeout)
    cache.embedder.embed(["graphthrift warm-up"])
    return cache


def _cache_layer(
    store: Store,
    cache: ExactCache | bool,
    ledger: Ledger,
    namespace: str | None,
    tenant_id: str | None,
) -> AgentMiddleware[Any, Any, Any] | None:
    if cache is False:
        if namespace is not None:
            raise ConfigError("namespace", namespace, "names a cache, but cache=False")
        return None
    if cache is True:
        cache = default_cache(store, namespace=namespace or "default", ledger=ledger)
    elif isinstance(cache, ExactCache):
        _same_store("cache", cache, store)
        if namespace is not None:
            raise ConfigError("namespace", namespace, "give it to the cache you pass, not both")
    else:
        raise ConfigError("cache", cache, "must be True, False, an ExactCache or a SemanticCache")
    scope = {"tenant_id": tenant_id} if tenant_id else {}
    return TenantCacheMiddleware(cache, **scope)


def _history_layer(history: bool | int | HistoryPruner) -> HistoryPruningMiddleware | None:
    if history is False:
        return None
    if history is True:
        return HistoryPruningMiddleware()
    if isinstance(history, HistoryPruner):
        return HistoryPruningMiddleware(pruner=history)
    if isinstance(history, int) and history > 0:
        return HistoryPruningMiddleware(max_tokens=history)
    raise ConfigError("history", history, "must be True, False, a HistoryPruner or max tokens > 0")


def default_stack(
    store: Store,
    *,
    cheap_model: BaseChatModel | None = None,
    budget: Budget | None = None,
    cache: ExactCache | bool = True,
    history: bool | int | HistoryPruner = True,
    compressor: Compressor | None = None,
    ledger: Ledger | None = None,
    record_calls: bool = True,
    tenant_id: str | None = None,
    namespace: str | None = None,
    route_threshold: float = 0.5,
) -> list[AgentMiddleware[Any, Any, Any]]:
    """graphthrift's middleware for ``create_agent(model, tools, middleware=...)``, in order.

    Order and why (the first is the outermost): call recording, cache, history pruning,
    context compression, routing, budget; see this module's docstring. Append your own
    middleware after the list when it must see the pruned, routed call, before it when a
    cache hit must skip it.

    Args:
        store: the shared ``Store`` (the cache, the ledger and the budget all live there).
        cheap_model: a chat model to try first; the agent's own model is the strong one.
            No routing without it.
        budget: a ``Budget`` to enforce per call (none by default).
        cache: ``True`` (a ``SemanticCache`` in ``namespace``), ``False``, or your cache.
            It serves only runs with a ``tenant_id`` (metadata or ``tenant_id=``), scoped
            to it, and per user for answers that depend on earlier turns.
        history: ``True`` (prune at the default budget), ``False``, a high watermark in
            tokens, or a configured ``HistoryPruner``.
        compressor: shrink this turn's tool results with it (none by default).
        ledger: where cache hits, routes and (``record_calls``) model calls are booked;
            default ``Ledger(store)``.
        record_calls: add a ``CostTagger`` to model calls when the run has none.
        tenant_id: the tenant of runs whose metadata names none.
        namespace: the default cache's namespace.
        route_threshold: the router's difficulty threshold.

    Raises:
        ConfigError: conflicting or invalid arguments (a cache, budget or ledger on another
            store; ``namespace`` with ``cache=False`` or with your own cache; ...).

    Example:
        >>> agent = create_agent(model, tools, middleware=default_stack(store))
        >>> agent.invoke({"messages": [("user", "hi")]}, {"metadata": {"tenant_id": "acme"}})
    """
    if not isinstance(store, Store):
        raise ConfigError("store", store, "must be a graphthrift Store")
    if ledger is None:
        ledger = Ledger(store)
    _same_store("ledger", ledger, store)
    if budget is not None:
        if not isinstance(budget, Budget):
            raise ConfigError("budget", budget, "must be a graphthrift Budget")
        _same_store("budget", budget, store)
    tags = {"tenant_id": tenant_id} if tenant_id else {}
    layers: list[AgentMiddleware[Any, Any, Any] | None] = [
        CallRecordingMiddleware(ledger, **tags) if record_calls else None,
        _cache_layer(store, cache, ledger, namespace, tenant_id),
        _history_layer(history),
        ContextCompressionMiddleware(compressor) if compressor is not None else None,
        (
            AgentModelRoutingMiddleware(
                cheap_model, ledger=ledger, threshold=route_threshold, tags=tags
            )
            if cheap_model is not None
            else None
        ),
        BudgetMiddleware(budget, tags=tags) if budget is not None else None,
    ]
    return [layer for layer in layers if layer is not None]
