"""``BudgetedLLM``: a LlamaIndex LLM that reserves each call's cost before it runs.

LlamaIndex's ``TokenCountingHandler`` counts after the fact, and instrumentation handlers
cannot stop a call (the dispatcher swallows their exceptions), so the budget hook wraps
the LLM: ``chat``/``complete`` (sync, async, streaming) reserve the worst case through
``graphthrift.Budget``, raise ``BudgetExceeded`` when refused (``compress``/``summarize``
rungs apply when their callables are given), call the wrapped LLM and settle with the
usage it reports (``raw["usage"]``) or, failing that, the counted tokens of the answer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms import LLM
from pydantic import ConfigDict, Field, PrivateAttr

from graphthrift.budget.budget import Budget
from graphthrift.budget.reservation import Reservation
from graphthrift.kernel import read_usage, renamed_argument, run_tags
from graphthrift.provenance import note_degraded
from graphthrift.text.tokens import count_text

__all__ = ["BudgetedLLM"]


class BudgetedLLM(LLM):
    """Wraps any LlamaIndex ``LLM`` with a pre-flight ``Budget``.

    Args:
        llm: the LLM to call.
        budget: the ``graphthrift.Budget``.
        model: the priced model name (default: ``llm.metadata.model_name``). ``model_name``
            is its deprecated spelling; giving both, different, raises ``ConfigError``.
        tags: tenant_id, feature, thread_id, run_id for the budget's scopes; tags bound for
            the current run (``graphthrift.kernel.bound_run_tags``) fill what these lack. A
            per-run limit needs a ``run_id`` there (else ``BudgetScopeMissing``).
        compressor, summarizer: ``messages -> messages`` callables for those ladder rungs.
        max_tokens_param: the per-call output cap keyword. When the wrapped LLM has that
            field (OpenAI, Anthropic and most hosted LLMs have ``max_tokens``), each call is
            sent with it set to the output tokens reserved, so a call cannot spend more
            than it held. ``None`` never passes it.

    Example:
        >>> llm = BudgetedLLM(llm=OpenAI(model="gpt-4o-mini"), budget=budget,
        ...                   tags={"tenant_id": "acme"})
        >>> llm.chat([ChatMessage(role="user", content="hi")])
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    llm: LLM
    budget: Any
    model: str | None = None
    tags: dict[str, Any] = Field(default_factory=dict)
    compressor: Callable[[list[Any]], Sequence[Any]] | None = None
    summarizer: Callable[[list[Any]], Sequence[Any]] | None = None
    max_tokens_param: str | None = "max_tokens"
    _name: str = PrivateAttr(default="")

    def __init__(self, **data: Any) -> None:
        # Checked before pydantic validates, which would wrap a ConfigError in its own error.
        old = data.pop("model_name", None)
        data["model"] = renamed_argument(
            "BudgetedLLM", "model", data.get("model"), "model_name", old
        )
        super().__init__(**data)

    def model_post_init(self, __context: Any) -> None:
        if not isinstance(self.budget, Budget):
            raise TypeError(f"BudgetedLLM needs a graphthrift.Budget, got {self.budget!r}")
        self._name = self.model or self.llm.metadata.model_name
        self.budget.check_model(self._name)

    @property
    def model_name(self) -> str:
        """Deprecated: the priced model name (``model``, else the LLM's own)."""
        return self._name

    @classmethod
    def class_name(cls) -> str:
        return "BudgetedLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return self.llm.metadata

    # -- shared steps ---------------------------------------------------------------------

    def _supports_cap(self) -> bool:
        """Whether the wrapped LLM takes a per-call ``max_tokens`` (OpenAI, Anthropic, ...)."""
        if self.max_tokens_param is None:
            return False
        fields = getattr(type(self.llm), "model_fields", {})
        return self.max_tokens_param in fields

    def _cap(self, call: Mapping[str, Any]) -> int | None:
        key = self.max_tokens_param or "max_tokens"
        cap = call.get(key) or getattr(self.llm, key, None) or self.llm.metadata.num_output
        return cap if isinstance(cap, int) and cap > 0 else None

    def _kwargs(self, call: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "tags": run_tags(None, **self.tags),
            "compress": self.compressor,
            "summarize": self.summarizer,
            "max_output_tokens": self._cap(call),
        }

    def _reserve(
        self, messages: Sequence[Any], call: dict[str, Any]
    ) -> tuple[Reservation, list[Any], dict[str, Any]]:
        done = self.budget.preflight(self._name, list(messages), **self._kwargs(call))
        return self._accept(done, call)

    async def _areserve(
        self, messages: Sequence[Any], call: dict[str, Any]
    ) -> tuple[Reservation, list[Any], dict[str, Any]]:
        done = await self.budget.apreflight(self._name, list(messages), **self._kwargs(call))
        return self._accept(done, call)

    def _accept(
        self, done: Any, call: dict[str, Any]
    ) -> tuple[Reservation, list[Any], dict[str, Any]]:
        if done.outcome == "end":  # no LangGraph to end cleanly in: a hard stop
            raise done.shortfall.error()
        if done.steps:  # a cached query engine around this LLM must not store the answer
            note_degraded()
        reservation: Reservation = done.reservation
        if self._supports_cap():
            # the call may write at most what it reserved (the concurrency bound)
            assert self.max_tokens_param is not None
            call = {**call, self.max_tokens_param: reservation.max_output_tokens}
        return reservation, done.messages, call

    def _usage(self, response: Any) -> dict[str, Any]:
        """The call's usage, priced at the model the provider says answered (``raw.model``)."""
        raw = getattr(response, "raw", None)
        found = None
        model: Any = None
        if isinstance(raw, Mapping):
            found = read_usage(raw.get("usage"))
            model = raw.get("model")
        elif raw is not None:
            found = read_usage(getattr(raw, "usage", None))
            model = getattr(raw, "model", None)
        if found is not None:
            out: dict[str, Any] = {
                "input_tokens": found.input_tokens,
                "output_tokens": found.output_tokens,
                "cached_tokens": found.cached_tokens,
            }
            if isinstance(model, str) and model:
                out["model"] = model
            return out
        message = getattr(response, "message", None)
        text = getattr(response, "text", None)
        if text is None and message is not None:
            text = message.content
        return {"output_tokens": count_text(str(text or ""), self._name)}

    @staticmethod
    def _prompt(prompt: str) -> list[ChatMessage]:
        return [ChatMessage(role=MessageRole.USER, content=prompt)]

    @staticmethod
    def _prompt_back(messages: list[Any], prompt: str) -> str:
        return str(messages[-1].content) if messages else prompt

    # -- chat -----------------------------------------------------------------------------

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        reservation, sent, kwargs = self._reserve(messages, kwargs)
        try:
            response = self.llm.chat(sent, **kwargs)
        except BaseException:
            self.budget.release(reservation)
            raise
        self.budget.settle(reservation, **self._usage(response))
        return response

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        reservation, sent, kwargs = await self._areserve(messages, kwargs)
        try:
            response = await self.llm.achat(sent, **kwargs)
        except BaseException:
            await self.budget.arelease(reservation)
            raise
        await self.budget.asettle(reservation, **self._usage(response))
        return response

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        reservation, sent, kwargs = self._reserve(self._prompt(prompt), kwargs)
        try:
            response = self.llm.complete(self._prompt_back(sent, prompt), formatted, **kwargs)
        except BaseException:
            self.budget.release(reservation)
            raise
        self.budget.settle(reservation, **self._usage(response))
        return response

    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        reservation, sent, kwargs = await self._areserve(self._prompt(prompt), kwargs)
        try:
            response = await self.llm.acomplete(
                self._prompt_back(sent, prompt), formatted, **kwargs
            )
        except BaseException:
            await self.budget.arelease(reservation)
            raise
        await self.budget.asettle(reservation, **self._usage(response))
        return response

    # -- streaming: reserve before the first chunk, settle after the last ------------------

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        reservation, sent, kwargs = self._reserve(messages, kwargs)

        def gen() -> Generator[ChatResponse, None, None]:
            last = None
            try:
                for last in self.llm.stream_chat(sent, **kwargs):
                    yield last
            finally:
                self.budget.settle(reservation, **self._usage(last))

        return gen()

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        reservation, sent, kwargs = self._reserve(self._prompt(prompt), kwargs)

        def gen() -> Generator[CompletionResponse, None, None]:
            last = None
            try:
                for last in self.llm.stream_complete(
                    self._prompt_back(sent, prompt), formatted, **kwargs
                ):
                    yield last
            finally:
                self.budget.settle(reservation, **self._usage(last))

        return gen()

    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        reservation, sent, kwargs = await self._areserve(messages, kwargs)
        inner = await self.llm.astream_chat(sent, **kwargs)

        async def gen() -> AsyncGenerator[ChatResponse, None]:
            last = None
            try:
                async for last in inner:
                    yield last
            finally:
                await self.budget.asettle(reservation, **self._usage(last))

        return gen()

    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        reservation, sent, kwargs = await self._areserve(self._prompt(prompt), kwargs)
        inner = await self.llm.astream_complete(
            self._prompt_back(sent, prompt), formatted, **kwargs
        )

        async def gen() -> AsyncGenerator[CompletionResponse, None]:
            last = None
            try:
                async for last in inner:
                    yield last
            finally:
                await self.budget.asettle(reservation, **self._usage(last))

        return gen()
