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

The core is framework-free; ``graphthrift.langgraph.route_model`` and
``graphthrift.middleware.RouterMiddleware`` adapt it. Routing without the classifier costs
microseconds (patterns are compiled once, at import).

Example:
    >>> router = Router(cheap="gpt-4o-mini", strong="gpt-4o")
    >>> router.route("What is my card's daily limit?").model
    'gpt-4o-mini'
    >>> result = router.run("Prove that sqrt(2) is irrational.", call=my_llm_call)
"""

from __future__ import annotations

import contextvars
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from graphthrift.errors import MissingExtra
from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.records import LedgerRecord, clean_tag
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
]

Tier = Literal["cheap", "strong"]
Reason = Literal["difficulty", "sticky", "confidence", "validator", "error"]

# -- features --------------------------------------------------------------------------------

_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+[:(]|\bimport \w+|\bfunction\s*\w*\(|=>|#include|"
    r"\bSELECT\b.+\bFROM\b|\bstack ?trace\b|\bTraceback\b|\bregex\b|\bcompile\b|"
    r"\b(?:python|javascript|typescript|java|rust|golang|c\+\+|sql|bash)\b|[{};]\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_MATH = re.compile(
    r"\d\s*[-+*/^=]\s*\d|\\frac|\\sum|\\int|\bintegral\b|\bderivative\b|\bequation\b|"
    r"\bprove\b|\btheorem\b|\bprobability\b|\bsolve\b|\bcompute\b|\bcalculate\b|\bsqrt\b|"
    r"\bmatrix\b|\bpercent(?:age)?\b|%",
    re.IGNORECASE,
)
_MULTI_HOP = re.compile(
    r"\band (?:then|also|what|which|who|when|where|how)\b|\bboth\b|\bcompare\b|\bdifference "
    r"between\b|\bbefore\b|\bafter\b|\bwhich of\b|\brelationship\b|\bin relation to\b|"
    r"\bstep[- ]by[- ]step\b|\bfirst\b.+\bthen\b|\bcombine\b|\bacross\b|\beach of\b",
    re.IGNORECASE,
)
_REASONING = re.compile(
    r"^\s*(?:why|explain|analy[sz]e|evaluate|discuss|justify|derive|design|plan|critique)\b|"
    r"\bwhy\b|\bexplain\b|\bimplications?\b|\btrade-?offs?\b|\bpros and cons\b|\breason\b",
    re.IGNORECASE,
)
_FACTOID = re.compile(
    r"^\s*(?:what is|what's|what are|when|where|who|how (?:do|can|long|much|many) i|can i|"
    r"do you|is there|is it|how do i|i (?:want|need|would like) to|my )\b",
    re.IGNORECASE,
)
_TOOL_NEED = re.compile(
    r"\b(?:search|look up|lookup|fetch|browse|latest|today|current(?:ly)?|weather|price of|"
    r"book|schedule|send|email|run|execute|query the)\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"[.!?](?:\s|$)")
_HEDGE = re.compile(
    r"\b(?:i(?:'m| am) not (?:sure|certain)|i don'?t know|i do not know|i cannot|i can'?t "
    r"(?:determine|answer|tell|help)|unable to|not enough information|insufficient "
    r"information|it(?:'s| is) unclear|unclear|no idea|as an ai|i'm unsure|uncertain)\b",
    re.IGNORECASE,
)

FEATURE_NAMES: tuple[str, ...] = (
    "length",
    "questions",
    "sentences",
    "code",
    "math",
    "multi_hop",
    "reasoning",
    "factoid",
    "tool_need",
)
_WEIGHTS: tuple[float, ...] = (0.4, 1.4, 0.1, 1.6, 1.3, 1.1, 0.9, -0.9, 0.6)
_BIAS = -1.6


def _ask(text: str) -> str:
    """The part of a request that asks: after the last line break, at most 400 characters.

    Pasted context (documents, passages) comes before the ask; its dates and words must not
    read as maths or multi-hop markers.
    """
    cut = text.rfind("\n")
    ask = text[cut + 1 :] if cut >= 0 and cut < len(text) - 1 else text
    return ask[-400:]


def difficulty_features(text: str, *, has_tools: bool = False) -> tuple[float, ...]:
    """The fast features of one request, in ``FEATURE_NAMES`` order (all in [0, 3]).

    Length and code markers look at the whole text; the question-type, maths, multi-hop and
    tool markers look at the ask (the last line).
    """
    words = text.count(" ") + 1 if text else 0
    ask = _ask(text)
    return (
        min(words / 40.0, 3.0),
        min(max(ask.count("?") - 1, 0), 3),
        min(len(_SENTENCE.findall(ask)) / 3.0, 3.0),
        1.0 if _CODE.search(text) else 0.0,
        1.0 if _MATH.search(ask) else 0.0,
        float(min(len(_MULTI_HOP.findall(ask)), 3)),
        1.0 if _REASONING.search(ask) else 0.0,
        1.0 if _FACTOID.search(ask) else 0.0,
        1.0 if has_tools or _TOOL_NEED.search(ask) else 0.0,
    )


def heuristic_difficulty(features: Sequence[float]) -> float:
    """P(the request needs the strong model) from the fast features, by fixed weights."""
    score = _BIAS + sum(w * f for w, f in zip(_WEIGHTS, features, strict=True))
    return 1.0 / (1.0 + math.exp(-score))


# -- answers and validators ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """A model's answer, reduced to what validators need."""

    text: str
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, obj: Any) -> Answer:
        """Read a str, an OpenAI-style dict, a LangChain AIMessage or a LlamaIndex response."""
        if isinstance(obj, Answer):
            return obj
        if isinstance(obj, str):
            return cls(obj, source=obj)
        if isinstance(obj, Mapping):
            calls = tuple(obj.get("tool_calls") or ())
            return cls(content_text(obj.get("content", "")), calls, {}, obj)
        result = getattr(obj, "result", None)  # langchain.agents ModelResponse
        if isinstance(result, list) and result:
            return cls.of(result[-1]) if not isinstance(result[-1], str) else cls(result[-1])
        message = getattr(obj, "message", None)  # LlamaIndex ChatResponse
        target = message if message is not None and not hasattr(obj, "content") else obj
        text = content_text(getattr(target, "content", "") or "")
        calls = tuple(getattr(target, "tool_calls", None) or ())
        meta = getattr(target, "response_metadata", None) or {}
        return cls(text, calls, meta, obj)


class Validator(Protocol):
    """Checks an answer; returns why it fails, or None when it passes."""

    def __call__(self, answer: Answer) -> str | None: ...


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - jsonschema ships with langchain
        raise MissingExtra(None, "jsonschema") from exc
    return jsonschema


class JsonSchemaValidator:
    """The answer's text must be JSON valid under ``schema`` (a JSON Schema dict)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        js = _jsonschema()
        cls = js.validators.validator_for(schema)
        cls.check_schema(schema)
        self._validator = cls(schema)

    def __call__(self, answer: Answer) -> str | None:
        text = answer.text.strip()
        if text.startswith("```"):
            text = text.strip("`").removeprefix("json").strip()
        try:
            data = json.loads(text)
        except ValueError as exc:
            return f"not JSON: {exc}"
        error = next(iter(self._validator.iter_errors(data)), None)
        return None if error is None else f"schema: {error.message}"


class ToolArgsValidator:
    """Every tool call must name a known tool and carry arguments valid for its schema.

    Args:
        tools: tool name -> JSON Schema of its arguments (LangChain: ``tool.args_schema``'s
            ``model_json_schema()``, or ``convert_to_openai_tool(t)["function"]["parameters"]``).
        require_call: fail answers that make no tool call at all.
    """

    def __init__(
        self, tools: Mapping[str, Mapping[str, Any]], *, require_call: bool = False
    ) -> None:
        js = _jsonschema()
        self._validators = {}
        for name, schema in tools.items():
            cls = js.validators.validator_for(schema)
            cls.check_schema(schema)
            self._validators[name] = cls(schema)
        self.require_call = require_call

    def __call__(self, answer: Answer) -> str | None:
        if self.require_call and not answer.tool_calls:
            return "no tool call"
        for call in answer.tool_calls:
            name = call.get("name") or (call.get("function") or {}).get("name")
            args: Any = call.get("args")
            if args is None:
                args = (call.get("function") or {}).get("arguments", {})
            if isinstance(args, str):
                try:
                    args = json.loads(args or "{}")
                except ValueError:
                    return f"tool {name!r}: arguments are not JSON"
            validator = self._validators.get(str(name))
            if validator is None:
                return f"unknown tool {name!r}"
            error = next(iter(validator.iter_errors(args)), None)
            if error is not None:
                return f"tool {name!r}: {error.message}"
        return None


def _as_validator(fn: Callable[[Answer], Any]) -> Validator:
    if isinstance(fn, JsonSchemaValidator | ToolArgsValidator):
        return fn

    def check(answer: Answer) -> str | None:
        verdict = fn(answer)
        if verdict is None or verdict is True:
            return None
        if verdict is False:
            return f"rejected by {getattr(fn, '__name__', 'validator')}"
        return str(verdict)

    return check


def answer_confidence(answer: Answer) -> float:
    """How sure the answer looks, in [0, 1]: 0 for empty or hedging text, else from
    mean token log-probability when the provider sent them, else 1."""
    if not answer.text.strip() and not answer.tool_calls:
        return 0.0
    if answer.text and _HEDGE.search(answer.text):
        return 0.2
    logprobs = answer.metadata.get("logprobs") if answer.metadata else None
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if isinstance(content, list) and content:
        values = [t.get("logprob") for t in content if isinstance(t, Mapping)]
        numbers = [v for v in values if isinstance(v, int | float)]
        if numbers:
            return float(math.exp(sum(numbers) / len(numbers)))
    return 1.0


# -- classifier ------------------------------------------------------------------------------


_ROUTING_EMBEDDERS: dict[int, Any] = {}
_ROUTING_LOCK = threading.Lock()


def _routing_embedder(max_length: int) -> Any:
    """The process-wide embedder for routing: MiniLM distilled to static token vectors.

    A MiniLM pass over a 40-token window costs p95 about 8 ms on an idle 2-core machine, more
    than the router's 5 ms allowance; the distilled `StaticEmbedder` costs well under a
    millisecond once its tokens are known, for the same routing quality on the route bench.
    """
    with _ROUTING_LOCK:
        embedder = _ROUTING_EMBEDDERS.get(max_length)
        if embedder is None:
            from graphthrift.embed.static import StaticEmbedder

            embedder = StaticEmbedder(max_length=max_length)
            _ROUTING_EMBEDDERS[max_length] = embedder
        return embedder


class DifficultyClassifier:
    """Logistic regression (numpy) on the embedder's vector plus the fast features.

    Chosen over nearest-centroid because it gives calibrated probabilities, which the
    router's threshold needs, and over scikit-learn because it adds no dependency; training
    on a few thousand examples takes well under a second.

    The per-request cost is one embedding of a short, fixed window: the last
    ``embed_chars`` characters of the request (``Router`` passes the last user message),
    at most ``embed_tokens`` tokens with the default embedder, so a long prompt costs no
    more than a short one. Embeddings of identical windows are kept in a small LRU
    (``cache_size``), and the standardisation is folded into the weights once.

    Args:
        embedder: any ``graphthrift.embed.embedders.Embedder`` (default: a ``StaticEmbedder``
            distilled from MiniLM, ``max_length=embed_tokens``, shared in the process).
        l2: weight decay.
        embed_chars: only the last ``embed_chars`` characters are embedded (the fast
            features still see the whole text).
        embed_tokens: the default embedder's token limit (ignored for a given embedder).
        cache_size: embeddings kept for repeated windows; 0 disables the cache.
    """

    def __init__(
        self,
        embedder: Any = None,
        *,
        l2: float = 1e-3,
        embed_chars: int = 160,
        embed_tokens: int = 40,
        cache_size: int = 1024,
    ) -> None:
        if embed_chars < 1 or embed_tokens < 1 or cache_size < 0:
            raise ValueError(
                "DifficultyClassifier needs embed_chars >= 1, embed_tokens >= 1 and "
                f"cache_size >= 0, got {embed_chars}, {embed_tokens}, {cache_size}"
            )
        self.embedder = embedder if embedder is not None else _routing_embedder(embed_tokens)
        self.l2 = l2
        self.embed_chars = embed_chars
        self.embed_tokens = embed_tokens
        self.cache_size = cache_size
        self.weights: npt.NDArray[np.float64] | None = None
        self.bias = 0.0
        self._mean: npt.NDArray[np.float64] | None = None
        self._scale: npt.NDArray[np.float64] | None = None
        # weights and bias with the standardisation folded in: p = sigmoid(x @ w + b)
        self._w: npt.NDArray[np.float64] | None = None
        self._b = 0.0
        self._dim = 0
        self._cache: OrderedDict[str, npt.NDArray[np.float64]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def _window(self, text: str) -> str:
        return text[-self.embed_chars :]

    def _embed(self, windows: Sequence[str]) -> npt.NDArray[np.float64]:
        return np.asarray(self.embedder.embed(list(windows)), dtype=np.float64)

    def _vector(self, text: str) -> npt.NDArray[np.float64]:
        """The embedding of ``text``'s window, from the LRU when the window was seen."""
        window = self._window(text)
        if self.cache_size:
            with self._cache_lock:
                hit = self._cache.get(window)
                if hit is not None:
                    self._cache.move_to_end(window)
                    return hit
        vector: npt.NDArray[np.float64] = self._embed([window])[0]
        if self.cache_size:
            vector.setflags(write=False)
            with self._cache_lock:
                self._cache[window] = vector
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return vector

    def cache_clear(self) -> None:
        """Forget the cached embeddings."""
        with self._cache_lock:
            self._cache.clear()

    def _matrix(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        vectors = self._embed([self._window(t) for t in texts])
        feats = np.array([difficulty_features(t) for t in texts], dtype=np.float64)
        return np.hstack([vectors, feats])

    def _compile(self) -> None:
        assert self.weights is not None and self._mean is not None and self._scale is not None
        self._w = self.weights / self._scale
        self._b = float(self.bias - (self._mean / self._scale) @ self.weights)
        self._dim = len(self.weights) - len(FEATURE_NAMES)

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[int | bool],
        *,
        epochs: int = 400,
        lr: float = 0.5,
    ) -> DifficultyClassifier:
        """Train on texts labelled 1 (needs the strong model) or 0 (the cheap one is enough)."""
        if len(texts) != len(labels) or not texts:
            raise ValueError(f"fit needs as many labels as texts, got {len(texts)}/{len(labels)}")
        y = np.array([1.0 if label else 0.0 for label in labels])
        if y.min() == y.max():
            raise ValueError("fit needs examples of both classes (0 = cheap, 1 = strong)")
        x = self._matrix(texts)
        self._mean = x.mean(axis=0)
        self._scale = x.std(axis=0) + 1e-6
        x = (x - self._mean) / self._scale
        w = np.zeros(x.shape[1])
        b = 0.0
        pos_weight = (1 - y.mean()) / y.mean()  # balance the classes
        sample_w = np.where(y == 1, pos_weight, 1.0)
        sample_w = sample_w / sample_w.mean()
        for _ in range(epochs):
            p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
            grad = (p - y) * sample_w
            w -= lr * (x.T @ grad / len(y) + self.l2 * w)
            b -= lr * float(grad.mean())
        self.weights, self.bias = w, b
        self._compile()
        return self

    def _trained(self) -> npt.NDArray[np.float64]:
        if self._w is None:
            raise RuntimeError("DifficultyClassifier is not trained; call fit() or load()")
        return self._w

    def predict_proba(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """P(needs the strong model) for each text."""
        w = self._trained()
        if len(texts) == 1:
            return np.array([self.predict_one(texts[0])])
        x = self._matrix(texts)
        out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-(x @ w + self._b)))
        return out

    def predict_one(self, text: str, *, has_tools: bool = False) -> float:
        """P(needs the strong model) for one text: the router's per-request path."""
        w = self._trained()
        score = float(self._vector(text) @ w[: self._dim]) + self._b
        feats = difficulty_features(text, has_tools=has_tools)
        score += sum(wi * fi for wi, fi in zip(w[self._dim :].tolist(), feats, strict=True))
        return 1.0 / (1.0 + math.exp(-score))

    def save(self, path: str | Path) -> None:
        """Write the weights (``.npz``), with the embedder's id for a later check."""
        if self.weights is None or self._mean is None or self._scale is None:
            raise RuntimeError("nothing to save: the classifier is not trained")
        np.savez(
            Path(path),
            weights=self.weights,
            bias=np.array([self.bias]),
            mean=self._mean,
            scale=self._scale,
            model_id=np.array([str(getattr(self.embedder, "model_id", ""))]),
            window=np.array([self.embed_chars, self.embed_tokens]),
        )

    @classmethod
    def load(cls, path: str | Path, embedder: Any = None) -> DifficultyClassifier:
        """Read weights written by ``save``; the embedder must be the one they were fit with."""
        data = np.load(Path(path))
        window = data["window"] if "window" in data.files else np.array([256, 256])
        clf = cls(embedder, embed_chars=int(window[0]), embed_tokens=int(window[1]))
        saved = str(data["model_id"][0])
        current = str(getattr(clf.embedder, "model_id", ""))
        if saved and current and saved != current:
            raise ValueError(f"classifier was trained with embedder {saved!r}, got {current!r}")
        clf.weights, clf.bias = data["weights"], float(data["bias"][0])
        clf._mean, clf._scale = data["mean"], data["scale"]
        clf._compile()
        return clf


# -- calls made inside a cascade -------------------------------------------------------------

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
                raise ValueError(f"Router {label} must be a model name, got {value!r}")
        if cheap == strong:
            raise ValueError(f"Router cheap and strong models must differ, both are {cheap!r}")
        for label, number in (("threshold", threshold), ("min_confidence", min_confidence)):
            if isinstance(number, bool) or not 0.0 <= float(number) <= 1.0:
                raise ValueError(f"Router {label} must be in [0, 1], got {number!r}")
        if max_threads < 1:
            raise ValueError(f"Router max_threads must be >= 1, got {max_threads}")
        self.cheap, self.strong = cheap, strong
        self.threshold = float(threshold)
        self.classifier = classifier
        self.validators: tuple[Validator, ...] = tuple(_as_validator(v) for v in validators)
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
