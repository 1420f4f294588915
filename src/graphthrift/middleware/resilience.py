"""``ResilienceMiddleware``: single-flight for ``create_agent`` model calls.

LangChain's ``ModelRetryMiddleware`` and ``ModelFallbackMiddleware`` retry and fall back one
call at a time; they cannot see that another thread, task or process is already generating
the same answer. This middleware makes identical concurrent model calls (same model,
settings, tools and messages, same tenant and scope) one provider call, through
``graphthrift.resilience.SingleFlight``. For request-id dedup of whole agent runs, wrap the
agent with ``graphthrift.langgraph.dedup_requests``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
)
from langchain_core._api.beta_decorator import suppress_langchain_beta_warning
from langchain_core.load import dumpd, load
from langgraph.config import get_config

from graphthrift.kernel import cache_scope, run_tags
from graphthrift.langgraph.resilience import _settings, _usage, message_fingerprint, model_name
from graphthrift.resilience import JSON_CODEC, Codec, SingleFlight
from graphthrift.usage import Usage

__all__ = ["ResilienceMiddleware"]


def _encode_response(response: Any) -> Any:
    if not isinstance(response, ModelResponse):
        raise TypeError(f"cannot share a {type(response).__name__} between callers")
    return dumpd({"result": response.result, "structured": response.structured_response})


def _decode_response(data: Any) -> ModelResponse[Any]:
    with suppress_langchain_beta_warning():  # ``load`` is LangChain's own, marked beta
        loaded = load(data, allowed_objects="messages")
    return ModelResponse(result=loaded["result"], structured_response=loaded["structured"])


#: ``ModelResponse`` to JSON and back, for answers handed over between processes.
RESPONSE_CODEC = Codec(encode=_encode_response, decode=_decode_response)


def _run_config() -> Mapping[str, Any]:
    try:
        return get_config()
    except RuntimeError:  # outside a LangGraph run
        return {}


def _response_usage(response: Any) -> Usage | None:
    if isinstance(response, ModelResponse):
        for message in reversed(response.result):
            usage = _usage(message)
            if usage is not None:
                return usage
    return None


class ResilienceMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Identical concurrent model calls of ``create_agent`` agents make one provider call.

    Args:
        single_flight: the ``SingleFlight`` (with a ledger, waiters are booked as
            ``kind="dedup"`` rows with ``saved_usd``).
        model_name: the priced name of the agent's model (default: read from the model).

    It writes no state. Place it outermost (first in ``middleware=[...]``) so that retries
    and fallbacks inside it are shared too.

    Example:
        >>> agent = create_agent(model, tools,
        ...                      middleware=[ResilienceMiddleware(SingleFlight(store))])
    """

    def __init__(self, single_flight: SingleFlight, *, model_name: str | None = None) -> None:
        super().__init__()
        if not isinstance(single_flight, SingleFlight):
            raise TypeError(
                f"ResilienceMiddleware needs a graphthrift SingleFlight, got {single_flight!r}"
            )
        if single_flight.engine.codec is JSON_CODEC:
            single_flight.engine.codec = RESPONSE_CODEC
        self.single_flight = single_flight
        self.model_name = model_name

    def _args(self, request: ModelRequest[Any]) -> dict[str, Any]:
        messages = list(request.messages)
        if request.system_message is not None:
            messages.insert(0, request.system_message)
        tools = sorted(getattr(t, "name", None) or str(t) for t in request.tools or [])
        key = message_fingerprint(
            messages,
            model=_settings(request.model),
            settings=dict(request.model_settings or {}),
            tools=tools,
            tool_choice=request.tool_choice,
        )
        config = _run_config()
        return {
            "key": key,
            "scope": cache_scope(config),
            "model": self.model_name or model_name(request.model),
            "usage_of": _response_usage,
            "tags": run_tags(config),
        }

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Call the model, or take the answer of the identical call already running."""
        return self.single_flight.call(fn=lambda: handler(request), **self._args(request))

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async twin of ``wrap_model_call``."""

        async def call() -> ModelResponse[Any]:
            return await handler(request)

        return await self.single_flight.acall(fn=call, **self._args(request))
