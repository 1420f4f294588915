"""``CostEventHandler``: LlamaIndex instrumentation that writes one ledger record per LLM call.

Long because: LlamaIndex's span and event protocol (start, stream chunks, end, errors,
nested calls) is one state machine that must book each call exactly once.

LlamaIndex dispatches ``LLMChatStartEvent`` or ``LLMCompletionStartEvent`` when an LLM call
begins, an ``*InProgressEvent`` for every streamed chunk, and an ``*EndEvent`` once the call,
or its stream, is done. All of them carry the ``span_id`` of the LLM method's span, which is
new for every call, so the handler pairs them by that id and passes them to ``CallRecorder``.
A call that raises drops its span (the span handler here sees the exception); a stream that
fails midway emits an ``ExceptionEvent`` instead.

LlamaIndex has two habits that need care:

- Delegation. ``CustomLLM.chat`` calls ``self.complete``, ``achat`` calls ``chat``,
  ``astream_chat`` iterates ``stream_chat`` and ``StructuredLLM`` calls its inner LLM. That
  is one provider call with two or three start events. Only the innermost call is recorded,
  and it inherits the outer call's tags, run and parent. An outer call is recognised by its
  LlamaIndex callback wrapper still running further up the stack. The span tree cannot
  show this for a lazily started stream, because the outer span has already closed.
- Tags. LlamaIndex has no per-run metadata the way LangChain does, so tags come from the
  handler's defaults, then LlamaIndex's own ``instrument_tags``, then graphthrift's ``tags()``
  context. The innermost source wins.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graphthrift import diagnostics
from graphthrift.errors import MissingExtra
from graphthrift.ledger.calls import CALL_TAGS, CallRecorder
from graphthrift.ledger.usage import Usage, read_usage

try:
    import llama_index.core.llms.callbacks as _llm_callbacks
    from llama_index.core.base.llms.types import ChatResponse, CompletionResponse
    from llama_index.core.instrumentation import (  # type: ignore[attr-defined]
        Dispatcher,
        get_dispatcher,
    )
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events import BaseEvent
    from llama_index.core.instrumentation.events.exception import ExceptionEvent
    from llama_index.core.instrumentation.events.llm import (
        LLMChatEndEvent,
        LLMChatInProgressEvent,
        LLMChatStartEvent,
        LLMCompletionEndEvent,
        LLMCompletionInProgressEvent,
        LLMCompletionStartEvent,
    )
    from llama_index.core.instrumentation.span import SimpleSpan
    from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
    from pydantic import PrivateAttr
except ImportError as exc:
    raise MissingExtra("llamaindex", "llama-index-core") from exc

if TYPE_CHECKING:
    from graphthrift.ledger.ledger import Ledger

__all__ = [
    "CACHE_TAG_KEYS",
    "TAG_KEYS",
    "CostEventHandler",
    "current_tags",
    "instrument",
    "tags",
    "uninstrument",
]

TAG_KEYS: tuple[str, ...] = (*CALL_TAGS, "node", "thread_id")
#: Tags only the cache and other components read (a call record has no user column).
CACHE_TAG_KEYS: tuple[str, ...] = (
    "user_id",
    "scope",
    "namespace",
    "model_version",
    "corpus_version",
)
_MODEL_KEYS = ("model", "model_name", "model_id", "deployment_name")
_UNNAMED_MODELS = frozenset({"", "unknown"})  # LLMMetadata.model_name defaults to "unknown"
_MAX_SPAN_DEPTH = 1_000
_CALLBACK_GLOBALS = vars(_llm_callbacks)
_STOPPED = (GeneratorExit, asyncio.CancelledError)  # the consumer stopped reading a stream

_TAGS: ContextVar[dict[str, Any] | None] = ContextVar("graphthrift_llamaindex_tags", default=None)

_Response = ChatResponse | CompletionResponse


@contextmanager
def tags(**values: Any) -> Iterator[None]:
    """Tag the LlamaIndex LLM calls made inside the block (threads and tasks keep their own).

    Blocks nest, and an inner block overrides an outer one key by key. Values set here win
    over LlamaIndex's ``instrument_tags`` and over the handler's defaults. The tags follow
    contextvars: asyncio tasks created inside the block inherit them, but a new thread starts
    without them unless it runs in a copied context.

    Args:
        **values: tenant_id, feature, route, prompt_version, node or thread_id (LLM call
            records and every graphthrift LlamaIndex component), and user_id, scope,
            namespace, model_version or corpus_version (the cache's scope). A None value
            leaves the tag as it is.

    Raises:
        TypeError: for an unknown tag name.

    Example:
        ```python
        with tags(tenant_id="acme", feature="support"):
            llm.chat(messages)
        ```
    """
    known = (*TAG_KEYS, *CACHE_TAG_KEYS)
    unknown = set(values) - set(known)
    if unknown:
        raise TypeError(f"tags() got unknown tags {sorted(unknown)}; known tags are {known}")
    merged = dict(_TAGS.get() or {})
    merged.update({k: v for k, v in values.items() if v is not None})
    token = _TAGS.set(merged)
    try:
        yield
    finally:
        _TAGS.reset(token)


def current_tags() -> dict[str, Any]:
    """The tags set by the enclosing ``tags()`` blocks (empty outside any)."""
    return dict(_TAGS.get() or {})


@dataclass(slots=True)
class _Call:
    """An LLM call that has started and not yet ended."""

    call_id: str
    tags: dict[str, Any]
    parent_id: str | None
    model: str | None
    wrapper: bool = False  # it delegated to a nested call, which is recorded instead
    last: _Response | None = None  # the last streamed chunk, for a stream stopped midway


class _SpanTracker(BaseSpanHandler[SimpleSpan]):
    """Keeps track of which spans are open and their parents, and reports dropped spans.

    Dropped spans are the only place where a non-streaming call's exception shows up.
    """

    _on_drop: Any = PrivateAttr(default=None)

    def __init__(self, on_drop: Callable[[str, BaseException], None]) -> None:
        super().__init__(open_spans={}, completed_spans=[], dropped_spans=[], current_span_ids={})
        self._on_drop = on_drop

    @classmethod
    def class_name(cls) -> str:
        return "GraphthriftSpanTracker"

    def new_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SimpleSpan | None:
        return SimpleSpan(id_=id_, parent_id=parent_span_id)

    def prepare_to_exit_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> SimpleSpan | None:
        return self.open_spans.get(id_)

    def prepare_to_drop_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> SimpleSpan | None:
        if err is not None:
            self._on_drop(id_, err)
        return self.open_spans.get(id_)

    def lineage(self, span_id: str | None) -> tuple[str | None, str | None]:
        """The parent and the root of an open span (None and ``span_id`` when unknown)."""
        span = self.open_spans.get(span_id) if span_id else None
        parent = span.parent_id if span is not None else None
        root, current = span_id, parent
        for _ in range(_MAX_SPAN_DEPTH):
            if current is None:
                break
            root = current
            ancestor = self.open_spans.get(current)
            current = ancestor.parent_id if ancestor is not None else None
        return parent, root


class CostEventHandler(BaseEventHandler):
    """Record every LlamaIndex LLM call (chat or completion, sync, async or streamed).

    Register it with ``instrument()``, which also registers the span handler that reports
    failed calls. If you add it to a dispatcher yourself, also add ``handler.span_handler``.

    Args:
        ledger: the ``Ledger`` to write to.
        model: model name to use when the LLM does not name one (mock or custom LLMs).
        **default_tags: tenant_id, feature, route or prompt_version for calls that are not
            tagged through ``tags()`` or ``instrument_tags``.

    Raises:
        TypeError: for an unknown default tag.

    Example:
        ```python
        handler = instrument(ledger, feature="search")
        with tags(tenant_id="acme"):
            llm.chat(messages)
        uninstrument(handler)
        ```
    """

    _recorder: Any = PrivateAttr(default=None)
    _spans: Any = PrivateAttr(default=None)
    _calls: dict[str, list[_Call]] = PrivateAttr(default_factory=dict)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _dispatcher: Any = PrivateAttr(default=None)

    def __init__(self, ledger: Ledger, *, model: str | None = None, **default_tags: Any) -> None:
        unknown = set(default_tags) - set(CALL_TAGS)
        if unknown:
            raise TypeError(
                f"CostEventHandler got unknown tags {sorted(unknown)}; known tags are {CALL_TAGS}"
            )
        super().__init__()
        self._recorder = CallRecorder(ledger, defaults=default_tags, model=model)
        self._spans = _SpanTracker(self._dropped)

    @classmethod
    def class_name(cls) -> str:
        return "GraphthriftCostEventHandler"

    @property
    def ledger(self) -> Ledger:
        """The ledger the records go to."""
        ledger: Ledger = self._recorder.ledger
        return ledger

    @property
    def span_handler(self) -> BaseSpanHandler[SimpleSpan]:
        """The span handler that reports failed calls and span parents to this handler."""
        spans: BaseSpanHandler[SimpleSpan] = self._spans
        return spans

    def __enter__(self) -> CostEventHandler:
        return self

    def __exit__(self, *exc: object) -> None:
        uninstrument(self)

    # -- events -----------------------------------------------------------------------------

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        try:
            if isinstance(event, LLMChatStartEvent):
                self._start(event, list(event.messages), event.model_dict)
            elif isinstance(event, LLMCompletionStartEvent):
                self._start(event, event.prompt, event.model_dict)
            elif isinstance(event, LLMChatInProgressEvent | LLMCompletionInProgressEvent):
                self._progress(event.span_id, event.response)
            elif isinstance(event, LLMChatEndEvent | LLMCompletionEndEvent):
                self._end(event.span_id, event.response)
            elif isinstance(event, ExceptionEvent):
                self._failed(event.span_id, event.exception)
        except Exception as exc:  # the dispatcher would swallow it silently
            diagnostics.count(
                "llamaindex_handler_error",
                "graphthrift: LlamaIndex %s not recorded: %r",
                type(event).__name__,
                exc,
            )

    def _dropped(self, span_id: str, err: BaseException) -> None:
        try:
            self._failed(span_id, err)
        except Exception as exc:
            diagnostics.count(
                "llamaindex_handler_error",
                "graphthrift: failed LlamaIndex call not recorded: %r",
                exc,
            )

    def _start(self, event: BaseEvent, prompt: Any, model_dict: Mapping[str, Any]) -> None:
        key = event.span_id or ""
        enclosing = _running_call_spans()[1:]  # the first one is this call's own wrapper
        model = _model_name(model_dict)
        with self._lock:
            outer, delegated = self._claim_wrappers(enclosing)
            stack = self._calls.setdefault(key, [])
            call_id = (
                event.span_id
                if event.span_id and not stack
                else f"{key or 'llm'}#{uuid.uuid4().hex[:12]}"
            )
            if outer is not None:
                call = _Call(call_id, outer.tags, outer.parent_id, model or outer.model)
            else:
                parent, root = self._spans.lineage(event.span_id)
                call = _Call(
                    call_id, {**_call_tags(event), "run_id": root or call_id}, parent, model
                )
            stack.append(call)
        for wrapper_id in delegated:
            self._recorder.discard(wrapper_id)
        self._recorder.start(
            call.call_id, model=call.model, tags=call.tags, prompt=prompt, parent_id=call.parent_id
        )

    def _claim_wrappers(self, span_ids: list[str]) -> tuple[_Call | None, list[str]]:
        """Mark the calls running around this one as wrappers; return the outermost one."""
        outermost: _Call | None = None
        delegated: list[str] = []
        for span_id in span_ids:  # innermost first
            stack = self._calls.get(span_id)
            if not stack:
                continue
            outermost = stack[-1]
            if not outermost.wrapper:
                outermost.wrapper = True
                delegated.append(outermost.call_id)
        return outermost, delegated

    def _progress(self, span_id: str | None, response: _Response) -> None:
        with self._lock:
            stack = self._calls.get(span_id or "")
            call = stack[-1] if stack else None
        if call is None or call.wrapper:
            return
        call.last = response
        self._recorder.token(call.call_id)

    def _end(self, span_id: str | None, response: _Response | None) -> None:
        call = self._pop(span_id)
        if call is None or call.wrapper:
            return
        self._recorder.end_with(call.call_id, lambda: _read_response(response))

    def _failed(self, span_id: str | None, exc: BaseException) -> None:
        call = self._pop(span_id)
        if call is None or call.wrapper:
            return
        if isinstance(exc, _STOPPED) and call.last is not None:
            # The reader stopped early, so the call itself did not fail. What streamed so far
            # was generated and billed.
            last = call.last
            self._recorder.end_with(call.call_id, lambda: _read_response(last))
        else:
            self._recorder.error(call.call_id, exc)

    def _pop(self, span_id: str | None) -> _Call | None:
        key = span_id or ""
        with self._lock:
            stack = self._calls.get(key)
            if not stack:
                return None
            call = stack.pop()
            if not stack:
                del self._calls[key]
            return call

    # -- registration -----------------------------------------------------------------------

    def _attach(self, dispatcher: Dispatcher) -> None:
        if self._dispatcher is not None:
            raise RuntimeError(
                "this CostEventHandler is already registered; call uninstrument() first"
            )
        dispatcher.add_event_handler(self)
        dispatcher.add_span_handler(self._spans)
        self._dispatcher = dispatcher

    def _detach(self) -> None:
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        # Rebind instead of removing in place: another thread may be iterating the lists.
        # Compare by identity, because pydantic models compare equal field by field.
        dispatcher.event_handlers = [h for h in dispatcher.event_handlers if h is not self]
        dispatcher.span_handlers = [h for h in dispatcher.span_handlers if h is not self._spans]
        self._dispatcher = None


def instrument(
    ledger: Ledger, dispatcher: Dispatcher | None = None, **kwargs: Any
) -> CostEventHandler:
    """Record every LlamaIndex LLM call in ``ledger`` from now on.

    Args:
        ledger: the ``Ledger`` to write to.
        dispatcher: where to register. Defaults to LlamaIndex's root dispatcher, which every
            LLM's events and spans reach.
        **kwargs: ``model`` and default tags, as for ``CostEventHandler``.

    Returns:
        The registered handler. Pass it to ``uninstrument()``, or use it as a context
        manager, to stop recording.

    Example:
        ```python
        with instrument(ledger, tenant_id="acme"):
            llm.complete("Hello")
        ```
    """
    handler = CostEventHandler(ledger, **kwargs)
    handler._attach(dispatcher if dispatcher is not None else get_dispatcher())
    return handler


def uninstrument(handler: CostEventHandler) -> None:
    """Stop recording: remove ``handler`` and its span handler from their dispatcher."""
    handler._detach()


def _running_call_spans() -> list[str]:
    """Span ids of the LlamaIndex LLM calls running on this stack, innermost first.

    ``llm_chat_callback`` and ``llm_completion_callback`` keep the call's ``span_id`` in a
    local of their wrapper, and of the generator that wraps a stream. When a call starts, its
    own wrapper is the innermost one. Any wrapper further out belongs to a call that
    delegated to this one, even when the outer call is a stream whose span already closed
    (``CustomLLM.astream_chat``), so the span tree cannot show it.
    """
    found: list[str] = []
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is _CALLBACK_GLOBALS:
            local_vars = frame.f_locals
            if "span_id" in local_vars:
                found.append(local_vars["span_id"] or "")
        frame = frame.f_back  # type: ignore[assignment]
    return found


def _call_tags(event: BaseEvent) -> dict[str, Any]:
    """Tags from LlamaIndex's ``instrument_tags`` overridden by graphthrift's ``tags()``."""
    found = {k: event.tags[k] for k in TAG_KEYS if event.tags.get(k) is not None}
    found.update({k: v for k, v in (_TAGS.get() or {}).items() if k in TAG_KEYS})
    return found


def _field(obj: Any, *keys: str) -> Any:
    for key in keys:
        value = obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
        if value is not None:
            return value
    return None


def _model_name(source: Any) -> str | None:
    if source is None:
        return None
    for key in _MODEL_KEYS:
        value = _field(source, key)
        if isinstance(value, str) and value.strip().lower() not in _UNNAMED_MODELS:
            return value
    return None


def _read_response(response: _Response | None) -> tuple[Usage | None, str, str | None]:
    """Usage, output text and served model name from a chat or completion response.

    The usage is read from ``raw`` (an OpenAI-, Anthropic- or Gemini-shaped dict or object
    with ``usage``) or else from ``additional_kwargs``, where llama-index-llms-openai copies
    ``prompt_tokens`` and ``completion_tokens``.
    """
    if response is None:
        return None, "", None
    raw = response.raw
    usage = read_usage(_field(raw, "usage", "usage_metadata")) if raw is not None else None
    if usage is None and response.additional_kwargs:
        usage = read_usage(response.additional_kwargs)
    if isinstance(response, ChatResponse):
        text = response.message.content or ""
    else:
        text = response.text or ""
    return usage, text, _model_name(raw)
