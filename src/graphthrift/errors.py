"""Error types. Each carries the values a user needs to act, not just a message.

Long because: every public error lives here, one short class each, so one module answers
"what can graphthrift raise".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar


class GraphthriftError(Exception):
    """Base class for every error graphthrift raises on purpose."""


class ConfigError(GraphthriftError, ValueError):
    """An argument or setting is invalid: names it, the value given and the rule it breaks.

    Every configuration check raises this (or a subclass), so one ``except ConfigError``
    catches bad settings anywhere, and the message always says what to change.
    """

    def __init__(self, name: str, value: object, rule: str, *, message: str | None = None) -> None:
        self.name = name
        self.value = value
        self.rule = rule
        super().__init__(message or f"{name}={value!r}: {rule}")


class StoreUnavailable(GraphthriftError):
    """The database could not be reached or set up.

    Carries the URL with its password hidden, so logs never leak credentials.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        # the hint that fits: the variable chose this server, or the caller's URL did
        if os.environ.get("GRAPHTHRIFT_DATABASE_URL"):
            hint = ", or unset GRAPHTHRIFT_DATABASE_URL to use the embedded server"
        elif "pgdata" in url:  # the embedded server itself
            hint = ""
        else:
            hint = ", or give no URL to use the embedded server"
        super().__init__(
            f"graphthrift store unavailable at {url}: {reason}. "
            f"Check that PostgreSQL with pgvector is running there{hint}."
        )


class UnknownModelPrice(GraphthriftError):
    """No price is known for a model, so no cost can be computed for it."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(
            f"no price is known for model {model!r}; add one with "
            "graphthrift.ledger.prices.set_price(model, input_per_mtok=..., output_per_mtok=...)"
        )


class MissingExtra(GraphthriftError, ImportError):
    """A dependency is not installed; the message names the pip command that installs it.

    ``extra`` is the ``graphthrift[extra]`` that brings ``package`` (an extra declared in
    pyproject.toml); ``None`` when the package is a core dependency that went missing.
    """

    def __init__(self, extra: str | None, package: str) -> None:
        self.extra = extra
        self.package = package
        fix = (
            f"pip install 'graphthrift[{extra}]'"
            if extra
            else f"pip install '{package}' (a dependency of graphthrift itself)"
        )
        super().__init__(f"{package} is not installed; run: {fix}", name=package)


def require_extra(module: str, extra: str, package: str) -> None:
    """Raise ``MissingExtra`` when ``module`` cannot be imported for want of a package.

    Adapter packages call it first, so ``import graphthrift.middleware`` without langchain
    names the extra to install instead of failing deep inside with ``No module named
    'langchain'``. An ImportError raised by something else inside ``module`` propagates.
    """
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        missing = getattr(exc, "name", None) or ""
        if missing == top or missing.startswith(top + ".") or module.startswith(missing + "."):
            raise MissingExtra(extra, package) from exc
        raise


class BudgetExceeded(GraphthriftError):
    """A budget refused a call: names the limit, what was spent and the scope."""

    def __init__(
        self, limit_name: str, limit: float, spent: float, scope: str, requested: float = 0.0
    ) -> None:
        self.limit_name = limit_name
        self.limit = limit
        self.spent = spent
        self.scope = scope
        self.requested = requested
        super().__init__(
            f"budget {limit_name} for {scope} exceeded: limit {limit:g}, spent {spent:g}"
            + (f", this call needs {requested:g}" if requested else "")
        )


_STATUS_KINDS = ((429, "rate_limit"), (408, "timeout"), (504, "timeout"))


def classify_error(exc: BaseException) -> str:
    """Map a provider or client exception to timeout, rate_limit, bad_request, upstream or other.

    Works from the exception's class names (OpenAI, Anthropic, httpx, Google clients all name
    them alike) and any HTTP status it carries, without importing any client library.
    """
    names = " ".join(cls.__name__.lower() for cls in type(exc).__mro__)
    status = (
        getattr(exc, "status_code", None)
        or getattr(exc, "status", None)
        or getattr(getattr(exc, "response", None), "status_code", None)
    )
    status = status if isinstance(status, int) else None
    for code, kind in _STATUS_KINDS:
        if status == code:
            return kind
    if "timeout" in names or "deadlineexceeded" in names:
        return "timeout"
    if "ratelimit" in names or "resourceexhausted" in names or "toomanyrequests" in names:
        return "rate_limit"
    if status is not None and 400 <= status < 500:
        return "bad_request"
    if any(
        k in names
        for k in (
            "badrequest",
            "invalidrequest",
            "unprocessable",
            "notfounderror",
            "contextwindow",
            "invalidargument",
        )
    ):
        return "bad_request"
    if status is not None and status >= 500:
        return "upstream"
    if any(
        k in names
        for k in (
            "internalserver",
            "serviceunavailable",
            "apiconnection",
            "overloaded",
            "connectionerror",
            "apierror",
            "servererror",
        )
    ):
        return "upstream"
    return "other"


class StateSchemaError(GraphthriftError, KeyError):
    """A node was given a graph state without a key it reads or writes.

    Names the node, the missing key and the state schema to extend, so that the node never
    fails silently on a plain ``MessagesState`` (LangGraph drops writes to undeclared keys).
    """

    def __init__(self, *, node: str, key: str, schema: str) -> None:
        self.node = node
        self.key = key
        self.schema = schema
        super().__init__(
            f"{node}: the graph state has no {key!r} key; build the graph on "
            f"graphthrift.langgraph.{schema} (or a state that extends it)"
        )

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class RequestIdConflict(GraphthriftError):
    """A request id was reused for a different request within its dedup window.

    Serving the stored answer would answer another question, so the retry is refused.
    """

    def __init__(self, request_id: str, stored: str, given: str) -> None:
        self.request_id = request_id
        self.stored = stored
        self.given = given
        super().__init__(
            f"request id {request_id!r} was already used for a different request "
            f"(fingerprint {stored[:12]} stored, {given[:12]} given); use a new request id"
        )


class ToolCallInProgress(GraphthriftError):
    """An idempotent tool call with this key is running elsewhere and did not finish in time.

    Running it here too could repeat its side effect, so the call is refused instead; retry
    later, or after ``lease_left_s`` seconds a crashed holder's claim is taken over.
    """

    def __init__(self, tool: str, key: str, waited_s: float, lease_left_s: float) -> None:
        self.tool = tool
        self.key = key
        self.waited_s = waited_s
        self.lease_left_s = lease_left_s
        super().__init__(
            f"tool {tool!r} is already running for idempotency key {key!r}: waited "
            f"{waited_s:.1f}s; its claim lapses in {lease_left_s:.1f}s if its holder died"
        )


class RetryBudgetExhausted(GraphthriftError):
    """A retry was refused: the scope already retried its allowed share in the window.

    A broken provider must not multiply the bill; the call fails fast with the error that
    would have been retried as its ``__cause__``.
    """

    def __init__(
        self,
        scope: str,
        retries: int,
        calls: int,
        allowed: int,
        max_share: float,
        window_s: float,
        error_kind: str,
    ) -> None:
        self.scope = scope
        self.retries = retries
        self.calls = calls
        self.allowed = allowed
        self.max_share = max_share
        self.window_s = window_s
        self.error_kind = error_kind
        super().__init__(
            f"retry budget of {scope} exhausted: {retries} retries for {calls} calls in the "
            f"last {window_s:g}s (allowed {allowed}, share {max_share:g}); "
            f"not retrying this {error_kind} error"
        )


class RateLimited(GraphthriftError):
    """A shared rate limit had no room for the call within the wait bound: it was shed.

    Names the limit and carries what was needed, what was available and when to retry.
    """

    def __init__(
        self, limit: str, needed: float, available: float, waited_s: float, retry_after_s: float
    ) -> None:
        self.limit = limit
        self.needed = needed
        self.available = available
        self.waited_s = waited_s
        self.retry_after_s = retry_after_s
        super().__init__(
            f"rate limit {limit} is full: this call needs {needed:g}, {available:g} available; "
            f"waited {waited_s:.1f}s, retry in {retry_after_s:.1f}s"
        )


class NoCandidateLeft(GraphthriftError):
    """Failover found no model to call: each candidate was skipped or failed.

    ``reasons`` maps each candidate to why it was not used (``"circuit open"``, ``"over
    budget"``, or the error kind it failed with).
    """

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = dict(reasons)
        listed = ", ".join(f"{name}: {why}" for name, why in reasons.items())
        super().__init__(f"no model left to call ({listed})")


class ShuttingDown(GraphthriftError):
    """The process is draining for a restart and takes no new work; retry on another one."""

    def __init__(self, in_flight: int, grace_s: float) -> None:
        self.in_flight = in_flight
        self.grace_s = grace_s
        super().__init__(
            f"shutting down: no new work is taken ({in_flight} calls finishing, "
            f"grace period {grace_s:g}s); retry on another worker"
        )


# --- ledger ---


class LedgerFlushTimeout(GraphthriftError):
    """``flush`` could not make the queued records durable in time (the database is down)."""

    def __init__(self, pending: int, timeout: float, last_error: str | None) -> None:
        self.pending = pending
        self.timeout = timeout
        self.last_error = last_error
        super().__init__(
            f"{pending} ledger records are not yet written after {timeout:.1f}s"
            f" (last error: {last_error or 'none'}); they stay queued and will be retried"
        )


# --- ops ---


class BatchItemFailed(GraphthriftError):
    """One request of a batch job failed for good: names the job, the request and why."""

    def __init__(
        self, job_id: str, custom_id: str, error: str, error_type: str, attempts: int
    ) -> None:
        self.job_id = job_id
        self.custom_id = custom_id
        self.error = error
        self.error_type = error_type
        self.attempts = attempts
        super().__init__(
            f"batch job {job_id}: request {custom_id} failed after {attempts} attempt(s)"
            f" ({error_type}): {error}"
        )


class BatchJobNotFound(GraphthriftError, KeyError):
    """No batch job with this id is in the store."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no batch job {job_id!r} in the store")

    def __str__(self) -> str:
        return str(self.args[0])


class BatchJobTimeout(GraphthriftError, TimeoutError):
    """A job did not finish within the wait; it keeps running and can be resumed by id."""

    def __init__(self, job_id: str, timeout: float, status: str) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.status = status
        super().__init__(
            f"batch job {job_id} is still {status} after {timeout:g}s; it keeps running at the"
            f" provider: resume it later with .result({job_id!r})"
        )


class AlertConfigError(ConfigError):
    """An alert setting is out of range: names the setting and the value.

    A ``ConfigError`` whose ``rule`` (also ``expected``) is what the setting must be.
    """

    def __init__(self, name: str, value: object, expected: str) -> None:
        self.expected = expected
        super().__init__(
            name, value, expected, message=f"alert setting {name} must be {expected}, got {value!r}"
        )


# --- bench data and traffic files ---


class DataFileError(GraphthriftError, ValueError):
    """A data file exists but cannot be read (truncated gzip, not gzip, not UTF-8)."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path} is damaged: {problem}")


class DataSetMissing(GraphthriftError):
    """A benchmark set is absent or damaged; the message says which and how to get it.

    ``hints`` maps each bundled set to how to get it; the bench's data module fills it, so
    this core module needs no knowledge of the data folder. A set not in it is the user's
    own file (``--squad``, ``--conversations``, ...) and gets no hint.
    """

    hints: ClassVar[dict[str, str]] = {}

    def __init__(self, dataset: str, path: Path | None, problem: str = "not found") -> None:
        self.dataset = dataset
        self.path = path
        self.problem = problem
        where = f" at {path}" if path is not None else ""
        hint = self.hints.get(dataset)
        if hint is None:
            super().__init__(f"{dataset} {problem}{where}")
            return
        super().__init__(f"data set {dataset} {problem}{where}: {hint}")


class ConversationFormatError(ConfigError):
    """A conversations file does not follow the format; carries the file, line and field.

    A ``ConfigError`` on the user's ``--conversations`` file: ``value`` is the path and
    ``rule`` the problem.
    """

    def __init__(self, path: Path, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(
            "--conversations",
            path,
            problem,
            message=f"{path}:{line}: {problem}. Expected one JSON object a line: "
            '{"id": str, "turns": [{"role": "user"|"assistant", "content": str, "facts": [str, ...]}]}',
        )


class TrafficFileError(ConfigError):
    """The traffic file cannot be read at all (missing, a damaged gzip, not UTF-8).

    A ``ConfigError`` on the user's ``--traffic`` file: ``value`` is the path and ``rule``
    the problem.
    """

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__("--traffic", path, problem, message=f"--traffic {path}: {problem}")


# --- cache ---


class CacheUnavailable(GraphthriftError):
    """A cache operation that does not fail open (``clear``, ``shadow_report``) failed."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"cache {operation} failed: {reason}")


class BadScopeText(GraphthriftError, ValueError):
    """A cache scope field holds a NUL byte or a lone surrogate: the entry is skipped.

    A repaired id could equal another tenant's, so no entry is read or written for it.
    """

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        super().__init__(f"cache scope fields {fields} hold a NUL byte or a lone surrogate")


class CacheArgumentError(ConfigError, TypeError):
    """A cache argument has the wrong type or name (a ``ConfigError``, and a ``TypeError``
    as it always was, so old ``except TypeError`` handlers still catch it)."""


class UnknownScopeKey(CacheArgumentError):
    """A cache call was given a scope keyword the cache does not know (``tenant=`` for
    ``tenant_id=``): running it under the default scope would serve another tenant's
    answers, so it raises and names the keyword."""

    def __init__(self, given: dict[str, object], allowed: tuple[str, ...]) -> None:
        self.keys = sorted(given)
        self.allowed = allowed
        first = self.keys[0]
        others = f" (also unknown: {', '.join(self.keys[1:])})" if len(self.keys) > 1 else ""
        super().__init__(
            first,
            given[first],
            f"not a cache scope keyword{others}; use one of {', '.join(allowed)}",
        )


class UnknownReportKey(ConfigError):
    """A report was grouped, compared or counted by a key it does not know. Names the key
    plainly (``key``; all of them in ``keys``), lists ``choices`` and suggests the close one
    (``suggestion``: ``thread_id`` for ``thread``, or ``None``). A ``ConfigError``, so the
    ``ValueError`` reports always raised for a bad key still catches it."""

    def __init__(self, what: str, keys: Sequence[str], choices: Sequence[str]) -> None:
        self.keys = [str(k) for k in keys] or [""]
        self.key = self.keys[0]
        self.choices = tuple(choices)
        self.suggestion = close_match(self.key, self.choices)
        hint = f" (did you mean {self.suggestion}?)" if self.suggestion else ""
        others = f" (also unknown: {', '.join(self.keys[1:])})" if len(self.keys) > 1 else ""
        rule = f"not a key it knows{hint}{others}; choose from {', '.join(self.choices)}"
        super().__init__(what, self.key, rule, message=f"cannot {what} {self.key}: {rule}")


def close_match(given: str, choices: Sequence[str]) -> str | None:
    """The one choice ``given`` was probably meant to be: the only choice it begins
    (``thread`` -> ``thread_id``), else the closest spelling (``modle`` -> ``model``)."""
    import difflib

    starts = [c for c in choices if c.startswith(given)] if given else []
    if len(starts) == 1:
        return starts[0]
    close = difflib.get_close_matches(given, list(choices), n=1, cutoff=0.75)
    return close[0] if close else None


# --- budget ---


class ConfigTypeError(ConfigError, TypeError):
    """A setting of the wrong type (e.g. ``max_usd=True``): a ``ConfigError`` that is also
    the ``TypeError`` Python raises for a wrong type, so both ``except`` clauses catch it."""


class BudgetScopeMissing(GraphthriftError, ValueError):
    """A budget limits a scope (e.g. ``max_usd={"run": ...}``) but the call has no tag for it.

    A call without its scope's tag must never fall into one bucket shared by every untagged
    run, tenant or process (issue 11, item 1), so it is refused instead. The adapters always
    find a run scope (``Budget`` docs, "Run scope"); core callers pass ``tags={"run_id": ...}``.
    """

    def __init__(self, scope_kind: str, tag: str) -> None:
        self.scope_kind = scope_kind
        self.tag = tag
        super().__init__(
            f"the budget limits the {scope_kind!r} scope but this call has no {tag!r} tag; "
            f"pass tags={{{tag!r}: ...}} (the adapters derive run_id from the run itself)"
        )


# --- history ---


class HistoryConfigError(ConfigError):
    """A pruning setting is out of range; carries the setting, its value and the rule."""

    def __init__(self, name: str, value: object, rule: str) -> None:
        super().__init__(name, value, rule)
        self.args = (f"HistoryPruner {name}={value!r} is invalid: {rule}",)


class HistoryRequestTooLarge(GraphthriftError, ValueError):
    """The latest human turn alone exceeds ``max_tokens`` (with ``oversized_request="raise"``).

    Carries the request's tokens and the budget: the request is never cut or folded, so the
    only remedies are a larger budget or a shorter request.
    """

    def __init__(self, tokens: int, max_tokens: int) -> None:
        self.tokens = tokens
        self.max_tokens = max_tokens
        super().__init__(
            f"the latest user turn alone is {tokens} tokens, over the history budget "
            f"max_tokens={max_tokens}; it is never truncated or folded, so raise max_tokens "
            "or pass oversized_request='send' to send it over budget"
        )


class UnsupportedMessage(GraphthriftError, TypeError):
    """An item of the history is not a chat message; carries its position and type."""

    def __init__(self, index: int, type_name: str, reason: str) -> None:
        self.index = index
        self.type_name = type_name
        super().__init__(f"history item {index} ({type_name}) is not a chat message: {reason}")


class HistoryStateError(GraphthriftError, ValueError):
    """A stored ``HistoryState`` could not be read; carries the offending field."""

    def __init__(self, field_name: str, value: object) -> None:
        self.field_name = field_name
        self.value = value
        super().__init__(
            f"history state field {field_name!r} has an invalid value {value!r}; "
            "drop the stored state to start a fresh summary"
        )


# --- compress ---


class InvalidCompressionTarget(ConfigError):
    """A budget that cannot be honoured: a kept fraction outside (0, 1] or a negative size.

    ``allowed`` (also ``rule``) says what the setting must be.
    """

    def __init__(self, name: str, value: object, allowed: str) -> None:
        super().__init__(name, value, allowed)
        self.allowed = allowed
        hint = ""
        if name == "target_ratio" and isinstance(value, int | float) and value > 1:
            hint = f" (to compress {value}x, pass target_ratio={1 / value:.3g})"
        self.args = (f"{name} must be {allowed}, got {value!r}{hint}",)


class LinguaModelError(GraphthriftError, RuntimeError):
    """The LLMLingua model could not be loaded or does not fit the chosen mode."""

    def __init__(self, model_path: str, mode: str, reason: str) -> None:
        self.model_path, self.mode, self.reason = model_path, mode, reason
        super().__init__(
            f"cannot use LLMLingua model {model_path!r} in {mode} mode: {reason}. Pass "
            "model_path= a local directory saved with save_pretrained (no model hub is "
            "needed then), or set GRAPHTHRIFT_LLMLINGUA_MODEL."
        )


# --- embed ---


class EmbeddingShapeError(GraphthriftError, ValueError):
    """An embedding function returned the wrong number of vectors or a changing size."""

    def __init__(
        self, model_id: str, expected: tuple[int, int | None], got: tuple[int, ...]
    ) -> None:
        self.model_id, self.expected, self.got = model_id, expected, got
        super().__init__(
            f"embedder {model_id!r} returned shape {got} for {expected[0]} texts, expected "
            f"{expected}; it must return one fixed-size vector per input text"
        )
