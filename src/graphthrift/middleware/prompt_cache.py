"""``PromptCacheKeyMiddleware``: an OpenAI ``prompt_cache_key`` per tenant and thread.

OpenAI's prompt cache is keyed by prefix and routed by ``prompt_cache_key``; without a key,
a busy tenant's requests spread over machines and miss each other's warm prefixes. This
middleware sets the key from the run's tenant and thread (``kernel.prompt_cache_key``) on
each model call to an OpenAI chat model, unless the call already names one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse

from graphthrift.kernel import prompt_cache_key

#: ``_llm_type`` of the chat models whose API takes ``prompt_cache_key``.
_OPENAI_TYPES = frozenset({"openai-chat", "azure-openai-chat"})


def _config() -> Mapping[str, Any]:
    try:
        from langgraph.config import get_config

        return get_config()
    except RuntimeError:  # not inside a runnable
        return {}


class PromptCacheKeyMiddleware(AgentMiddleware):
    """Send OpenAI model calls with ``prompt_cache_key`` derived from tenant and thread.

    Args:
        **fixed: default tags (e.g. ``tenant_id``) when the run's metadata has none.

    Example:
        >>> agent = create_agent(ChatOpenAI(model="gpt-4o-mini"), tools,
        ...                      middleware=[PromptCacheKeyMiddleware()])
    """

    def __init__(self, **fixed: Any) -> None:
        super().__init__()
        self.fixed = fixed

    def _keyed(self, request: ModelRequest[Any]) -> ModelRequest[Any]:
        settings = request.model_settings or {}
        if getattr(request.model, "_llm_type", None) not in _OPENAI_TYPES:
            return request
        if settings.get("prompt_cache_key"):
            return request
        key = prompt_cache_key(_config(), **self.fixed)
        if key is None:
            return request
        return request.override(model_settings={**settings, "prompt_cache_key": key})

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Add the key, then call the model."""
        return handler(self._keyed(request))

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async twin of ``wrap_model_call``."""
        return await handler(self._keyed(request))
