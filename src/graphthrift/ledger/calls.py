"""Per-call bookkeeping shared by every framework adapter.

An adapter sees a call start, maybe stream, then end or fail. ``CallRecorder`` turns those
events into one ``LedgerRecord``: it measures latency, numbers retries, takes the provider's
usage when it is plausible and otherwise estimates it with tiktoken (saying so in
``usage_source``). Adapters only translate their framework's events into these calls.

Only timing and retry numbering happen on the user's call path. Reading usage, resolving
tags, estimating tokens and building the record are deferred to the ledger's writer thread.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from graphthrift import diagnostics
from graphthrift.errors import classify_error
from graphthrift.ledger.records import LedgerRecord, clean_tag
from graphthrift.ledger.usage import SplitSource, Usage, cache_write_ttls, settle_cache_write_split
from graphthrift.text.tokens import count_messages, count_text

CALL_TAGS: tuple[str, ...] = ("tenant_id", "feature", "route", "prompt_version")
RECORD_TAGS: tuple[str, ...] = (*CALL_TAGS, "node", "thread_id", "run_id")
_MAX_TRACKED_PARENTS = 10_000
# Calls that start and never end (an abandoned stream) must not grow memory without bound.
_MAX_PENDING = 100_000

#: What an adapter hands over at the end of a call: usage (or None), output text, model.
CallResult = tuple[Usage | None, str, str | None]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(ns: int) -> datetime:
    """``time.time_ns()`` as ``datetime.now(UTC)`` gives it (floored to the microsecond),
    built on the writer thread rather than the call path."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


@dataclass(slots=True)
class _Pending:
    t0: float
    #: wall-clock start, ``time.time_ns()``: the record's ``ts`` (``_utc``)
    ts_ns: int
    model: str | None
    tags: Mapping[str, Any]
    extra_tags: Mapping[str, Any] | None
    prompt: Any
    parent_id: Hashable | None
    attempt: int
    streamed: bool = False
    #: what else the adapter saw of the request (call parameters, tools): read for the
    #: cache breakpoints that settle a write split the provider did not give
    request: Any = None


class CallRecorder:
    """Turns call start/token/end/error events into ledger records.

    Args:
        ledger: where records go: ``Ledger.record`` (or ``record_deferred``) never blocks.
        defaults: tag values used when a call's tags have none (tenant_id, feature, ...).
        model: the model name to use when neither the call nor its response names one.
        aliases: record tag -> key in the adapter's tag mapping, e.g.
            ``{"node": "langgraph_node"}`` so the raw metadata dict can be passed as is.
    """

    def __init__(
        self,
        ledger: Any,
        *,
        defaults: Mapping[str, Any] | None = None,
        model: str | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.ledger = ledger
        self.defaults = {k: clean_tag(k, v) for k, v in (defaults or {}).items()}
        self.default_model = model
        self._keys = tuple((tag, (aliases or {}).get(tag, tag)) for tag in RECORD_TAGS)
        self._pending: dict[Hashable, _Pending] = {}
        self._failures: OrderedDict[Hashable, int] = OrderedDict()
        self._lock = threading.Lock()

    def start(
        self,
        call_id: Hashable,
        *,
        model: str | None,
        tags: Mapping[str, Any],
        prompt: Any = None,
        parent_id: Hashable | None = None,
        extra_tags: Mapping[str, Any] | None = None,
        request: Any = None,
    ) -> None:
        """A call began. ``tags`` may be the framework's raw metadata; it is read later.

        ``request`` is the rest of the request beside ``prompt`` (the call's parameters and
        tools), kept as is and read off the call path, only when the provider reports cache
        writes without their 5m/1h split (see ``settle_cache_write_split``).

        A call started under a parent whose previous call failed is numbered as a retry
        (``attempt`` 2, 3, ...): that is how ``Runnable.with_retry`` and retry loops look.
        """
        attempt = 1
        if parent_id is not None and self._failures:
            with self._lock:
                attempt = self._failures.get(parent_id, 0) + 1
        if len(self._pending) >= _MAX_PENDING:
            self._pending.pop(next(iter(self._pending)), None)
            diagnostics.count(
                "abandoned_call",
                "graphthrift: dropped the oldest of %d unfinished calls",
                _MAX_PENDING,
            )
        self._pending[call_id] = _Pending(
            time.perf_counter(),
            time.time_ns(),
            model,
            tags,
            extra_tags,
            prompt,
            parent_id,
            attempt,
            request=request,
        )

    def discard(self, call_id: Hashable) -> None:
        """Forget a started call without recording it (an adapter saw it was a duplicate)."""
        self._pending.pop(call_id, None)

    def token(self, call_id: Hashable) -> None:
        """A streamed token arrived."""
        pending = self._pending.get(call_id)
        if pending is not None:
            pending.streamed = True

    def end_with(self, call_id: Hashable, read: Callable[[], CallResult]) -> None:
        """The call succeeded; ``read()`` (run off the call path) gives usage, text and model."""
        pending = self._pending.pop(call_id, None)
        if pending is None:
            return
        latency = (time.perf_counter() - pending.t0) * 1000.0
        if pending.attempt > 1:
            with self._lock:
                self._failures.pop(pending.parent_id, None)
        self._emit(lambda: self._success(pending, call_id, latency, read))

    def end(
        self,
        call_id: Hashable,
        *,
        usage: Usage | None,
        output_text: str = "",
        model: str | None = None,
    ) -> None:
        """The call succeeded with this usage (None: estimate it)."""
        self.end_with(call_id, lambda: (usage, output_text, model))

    def error(self, call_id: Hashable, exc: BaseException) -> None:
        """The call failed; record the failure so retries and their cost are visible."""
        pending = self._pending.pop(call_id, None)
        if pending is None:
            return
        latency = (time.perf_counter() - pending.t0) * 1000.0
        if pending.parent_id is not None:
            with self._lock:
                self._failures[pending.parent_id] = pending.attempt
                self._failures.move_to_end(pending.parent_id)
                while len(self._failures) > _MAX_TRACKED_PARENTS:
                    self._failures.popitem(last=False)
        error_type = classify_error(exc)

        def build() -> LedgerRecord:
            record = self._record(
                pending,
                call_id,
                latency,
                pending.model,
                Usage(0, 0),
                "none",
                success=False,
                error_type=error_type,
            )
            record.cost_usd = (
                0.0  # a failed request's output is not billed and its input is unknown
            )
            return record

        self._emit(build)

    # -- run on the ledger's writer thread ---------------------------------------------------

    def _success(
        self, pending: _Pending, call_id: Hashable, latency: float, read: Callable[[], CallResult]
    ) -> LedgerRecord:
        usage, output_text, model = read()
        model = model or pending.model or self.default_model
        if model is None:
            diagnostics.count(
                "missing_model",
                "graphthrift: an LLM call named no model; pass model= to the graphthrift handler to price it",
            )
        if (
            usage is not None
            and usage.input_tokens == 0
            and usage.output_tokens == 0
            and (output_text or pending.prompt)
        ):
            diagnostics.count("zero_usage")  # e.g. streaming without usage reports zeros
            usage = None
        source = "provider"
        if usage is not None and usage.input_tokens == 0 and usage.output_tokens and pending.prompt:
            # A stream whose input counts never reached us (langchain-anthropic reads usage
            # only from message_delta, which the streaming guide's shape fills with output
            # alone): estimate the prompt instead of booking it as free.
            diagnostics.count("partial_usage")
            estimate = _estimate(pending.prompt, "", model)
            usage = replace(usage, input_tokens=estimate.input_tokens)
            source = "estimated"
        if usage is None:
            usage = _estimate(pending.prompt, output_text, model)
            source = "estimated"
        split: SplitSource | None = None
        if usage.cache_write_unsplit_tokens:  # only then are the request's breakpoints read
            usage, split = settle_cache_write_split(
                usage, cache_write_ttls(pending.prompt, pending.request)
            )
        if split == "assumed_1h":
            # The counts are the provider's; their price is an upper bound, so say so.
            diagnostics.count(
                "assumed_cache_ttl",
                "graphthrift: %d cache-write tokens came without their 5m/1h split and the"
                " request's breakpoints do not settle it; priced at the 1-hour rate",
                usage.cache_write_tokens,
            )
            source = "estimated"
        return self._record(
            pending,
            call_id,
            latency,
            model,
            usage,
            source,
            success=True,
            error_type=None,
            split=split,
        )

    def _record(
        self,
        pending: _Pending,
        call_id: Hashable,
        latency: float,
        model: str | None,
        usage: Usage,
        source: str,
        *,
        success: bool,
        error_type: str | None,
        split: SplitSource | None = None,
    ) -> LedgerRecord:
        tags: dict[str, Any] = {}
        for tag, key in self._keys:
            value = pending.tags.get(key)
            if value is None and pending.extra_tags is not None:
                value = pending.extra_tags.get(tag)
            cleaned = clean_tag(tag, value) if value is not None else None
            tags[tag] = cleaned if cleaned is not None else self.defaults.get(tag)
        return LedgerRecord(
            kind="llm",
            ts=_utc(pending.ts_ns),
            model=model,
            call_id=str(call_id),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            latency_ms=latency,
            success=success,
            error_type=error_type,
            usage_source=source,
            retry=pending.attempt > 1,
            attempt=pending.attempt,
            streamed=pending.streamed,
            extra=_write_extra(usage, split),
            **tags,
        )

    def _emit(self, build: Callable[[], LedgerRecord]) -> None:
        try:
            if hasattr(self.ledger, "record_deferred"):
                self.ledger.record_deferred(build)
            else:
                self.ledger.record(build())
        except Exception as exc:  # the user's call must not fail because of bookkeeping
            diagnostics.count(
                "ledger_record_failure", "graphthrift: could not queue a ledger record: %s", exc
            )


def _write_extra(usage: Usage, split: SplitSource | None) -> dict[str, Any] | None:
    """``extra`` of a record: the 1-hour part of its cache writes, and how it was settled."""
    extra: dict[str, Any] = {}
    if usage.cache_write_1h_tokens:
        extra["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
    if split is not None:
        extra["cache_write_split"] = split
    return extra or None


def _estimate(prompt: Any, output_text: str, model: str | None) -> Usage:
    input_tokens = 0
    if isinstance(prompt, str):
        input_tokens = count_text(prompt, model)
    elif prompt:
        try:
            input_tokens = count_messages(prompt, model).tokens
        except TypeError:
            input_tokens = count_text(str(prompt), model)
    return Usage(input_tokens, count_text(output_text, model))
