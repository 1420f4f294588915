"""``BatchChatModel``: offline calls go through the provider's Batch API at half price.

LangChain's ``.batch()`` runs requests synchronously in a thread pool (langchain #28508).
This wrapper keeps the user's ``ChatOpenAI`` or ``ChatAnthropic`` and routes the calls
marked offline (config metadata ``graphthrift_batch=True``, or ``route="batch"``) through
OpenAI's ``/v1/files`` + ``/v1/batches`` or Anthropic's Message Batches, using the SDK
clients the wrapped model already holds. Other calls go straight to the wrapped model.

- ``batch``/``abatch``: the offline inputs become one job; results come back in order.
- ``ainvoke``: concurrent offline calls (e.g. a LangGraph fan-out) are gathered for
  ``window_seconds`` into one job; each caller awaits its own future.
- ``submit`` / ``result``: a job id for long jobs, resumable from another process.

Jobs live in the store (``graphthrift.ops.batch``): a restarted process that runs the same
work finds the job already submitted and polls it instead of paying for it twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field, PrivateAttr

from graphthrift.kernel import run_tags
from graphthrift.ops.batch import (
    AnthropicBatches,
    BatchItemFailed,
    BatchJobs,
    BatchOutcome,
    BatchProvider,
    BatchRequest,
    OpenAIBatches,
)

__all__ = ["BATCH_METADATA_KEY", "BatchChatModel", "is_offline"]

#: The config metadata key that marks a call as offline work for the Batch API.
BATCH_METADATA_KEY = "graphthrift_batch"
_STREAM_KEYS = ("stream", "stream_options")


def is_offline(config: Mapping[str, Any] | None) -> bool:
    """Whether a run's config marks its calls for the Batch API."""
    metadata = (config or {}).get("metadata") or {}
    if metadata.get(BATCH_METADATA_KEY) is True:
        return True
    return run_tags(config).get("route") == "batch"


class _Window:
    """Offline ``ainvoke`` calls gathered on one event loop for the next job."""

    def __init__(self) -> None:
        self.items: list[tuple[BatchRequest, asyncio.Future[AIMessage]]] = []
        self.task: asyncio.Task[None] | None = None


class BatchChatModel(BaseChatModel):
    """A chat model that sends offline calls through the provider's Batch API.

    Args:
        model: the ``ChatOpenAI`` (Chat Completions) or ``ChatAnthropic`` to wrap.
        store: the shared ``Store`` that keeps the jobs.
        ledger: where each batched call is booked (``route="batch"``, batch price,
            ``saved_usd`` against the synchronous price); None books nothing.
        poll_interval, max_poll_interval, backoff: status polls start at
            ``poll_interval`` seconds and grow by ``backoff`` up to ``max_poll_interval``.
        max_attempts: tries per request; a failed request that may succeed on another try
            is resubmitted alone in the job's next batch.
        timeout: seconds ``batch``/``ainvoke`` wait before raising ``BatchJobTimeout``
            (the job keeps running; ``result(job_id)`` picks it up). None waits.
        window_seconds: how long ``ainvoke`` gathers concurrent offline calls into one job.
        always: send every call through the Batch API, marked or not.

    Example:
        ```python
        model = BatchChatModel(model=ChatOpenAI(model="gpt-4o-mini"), store=store,
                               ledger=ledger)
        answers = model.batch(prompts, config={"metadata": {"graphthrift_batch": True}})
        ```
    """

    model: BaseChatModel
    store: Any = Field(exclude=True)
    ledger: Any | None = Field(default=None, exclude=True)
    poll_interval: float = 5.0
    max_poll_interval: float = 300.0
    backoff: float = 1.5
    max_attempts: int = 3
    timeout: float | None = None
    window_seconds: float = 0.05
    max_batch_size: int = 50_000
    always: bool = False
    sleep: Callable[[float], None] | None = Field(default=None, exclude=True)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _jobs: BatchJobs | None = PrivateAttr(default=None)
    _windows: dict[asyncio.AbstractEventLoop, _Window] = PrivateAttr(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "graphthrift-batch"

    @property
    def jobs(self) -> BatchJobs:
        """The store-backed jobs of the wrapped model's provider."""
        if self._jobs is None:
            kwargs: dict[str, Any] = {}
            if self.sleep is not None:
                kwargs["sleep"] = self.sleep
            self._jobs = BatchJobs(
                self.store,
                _provider_for(self.model),
                ledger=self.ledger,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                backoff=self.backoff,
                max_attempts=self.max_attempts,
                **kwargs,
            )
        return self._jobs

    # -- the synchronous path: the wrapped model, untouched --------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self.model._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await self.model._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        return self.model._stream(messages, stop=stop, run_manager=run_manager, **kwargs)

    def _offline(self, config: RunnableConfig | None) -> bool:
        return self.always or is_offline(cast(Mapping[str, Any] | None, config))

    # -- offline: the Batch API ------------------------------------------------------------

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        if not self._offline(config):
            return self.model.invoke(input, config, stop=stop, **kwargs)
        outcome = self._run([input], [config], stop, kwargs)[0]
        return self._message(outcome)

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        if not self._offline(config):
            return await self.model.ainvoke(input, config, stop=stop, **kwargs)
        request = self._request(input, config, stop, kwargs)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AIMessage] = loop.create_future()
        window = self._windows.setdefault(loop, _Window())
        window.items.append((request, future))
        if len(window.items) >= self.max_batch_size:
            self._start_flush(loop, window, delay=0.0)
        elif window.task is None:
            self._start_flush(loop, window, delay=self.window_seconds)
        return await future

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        configs = _configs(config, len(inputs))
        offline = [n for n, c in enumerate(configs) if self._offline(c)]
        if not offline:
            return self.model.batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        out: list[Any] = [None] * len(inputs)
        online = [n for n in range(len(inputs)) if n not in set(offline)]
        if online:
            answers = self.model.batch(
                [inputs[n] for n in online],
                [configs[n] or {} for n in online],
                return_exceptions=return_exceptions,
                **kwargs,
            )
            for n, answer in zip(online, answers, strict=True):
                out[n] = answer
        stop = kwargs.pop("stop", None)
        outcomes = self._run(
            [inputs[n] for n in offline], [configs[n] for n in offline], stop, kwargs
        )
        for n, outcome in zip(offline, outcomes, strict=True):
            try:
                out[n] = self._message(outcome)
            except BatchItemFailed as exc:
                if not return_exceptions:
                    raise
                out[n] = exc
        return cast(list[AIMessage], out)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        configs = _configs(config, len(inputs))
        if not any(self._offline(c) for c in configs):
            return await self.model.abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        return await asyncio.to_thread(
            lambda: self.batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        )

    def submit(
        self,
        inputs: Sequence[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> str:
        """Submit a long job and return its id at once; collect it later with ``result``."""
        configs = _configs(config, len(inputs))
        requests = [self._request(i, c, stop, kwargs) for i, c in zip(inputs, configs, strict=True)]
        job_id = self.jobs.create(requests, model=_model_name(self.model))
        self.jobs.submit(job_id)
        return job_id

    def result(
        self, job_id: str, *, wait: bool = True, timeout: float | None = None
    ) -> list[AIMessage | BatchItemFailed | None]:
        """A job's answers in input order: a message, the request's failure, or None while it
        is still running (``wait=False``). Works from any process that shares the store."""
        if wait:
            outcomes = self.jobs.run(
                job_id, timeout=timeout if timeout is not None else self.timeout
            )
        else:
            self.jobs.step(job_id)
            done = self.jobs.status(job_id)["status"] == "completed"
            if done:
                self.jobs.book(job_id)
            outcomes = self.jobs.outcomes(job_id)
            if not done:
                return [self._message(o) if o.ok else None for o in outcomes]
        out: list[AIMessage | BatchItemFailed | None] = []
        for outcome in outcomes:
            try:
                out.append(self._message(outcome))
            except BatchItemFailed as exc:
                out.append(exc)
        return out

    # -- plumbing ---------------------------------------------------------------------------

    def _request(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None,
        stop: list[str] | None,
        kwargs: Mapping[str, Any],
    ) -> BatchRequest:
        payload = dict(
            self.model._get_request_payload(input, stop=stop, **kwargs)  # type: ignore[attr-defined]
        )
        if "messages" not in payload:
            raise ValueError(
                "BatchChatModel sends Chat Completions or Messages requests; this model built"
                f" a request with keys {sorted(payload)} (set use_responses_api=False)"
            )
        for key in _STREAM_KEYS:
            payload.pop(key, None)
        tags = {
            k: v
            for k, v in run_tags(cast(Mapping[str, Any] | None, config)).items()
            if k != "route"
        }
        return BatchRequest(payload, tags)

    def _run(
        self,
        inputs: Sequence[LanguageModelInput],
        configs: Sequence[RunnableConfig | None],
        stop: list[str] | None,
        kwargs: Mapping[str, Any],
    ) -> list[BatchOutcome]:
        requests = [self._request(i, c, stop, kwargs) for i, c in zip(inputs, configs, strict=True)]
        return self._run_requests(requests)

    def _run_requests(self, requests: Sequence[BatchRequest]) -> list[BatchOutcome]:
        job_id = self.jobs.create(requests, model=_model_name(self.model))
        return self.jobs.run(job_id, timeout=self.timeout)

    def _message(self, outcome: BatchOutcome) -> AIMessage:
        body = outcome.raise_for_error()
        if isinstance(self.jobs.provider, AnthropicBatches):
            from anthropic.types import Message

            result = self.model._format_output(Message.model_validate(body))  # type: ignore[attr-defined]
        else:
            result = self.model._create_chat_result(body)  # type: ignore[attr-defined]
        message = result.generations[0].message
        message.response_metadata = {
            **message.response_metadata,
            "graphthrift_batch_job": outcome.job_id,
            "graphthrift_batch_request": outcome.custom_id,
        }
        return cast(AIMessage, message)

    def _start_flush(
        self, loop: asyncio.AbstractEventLoop, window: _Window, *, delay: float
    ) -> None:
        """Flush now (a full window), or once ``delay`` has passed since the first call."""
        if delay <= 0:
            items, window.items = window.items, []
            loop.create_task(self._flush(items))
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            window.task = None
            items, window.items = window.items, []
            await self._flush(items)

        window.task = loop.create_task(later())

    async def _flush(self, items: list[tuple[BatchRequest, asyncio.Future[AIMessage]]]) -> None:
        if not items:
            return
        try:
            outcomes = await asyncio.to_thread(self._run_requests, [r for r, _ in items])
        except BaseException as exc:
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(items, outcomes, strict=True):
            if future.done():
                continue
            try:
                future.set_result(self._message(outcome))
            except Exception as exc:
                future.set_exception(exc)


def _configs(
    config: RunnableConfig | Sequence[RunnableConfig] | None, n: int
) -> list[RunnableConfig | None]:
    if isinstance(config, Sequence) and not isinstance(config, str | Mapping):
        configs = list(config)
        if len(configs) != n:
            raise ValueError(f"got {len(configs)} configs for {n} inputs")
        return list(configs)
    return [cast(RunnableConfig | None, config)] * n


def _provider_for(model: BaseChatModel) -> BatchProvider:
    """The Batch API of the wrapped model's provider, through the client it already holds."""
    name = type(model).__name__
    if "Anthropic" in name:
        return AnthropicBatches(model._client)  # type: ignore[attr-defined]
    client = getattr(model, "root_client", None)
    if client is not None and hasattr(client, "batches"):
        return OpenAIBatches(client)
    raise TypeError(
        f"BatchChatModel wraps ChatOpenAI or ChatAnthropic; got {name}, whose provider"
        " client has no Batch API here"
    )


def _model_name(model: BaseChatModel) -> str | None:
    for attr in ("model_name", "model"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return None
