"""``SimulatedChatModel``: the simulated provider as a LangChain chat model, and
``chat_model_from_env``: a real model from the environment, or the simulator.

``SimulatedChatModel`` answers through ``graphthrift.sim.SimulatedProvider`` and reports
usage the way LangChain's provider integrations do: ``usage_metadata`` with
``input_token_details.cache_read``, ``response_metadata["model_name"]``, and, when
streaming, the usage on the last chunk. ``bind_tools`` is supported: tool calls the oracle
plans come back as ``AIMessage.tool_calls``.

Example:
    >>> from graphthrift.sim import Oracle, SimulatedProvider
    >>> oracle = Oracle(); oracle.add("Hi", "Hello!")
    >>> model = SimulatedChatModel(model_name="gpt-4o", provider=SimulatedProvider(oracle))
    >>> model.invoke("Hi").usage_metadata["input_tokens"] > 0
    True
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field

from graphthrift.errors import require_extra
from graphthrift.sim import SimReply, SimulatedProvider

__all__ = ["ENV_MODELS", "SimulatedChatModel", "chat_model_from_env"]

ENV_MODELS = {"strong": "GRAPHTHRIFT_STRONG_MODEL", "cheap": "GRAPHTHRIFT_CHEAP_MODEL"}
_DEFAULTS = {"strong": "gpt-4o", "cheap": "gpt-4o-mini"}


class SimulatedChatModel(BaseChatModel):
    """A LangChain chat model over ``SimulatedProvider``: deterministic answers, real-looking
    usage (tiktoken counts, cached prefix tokens), a reported latency.

    Args:
        model_name: the model it stands for (priced by the ledger under this name).
        provider: the ``SimulatedProvider`` (share one between models so they share the
            oracle; each model name has its own prompt cache inside it).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str = "gpt-4o"
    provider: SimulatedProvider = Field(default_factory=SimulatedProvider)
    tools: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "graphthrift-simulated"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "graphthrift-sim"
        params["ls_model_name"] = self.model_name
        return params

    def _reply(self, messages: list[BaseMessage]) -> SimReply:
        return self.provider.complete(self.model_name, messages, tools=self.tools)

    def _message(self, reply: SimReply) -> AIMessage:
        return AIMessage(
            content=reply.text,
            tool_calls=_tool_calls(reply),
            usage_metadata=_usage(reply),
            response_metadata=_metadata(reply),
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._reply(messages)
        return ChatResult(generations=[ChatGeneration(message=self._message(reply))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._reply(messages)
        words = reply.text.split(" ") if reply.text else []
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        last = AIMessageChunk(
            content="",
            tool_call_chunks=[
                {"name": c["name"], "args": _json(c["args"]), "id": c["id"], "index": i}
                for i, c in enumerate(_tool_calls(reply))
            ],
            usage_metadata=_usage(reply),
            response_metadata=_metadata(reply),
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=last)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """A copy of this model that knows ``tools`` (their schemas count as input tokens)."""
        schemas = [convert_to_openai_tool(t) for t in tools]
        return self.model_copy(update={"tools": schemas})


def _json(args: Any) -> str:
    import json

    return json.dumps(args)


def _tool_calls(reply: SimReply) -> list[Any]:
    return [
        {
            "name": call.name,
            "args": dict(call.args),
            "id": "call_" + uuid.uuid5(uuid.NAMESPACE_OID, f"{reply.item_id}{call}").hex[:12],
            "type": "tool_call",
        }
        for call in reply.tool_calls
    ]


def _usage(reply: SimReply) -> UsageMetadata:
    u = reply.usage
    return UsageMetadata(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        total_tokens=u.input_tokens + u.output_tokens,
        input_token_details={"cache_read": u.cached_tokens},
    )


def _metadata(reply: SimReply) -> dict[str, Any]:
    return {
        "model_name": reply.model,
        "latency_ms": reply.latency_ms,
        "graphthrift_sim": {"correct": reply.correct, "item_id": reply.item_id},
    }


def chat_model_from_env(
    role: str,
    default: BaseChatModel | None = None,
    *,
    provider: SimulatedProvider | None = None,
    environ: dict[str, str] | None = None,
) -> BaseChatModel:
    """The chat model for ``role`` (``"strong"`` or ``"cheap"``).

    ``GRAPHTHRIFT_STRONG_MODEL`` / ``GRAPHTHRIFT_CHEAP_MODEL`` (e.g. ``openai:gpt-4o``) name
    a real model, built with ``langchain.chat_models.init_chat_model`` (the provider's
    package and API key must be installed and set). Unset: ``default``, or a
    ``SimulatedChatModel`` for ``gpt-4o`` (strong) / ``gpt-4o-mini`` (cheap) on ``provider``.

    Raises:
        ValueError: an unknown role.
        MissingExtra: a model is named but langchain (the ``agents`` extra) is not installed.
    """
    if role not in ENV_MODELS:
        raise ValueError(f"role must be one of {sorted(ENV_MODELS)}, got {role!r}")
    env = os.environ if environ is None else environ
    spec = (env.get(ENV_MODELS[role]) or "").strip()
    if spec:
        require_extra("langchain.chat_models", "agents", "langchain")
        from langchain.chat_models import init_chat_model

        model: BaseChatModel = init_chat_model(spec)
        return model
    if default is not None:
        return default
    return SimulatedChatModel(model_name=_DEFAULTS[role], provider=provider or SimulatedProvider())


def model_name_of(model: BaseChatModel) -> str:
    """The model name a chat model reports (``model_name`` or ``model``), for the router."""
    for attr in ("model_name", "model", "model_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__
