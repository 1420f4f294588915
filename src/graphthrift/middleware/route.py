"""``ModelRoutingMiddleware``: the cheap-first cascade for ``create_agent``, per model call.

langchain's router middleware picks a model once per run and ``ModelFallbackMiddleware``
retries only on errors. This one decides at every model call and escalates to the strong
model when the cheap answer is unsure, fails a validator (including the tool arguments the
agent's own tools declare) or errors. The logic is ``graphthrift.Router``.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config
from langchain_core.utils.function_calling import convert_to_openai_tool

from graphthrift.kernel import run_config, run_tags
from graphthrift.route.router import Router
from graphthrift.route.validators import ToolArgsValidator

__all__ = ["ModelRoutingMiddleware", "RouterMiddleware"]


@contextmanager
def _route_metadata(route: str, model: str) -> Iterator[None]:
    """Run the model call with ``metadata["route"]`` set, so ``CostTagger`` records it, and
    ``metadata["routed_model"]`` the router's name of the model called, so a
    ``BudgetMiddleware`` inside prices a model that tells no name of its own (a deployment).

    ``create_agent`` invokes the bound model with no config, so the call inherits the
    node's config from LangChain's context variable; a copy of it with the route added is
    set for the duration of the call (``with_config`` would be lost in ``bind_tools``).
    """
    current = var_child_runnable_config.get()
    config: RunnableConfig = {**(current or {})}
    config["metadata"] = {**(config.get("metadata") or {}), "route": route, "routed_model": model}
    token = var_child_runnable_config.set(config)
    try:
        yield
    finally:
        var_child_runnable_config.reset(token)


class ModelRoutingMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Sends each model call to the cheapest adequate model, escalating when needed.

    Args:
        router: the ``graphthrift.Router`` (its ``cheap``/``strong`` names are recorded).
        cheap_model, strong_model: the chat models behind those names.
        validate_tool_args: also escalate when a cheap tool call's arguments do not match
            the tool's schema (or name an unknown tool).
        tags: fixed ledger tags; the run's metadata and ``thread_id`` are added per call.

    Each model call runs with ``metadata["route"]`` set to ``cheap`` (the cheap model) or
    ``escalated`` (the strong one), so ``CostTagger``'s llm rows carry the route too.

    Example:
        >>> router = Router(cheap="gpt-4o-mini", strong="gpt-4o", ledger=ledger)
        >>> agent = create_agent(cheap, tools, middleware=[
        ...     ModelRoutingMiddleware(router, cheap_model=cheap, strong_model=strong)])
    """

    def __init__(
        self,
        router: Router,
        *,
        cheap_model: BaseChatModel,
        strong_model: BaseChatModel,
        validate_tool_args: bool = True,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(router, Router):
            raise TypeError(f"{type(self).__name__} needs a graphthrift.Router, got {router!r}")
        self.router = router
        self.models = {router.cheap: cheap_model, router.strong: strong_model}
        self.validate_tool_args = validate_tool_args
        self.tags = dict(tags or {})
        self._tool_validators: dict[tuple[str, ...], ToolArgsValidator] = {}

    def _tool_validator(self, request: ModelRequest[Any]) -> ToolArgsValidator | None:
        if not self.validate_tool_args or not request.tools:
            return None
        schemas = {}
        for tool in request.tools:
            spec = convert_to_openai_tool(tool)["function"]
            schemas[spec["name"]] = spec.get("parameters") or {"type": "object"}
        key = tuple(sorted(schemas))
        if key not in self._tool_validators:
            self._tool_validators[key] = ToolArgsValidator(schemas)
        return self._tool_validators[key]

    def _validators(self, request: ModelRequest[Any]) -> tuple[ToolArgsValidator, ...]:
        validator = self._tool_validator(request)
        return () if validator is None else (validator,)

    def _route_of(self, name: str) -> str:
        return "cheap" if name == self.router.cheap else "escalated"

    def _context(self, request: ModelRequest[Any]) -> tuple[str | None, dict[str, Any]]:
        tags = run_tags(run_config(), **self.tags)
        thread = tags.get("thread_id")
        return (None if thread is None else str(thread)), tags

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Cheap model first; the strong one when the router's checks say so."""
        thread, tags = self._context(request)

        def call(name: str) -> ModelResponse[Any]:
            with _route_metadata(self._route_of(name), name):
                return handler(request.override(model=self.models[name]))

        result = self.router.run(
            request.messages,
            call,
            thread_id=thread,
            has_tools=bool(request.tools),
            tags=tags,
            validators=self._validators(request),
        )
        out: ModelResponse[Any] = result.answer
        return out

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async twin of ``wrap_model_call``."""
        thread, tags = self._context(request)

        async def call(name: str) -> ModelResponse[Any]:
            with _route_metadata(self._route_of(name), name):
                return await handler(request.override(model=self.models[name]))

        result = await self.router.arun(
            request.messages,
            call,
            thread_id=thread,
            has_tools=bool(request.tools),
            tags=tags,
            validators=self._validators(request),
        )
        out: ModelResponse[Any] = result.answer
        return out


class RouterMiddleware(ModelRoutingMiddleware):
    """Deprecated: ``ModelRoutingMiddleware`` (same arguments)."""

    def __init__(self, router: Router, **kwargs: Any) -> None:
        warnings.warn(
            "RouterMiddleware is deprecated; use ModelRoutingMiddleware",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(router, **kwargs)
