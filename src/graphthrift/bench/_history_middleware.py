"""The ``SummarizationMiddleware`` peer of ``bench history``: LangChain 1.x's own compaction.

Most of our users start from ``create_agent`` with LangChain's ``SummarizationMiddleware``,
so the bench runs it as they would: the real ``create_agent`` graph, the real middleware,
and two fake chat models. The agent's model records the prompt it is sent and replies with
the conversation's next assistant message (so the thread goes on as recorded). The
summarizer model receives the middleware's real summary prompt and answers with our
``ExtractiveSummarizer``'s summary of the messages in it, the same stand-in every peer
gets; its calls are priced as the LLM calls they stand for.
"""

from __future__ import annotations

import html
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import SummarizationMiddleware
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from graphthrift.history.pricing import SummarizerCall
from graphthrift.summarize import ExtractiveSummarizer
from graphthrift.text import Message, count_messages, count_text, to_message

__all__ = ["ExtractiveChatModel", "ReplayChatModel", "SummarizationMiddlewarePeer"]

_XML_MESSAGE = re.compile(r'<message type="(\w+)">(.*?)</message>', re.DOTALL)
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


class ExtractiveChatModel(BaseChatModel):
    """A chat model that answers a summary prompt with the extractive summary of the
    messages quoted in it (``get_buffer_string(..., format="xml")``, as LangChain quotes
    them). Books each call's input and output tokens in ``log``."""

    max_summary_tokens: int = 160
    log: list[SummarizerCall] = Field(default_factory=list)
    seconds: float = 0.0

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        started = time.perf_counter()
        prompt = "\n".join(str(m.content) for m in messages)
        quoted = [
            Message(_ROLES.get(kind, "user"), html.unescape(text))  # type: ignore[arg-type]
            for kind, text in _XML_MESSAGE.findall(prompt)
        ]
        summary = ExtractiveSummarizer().summarize(quoted, "", self.max_summary_tokens)
        self.log.append(
            SummarizerCall(
                count_messages([to_message(m) for m in messages]).tokens, count_text(summary)
            )
        )
        self.seconds += time.perf_counter() - started
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=summary))])

    @property
    def _llm_type(self) -> str:
        return "graphthrift-extractive-summary"


class ReplayChatModel(BaseChatModel):
    """The agent's model: records the messages of each call in ``seen`` and replies with
    ``reply`` (set before each turn), or an empty message."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)
    reply: AIMessage | None = None

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(list(messages))
        message = self.reply or AIMessage(content="", id=str(uuid.uuid4()))
        return ChatResult(generations=[ChatGeneration(message=message)])

    @property
    def _llm_type(self) -> str:
        return "graphthrift-replay"


def _counter(count: Callable[[Sequence[Any]], int]) -> Callable[[Iterable[Any]], int]:
    """The bench's tiktoken counter in the shape ``SummarizationMiddleware`` takes."""
    return lambda messages: count(list(messages))


class SummarizationMiddlewarePeer:
    """``create_agent`` with ``SummarizationMiddleware`` at a token budget, replayed turn by turn.

    The middleware summarizes when the messages reach ``max_tokens`` and keeps the most recent
    ``max_tokens // 2`` tokens verbatim, counted with the bench's tiktoken counter.
    """

    name = "summarization_middleware"
    llm_summarizer = True

    def __init__(
        self,
        max_tokens: int,
        max_summary_tokens: int,
        token_counter: Callable[[Sequence[Any]], int],
    ) -> None:
        self.summary_model = ExtractiveChatModel(max_summary_tokens=max_summary_tokens)
        self.model = ReplayChatModel()
        self.middleware = SummarizationMiddleware(
            model=self.summary_model,
            trigger=("tokens", max_tokens),
            keep=("tokens", max(1, max_tokens // 2)),
            token_counter=_counter(token_counter),
        )
        self.agent = create_agent(self.model, tools=[], middleware=[self.middleware])
        self.history: list[Any] = []
        self.state: list[Any] = []
        self.fed = 0
        self.calls_seen = 0

    def start(self, history: list[Any]) -> None:
        self.history, self.state, self.fed = history, [], 0
        self.calls_seen = len(self.summary_model.log)

    def step(self, history: list[Any]) -> list[Message]:
        end = len(history)
        new = self.history[self.fed : end]
        nxt = self.history[end] if end < len(self.history) else None
        if isinstance(nxt, AIMessage):
            self.model.reply = AIMessage(content=nxt.content, id=nxt.id)
            self.fed = end + 1  # the recorded reply is now in the agent's state
        else:
            self.model.reply = None
            self.fed = end
        result = self.agent.invoke({"messages": [*self.state, *new]})
        self.state = list(result["messages"])
        return [to_message(m) for m in self.model.seen[-1]]

    def summarizer_seconds(self) -> float:
        return self.summary_model.seconds

    def summary_tokens(self) -> int:
        for m in self.state:
            if (m.additional_kwargs or {}).get("lc_source") == "summarization":
                return count_text(str(m.content))
        return 0

    def summarizer_usage(self) -> tuple[int, int]:
        log = self.summary_model.log
        return len(log), sum(c.input_tokens for c in log)

    def take_calls(self) -> list[SummarizerCall]:
        calls = self.summary_model.log[self.calls_seen :]
        self.calls_seen = len(self.summary_model.log)
        return list(calls)
