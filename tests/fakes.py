"""Fake chat models built on langchain_core's, reporting usage the way real providers do."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel as BaseChatModel_
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk


class UsageFakeChatModel(GenericFakeChatModel):
    """``GenericFakeChatModel`` whose answers carry usage, also when streamed.

    Like OpenAI with ``stream_usage=True``, the usage arrives on the last streamed chunk.
    ``model_name`` is reported in ``response_metadata`` and LangSmith params, so handlers
    can price the call.
    """

    model_name: str = "gpt-4o-mini"
    usage: dict[str, Any] | None = None

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_model_name"] = self.model_name
        return params

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        chunks = list(super()._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
        yield from chunks
        if self.usage is not None:
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    usage_metadata=self.usage,
                    response_metadata={"model_name": self.model_name},
                )
            )


def usage_model(
    text: str = "The answer is 42.",
    *,
    input_tokens: int = 120,
    output_tokens: int = 9,
    cached: int = 0,
    reasoning: int = 0,
    model_name: str = "gpt-4o-mini",
    repeat: bool = True,
) -> UsageFakeChatModel:
    """A fake model answering ``text`` with the given usage."""
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }
    if cached:
        usage["input_token_details"] = {"cache_read": cached}
    if reasoning:
        usage["output_token_details"] = {"reasoning": reasoning}
    message = AIMessage(
        content=text, usage_metadata=usage, response_metadata={"model_name": model_name}
    )  # type: ignore[arg-type]
    messages = itertools.cycle([message]) if repeat else iter([message])
    return UsageFakeChatModel(messages=messages, usage=usage, model_name=model_name)


class RateLimitError(Exception):
    """Named like the OpenAI/Anthropic clients' error, with the HTTP status they carry."""

    status_code = 429


class UpstreamError(Exception):
    status_code = 503


class FlakyChatModel(UsageFakeChatModel):
    """Raises the queued errors first, then answers like ``UsageFakeChatModel``."""

    errors: list[Exception] = []  # noqa: RUF012 - a pydantic field, copied per instance

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Any:
        if self.errors:
            raise self.errors.pop(0)
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def flaky_model(*errors: Exception, **kwargs: Any) -> FlakyChatModel:
    base = usage_model(**kwargs)
    return FlakyChatModel(
        messages=base.messages, usage=base.usage, model_name=base.model_name, errors=list(errors)
    )


def triage_answer_graph(checkpointer: Any = None) -> Any:
    """A compiled two-node LangGraph graph: a cheap triage call, then a strong answer.

    triage: gpt-4o-mini, 300 in / 20 out; answer: gpt-4o, 1500 in (1024 cached) / 400 out.
    """
    from langgraph.graph import START, MessagesState, StateGraph

    cheap = usage_model("triage done", input_tokens=300, output_tokens=20, model_name="gpt-4o-mini")
    strong = usage_model(
        "final answer", input_tokens=1500, output_tokens=400, cached=1024, model_name="gpt-4o"
    )

    def triage(state: MessagesState) -> dict[str, Any]:
        return {"messages": [cheap.invoke(state["messages"])]}

    def answer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [strong.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("triage", triage)
    graph.add_node("answer", answer)
    graph.add_edge(START, "triage")
    graph.add_edge("triage", "answer")
    return graph.compile(checkpointer=checkpointer)


# --------------------------------------------------------------------------------------
# Prompt-recording chat models for the composed scenarios (tests/scenarios/).


class CallLog:
    """Every call a ``RecordingChatModel`` answered: the prompt it received, the run's
    metadata (tenant, user, thread) and the usage it reported, so scenario tests can check
    prompts and price the calls themselves."""

    def __init__(self) -> None:
        import threading

        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, call: dict[str, Any]) -> None:
        with self._lock:
            self.calls.append(call)

    def of(self, **match: Any) -> list[dict[str, Any]]:
        """The calls whose metadata has all of ``match``."""
        with self._lock:
            calls = list(self.calls)
        return [c for c in calls if all(c["metadata"].get(k) == v for k, v in match.items())]


def fake_usage(messages: list[BaseMessage], text: str, tool_calls: list[Any]) -> dict[str, int]:
    """Deterministic provider-style usage: about one token per four characters."""
    prompt_chars = sum(len(str(m.content)) + 12 for m in messages)
    input_tokens = 8 + prompt_chars // 4
    output_tokens = 3 + len(text) // 4 + 12 * len(tool_calls)
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


class RecordingChatModel(BaseChatModel_):
    """A chat model whose answer is a pure function of its prompt (``reply``), which
    records each prompt, the run's metadata and the usage it reports in ``log``.

    ``reply(messages, model_name) -> (text, tool_calls)``. Streams word by word with the
    usage on the last chunk, as OpenAI does with ``stream_usage=True``.
    """

    model_name: str = "gpt-4o-mini"
    reply: Any = None
    log: Any = None
    tools: list[Any] = []  # noqa: RUF012 - a pydantic field

    @property
    def _llm_type(self) -> str:
        return "graphthrift-recording-fake"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_model_name"] = self.model_name
        return params

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.model_copy(update={"tools": list(tools)})

    def _answer(self, messages: list[BaseMessage], run_manager: Any) -> AIMessage:
        text, tool_calls = self.reply(messages, self.model_name)
        calls = [
            {"name": name, "args": args, "id": f"call_{uuid_hex()}", "type": "tool_call"}
            for name, args in tool_calls
        ]
        usage = fake_usage(messages, text, calls)
        metadata = _run_metadata(run_manager)
        if self.log is not None:
            self.log.add(
                {
                    "model": self.model_name,
                    "messages": list(messages),
                    "metadata": metadata,
                    "usage": usage,
                    "text": text,
                }
            )
        return AIMessage(
            content=text,
            tool_calls=calls,
            usage_metadata=usage,
            response_metadata={"model_name": self.model_name},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Any:
        from langchain_core.outputs import ChatGeneration, ChatResult

        message = self._answer(messages, run_manager)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        message = self._answer(messages, run_manager)
        words = str(message.content).split(" ") if message.content else []
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                tool_call_chunks=[
                    {"name": c["name"], "args": _dumps(c["args"]), "id": c["id"], "index": i}
                    for i, c in enumerate(message.tool_calls)
                ],
                usage_metadata=message.usage_metadata,
                response_metadata={"model_name": self.model_name},
                chunk_position="last",
            )
        )


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


def _dumps(args: Any) -> str:
    import json

    return json.dumps(args)


def _run_metadata(run_manager: Any) -> dict[str, Any]:
    """The run's metadata as the model sees it: the callback manager's, plus the config
    LangChain carries in its context variable (with ``thread_id`` from ``configurable``)."""
    from langchain_core.runnables.config import var_child_runnable_config

    config = var_child_runnable_config.get() or {}
    metadata = {**(config.get("metadata") or {}), **(getattr(run_manager, "metadata", None) or {})}
    thread = (config.get("configurable") or {}).get("thread_id")
    if thread is not None:
        metadata.setdefault("thread_id", thread)
    return metadata


def fake_usage_text(prompt: str, text: str) -> dict[str, int]:
    """OpenAI-style usage (``prompt_tokens``/``completion_tokens``) for a text prompt, about
    one token per four characters: what ``RecordingLlamaLLM``-style fakes report."""
    prompt_tokens = 8 + len(prompt) // 4
    completion_tokens = 3 + len(text) // 4
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
