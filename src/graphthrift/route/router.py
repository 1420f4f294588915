"""A cheap-first cascade router: each request goes to the cheapest adequate model.

``Router`` scores a request's difficulty from fast text features (length, question type,
code and maths markers, multi-hop cues, tool need) or, optionally, from a classifier
trained on labelled examples with the embedder. Easy requests go to the cheap model; the
answer is then checked, and the request is escalated to the strong model when

- the cheap answer's confidence is low (hedging such as "I'm not sure", an empty answer, or
  low token log-probabilities when the provider returns them),
- it fails a validator (``JsonSchemaValidator``, ``ToolArgsValidator`` or any function), or
- the cheap model raised.

With ``sticky=True`` a thread stays on the tier it is on, so the provider's prompt cache for
that thread stays warm; an escalation moves the thread to the strong tier for good.

Every routed request can be recorded in the ledger as a ``kind="route"`` row whose ``route``
is ``"cheap"`` (served by the cheap model) or ``"escalated"`` (served by the strong model;
``extra["reason"]`` says why: ``difficulty``, ``sticky``, ``confidence``, ``validator`` or
``error``), so ``ledger.report(by=["route"], kind="route")`` gives the escalation rate.

The core is framework-free; ``graphthrift.langgraph.choose_model`` and
``graphthrift.middleware.ModelRoutingMiddleware`` adapt it. Routing without the classifier costs
microseconds (patterns are compiled once, at import).

Example:
    >>> router = Router(cheap="gpt-4o-mini", strong="gpt-4o")
    >>> router.route("What is my card's daily limit?").model
    'gpt-4o-mini'
    >>> result = router.run("Prove that sqrt(2) is irrational.", call=my_llm_call)
"""

from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from graphthrift.errors import ConfigError
from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.records import LedgerRecord, clean_tag
from graphthrift.route.classifier import DifficultyClassifier
from graphthrift.route.features import difficulty_features, heuristic_difficulty
from graphthrift.route.validators import (
    Answer,
    JsonSchemaValidator,
    ToolArgsValidator,
    Validator,
    answer_confidence,
    as_validator,
)
from graphthrift.text.messages import content_text

__all__ = [
    "Answer",
    "DifficultyClassifier",
    "JsonSchemaValidator",
    "RouteDecision",
    "RouteResult",
    "Router",
    "ToolArgsValidator",
    "Validator",
    "answer_confidence",
    "answer_usage",
    "collect_calls",
    "difficulty_features",
    "request_text",
]

Tier = Literal["cheap", "strong"]
Reason = Literal["difficulty", "sticky", "confidence", "validator", "error"]

_CALLS: contextvars.ContextVar[list[tuple[str, Any]] | None] = contextvars.ContextVar(
    "graphthrift_route_calls", default=None
)


def answer_usage(answer: Any) -> Any:
    """The usage a provider reported with an answer (AIMessage, ModelResponse, dict), or None."""
    result = getattr(answer, "result", None)  # langchain.agents ModelResponse
    if isinstance(result, list):
        for item in reversed(result):
            usage = getattr(item, "usage_metadata", None)
            if usage:
                return usage
        return None
    if isinstance(answer, Mapping):
        return answer.get("usage_metadata") or answer.get("usage")
    raw = getattr(answer, "raw", None)  # LlamaIndex ChatResponse
    usage = getattr(answer, "usage_metadata", None)
    if usage is None and isinstance(raw, Mapping):
        usage = raw.get("usage")
    return usage


@contextmanager
def collect_calls() -> Iterator[list[tuple[str, Any]]]:
    """Collect ``(model, usage)`` of every model call a ``Router`` makes inside the block.

    A budget that wraps a whole cascade settles each call at its own model with this: the
    cheap call of an escalation is paid for even though its answer is not served.
    """
    calls: list[tuple[str, Any]] = []
    token = _CALLS.set(calls)
    try:
        yield calls
    finally:
        _CALLS.reset(token)


def _report(model: str, answer: Any) -> Any:
    sink = _CALLS.get()
    if sink is not None:
        sink.append((model, answer_usage(answer)))
    return answer


# -- router ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one request goes first, and why."""

    model: str
    tier: Tier
    difficulty: float
    confidence: float
    reason: Reason

    @property
    def route(self) -> str:
        """The ledger's ``route`` tag if this decision is final."""
        return "cheap" if self.tier == "cheap" else "escalated"


@dataclass(slots=True)
class RouteResult:
    """The outcome of a cascade: the answer served, the model that served it, and why."""

    answer: Any
    model: str
    route: Literal["cheap", "escalated"]
    reason: Reason | None
    decision: RouteDecision
    attempts: int
    detail: str | None = None
    cheap_answer: Any = None


def request_text(request: Any) -> str:
    """The text the router scores: a string, or the last user message of a message list."""
    if isinstance(request, str):
        return request
    if isinstance(request, Iterable) and not isinstance(request, Mapping):
        from graphthrift.text.messages import to_messages

        msgs = to_messages(list(request))
        for msg in reversed(msgs):
            if msg.role == "user":
                return msg.text
        return msgs[-1].text if msgs else ""
    return content_text(getattr(request, "content", request))


class Router:
    """Cheap-first cascade between two models, with validated escalation.

    Args:
        cheap: the cheap model's name (as priced and recorded in the ledger).
        strong: the strong model's name.
        threshold: difficulty at or above which a request goes straight to ``strong``.
        classifier: a trained ``DifficultyClassifier``; otherwise the fast features decide.
        validators: checks the cheap answer must pass (``JsonSchemaValidator``,
            ``ToolArgsValidator`` or functions returning False or a failure reason).
        min_confidence: escalate when ``confidence_fn(answer)`` is below this (0 disables).
        confidence_fn: the answer-confidence function (default ``answer_confidence``).
        escalate_on_error: retry on ``strong`` when the cheap model raises.
        sticky: keep each thread on its tier (prompt caches stay warm).
        max_threads: sticky threads remembered (least recently used are forgotten).
        ledger: where each routed request is recorded (``kind="route"``).
        tags: default ledger tags (tenant_id, feature, ...).
    """

    def __init__(
        self,
        cheap: str,
        strong: str,
        *,
        threshold: float = 0.5,
        classifier: DifficultyClassifier | None = None,
        validators: Sequence[Callable[[Answer], Any]] = (),
        min_confidence: float = 0.5,
        confidence_fn: Callable[[Answer], float] = answer_confidence,
        escalate_on_error: bool = True,
        sticky: bool = False,
        max_threads: int = 100_000,
        ledger: Ledger | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        for label, value in (("cheap", cheap), ("strong", strong)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"Router {label}", value, "must be a model name")
        if cheap == strong:
            raise ConfigError("Router strong", strong, "the cheap and strong models must differ")
        for label, number in (("threshold", threshold), ("min_confidence", min_confidence)):
            if isinstance(number, bool) or not 0.0 <= float(number) <= 1.0:
                raise ConfigError(f"Router {label}", number, "must be in [0, 1]")
        if max_threads < 1:
            raise ConfigError("Router max_threads", max_threads, "must be >= 1")
        self.cheap, self.strong = cheap, strong
        self.threshold = float(threshold)
        self.classifier = classifier
        self.validators: tuple[Validator, ...] = tuple(as_validator(v) for v in validators)
        self.min_confidence = float(min_confidence)
        self.confidence_fn = confidence_fn
        self.escalate_on_error = escalate_on_error
        self.sticky = sticky
        self.max_threads = max_threads
        self.ledger = ledger
        self.tags = dict(tags or {})
        self._threads: OrderedDict[str, Tier] = OrderedDict()
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {"requests": 0, "cheap": 0, "escalated": 0, "cascaded": 0}

    # -- deciding -----------------------------------------------------------------------------

    def difficulty(self, text: str, *, has_tools: bool = False) -> float:
        """P(the request needs the strong model)."""
        if self.classifier is not None:
            return self.classifier.predict_one(text)
        return heuristic_difficulty(difficulty_features(text, has_tools=has_tools))

    def route(
        self, request: Any, *, thread_id: str | None = None, has_tools: bool = False
    ) -> RouteDecision:
        """Pick the first model for ``request`` (a string or a message list)."""
        text = request_text(request)
        diff = self.difficulty(text, has_tools=has_tools)
        margin = max(self.threshold, 1.0 - self.threshold) or 1.0
        confidence = min(abs(diff - self.threshold) / margin, 1.0)
        if self.sticky and thread_id is not None:
            with self._lock:
                tier = self._threads.get(thread_id)
                if tier is not None:
                    self._threads.move_to_end(thread_id)
            if tier is not None:
                return RouteDecision(self._model(tier), tier, diff, confidence, "sticky")
        tier = "strong" if diff >= self.threshold else "cheap"
        self._stick(thread_id, tier)
        return RouteDecision(self._model(tier), tier, diff, confidence, "difficulty")

    def _model(self, tier: Tier) -> str:
        return self.cheap if tier == "cheap" else self.strong

    def _stick(self, thread_id: str | None, tier: Tier) -> None:
        if not self.sticky or thread_id is None:
            return
        with self._lock:
            self._threads[thread_id] = tier
            self._threads.move_to_end(thread_id)
            while len(self._threads) > self.max_threads:
                self._threads.popitem(last=False)

    def check(self, answer: Any, extra: Sequence[Validator] = ()) -> tuple[Reason, str] | None:
        """Why the cheap ``answer`` must be escalated, or None when it is good enough.

        ``extra`` validators (e.g. built per request from its tools) run after the router's.
        """
        ans = Answer.of(answer)
        if self.min_confidence > 0:
            score = self.confidence_fn(ans)
            if score < self.min_confidence:
                return "confidence", f"confidence {score:.2f} < {self.min_confidence:.2f}"
        for validator in (*self.validators, *extra):
            failure = validator(ans)
            if failure is not None:
                return "validator", failure
        return None

    # -- cascading ----------------------------------------------------------------------------

    def run(
        self,
        request: Any,
        call: Callable[[str], Any],
        *,
        thread_id: str | None = None,
        has_tools: bool = False,
        tags: Mapping[str, Any] | None = None,
        validators: Sequence[Validator] = (),
    ) -> RouteResult:
        """Answer ``request`` through the cascade; ``call(model_name)`` runs one model call.

        ``validators`` apply to this request only, after the router's own.
        """
        decision = self.route(request, thread_id=thread_id, has_tools=has_tools)

        def ask(name: str) -> Any:
            return _report(name, call(name))

        if decision.tier == "strong":
            return self._finish(
                ask(self.strong), decision, decision.reason, None, 1, None, thread_id, tags
            )
        try:
            cheap_answer = ask(self.cheap)
        except Exception as exc:
            if not self.escalate_on_error:
                raise
            return self._finish(
                ask(self.strong), decision, "error", repr(exc), 2, None, thread_id, tags
            )
        verdict = self.check(cheap_answer, validators)
        if verdict is None:
            return self._finish(cheap_answer, decision, None, None, 1, None, thread_id, tags)
        return self._finish(
            ask(self.strong), decision, verdict[0], verdict[1], 2, cheap_answer, thread_id, tags
        )

    async def arun(
        self,
        request: Any,
        call: Callable[[str], Awaitable[Any]],
        *,
        thread_id: str | None = None,
        has_tools: bool = False,
        tags: Mapping[str, Any] | None = None,
        validators: Sequence[Validator] = (),
    ) -> RouteResult:
        """Async twin of ``run``: ``call(model_name)`` is awaited."""
        decision = self.route(request, thread_id=thread_id, has_tools=has_tools)

        async def ask(name: str) -> Any:
            return _report(name, await call(name))

        if decision.tier == "strong":
            return self._finish(
                await ask(self.strong), decision, decision.reason, None, 1, None, thread_id, tags
            )
        try:
            cheap_answer = await ask(self.cheap)
        except Exception as exc:
            if not self.escalate_on_error:
                raise
            return self._finish(
                await ask(self.strong), decision, "error", repr(exc), 2, None, thread_id, tags
            )
        verdict = self.check(cheap_answer, validators)
        if verdict is None:
            return self._finish(cheap_answer, decision, None, None, 1, None, thread_id, tags)
        return self._finish(
            await ask(self.strong),
            decision,
            verdict[0],
            verdict[1],
            2,
            cheap_answer,
            thread_id,
            tags,
        )

    def _finish(
        self,
        answer: Any,
        decision: RouteDecision,
        reason: Reason | None,
        detail: str | None,
        attempts: int,
        cheap_answer: Any,
        thread_id: str | None,
        tags: Mapping[str, Any] | None,
    ) -> RouteResult:
        served_cheap = decision.tier == "cheap" and reason is None
        route: Literal["cheap", "escalated"] = "cheap" if served_cheap else "escalated"
        if not served_cheap:
            self._stick(thread_id, "strong")
        result = RouteResult(
            answer,
            self.cheap if served_cheap else self.strong,
            route,
            reason,
            decision,
            attempts,
            detail,
            cheap_answer,
        )
        self.record(result, thread_id=thread_id, tags=tags)
        return result

    def record(
        self,
        result: RouteResult,
        *,
        thread_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """Count the outcome and, with a ledger, write its ``kind="route"`` row."""
        with self._lock:
            self.stats["requests"] += 1
            self.stats[result.route] += 1
            if result.attempts > 1:
                self.stats["cascaded"] += 1
        if self.ledger is None:
            return
        merged = {**self.tags, **(tags or {})}
        if thread_id is not None:
            merged["thread_id"] = thread_id
        self.ledger.record(
            LedgerRecord(
                kind="route",
                route=result.route,
                model=result.model,
                tenant_id=clean_tag("tenant_id", merged.get("tenant_id")),
                feature=clean_tag("feature", merged.get("feature")),
                thread_id=clean_tag("thread_id", merged.get("thread_id")),
                run_id=clean_tag("run_id", merged.get("run_id")),
                node=clean_tag("node", merged.get("node")),
                layer="route",
                extra={
                    "reason": result.reason,
                    "difficulty": round(result.decision.difficulty, 4),
                    "attempts": result.attempts,
                    "detail": (result.detail or "")[:200] or None,
                },
            )
        )

    @property
    def escalation_rate(self) -> float:
        """Share of routed requests whose cheap answer was rejected (cascaded to strong)."""
        with self._lock:
            return (
                self.stats["cascaded"] / self.stats["requests"] if self.stats["requests"] else 0.0
            )

    def __repr__(self) -> str:
        kind = "classifier" if self.classifier is not None else "features"
        return f"Router(cheap={self.cheap!r}, strong={self.strong!r}, {kind}, sticky={self.sticky})"
