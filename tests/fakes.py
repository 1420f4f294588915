"""Fake chat models built on langchain_core's, reporting usage the way real providers do."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
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
