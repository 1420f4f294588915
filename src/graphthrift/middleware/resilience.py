"""``ResilienceMiddleware`` (single-flight and capped retries for ``create_agent`` model calls)
and ``IdempotentToolMiddleware`` (side-effecting tools run at most once per key).

Long because: the three resilience middlewares share their run-scope and ledger plumbing, and
each has the sync and async hooks ``AgentMiddleware`` asks for.

LangChain's ``ModelRetryMiddleware`` and ``ModelFallbackMiddleware`` retry and fall back one
call at a time; they cannot see that another thread, task or process is already generating
the same answer. This middleware makes identical concurrent model calls (same model,
settings, tools and messages, same tenant and scope) one provider call, through
``graphthrift.resilience.SingleFlight``. For request-id dedup of whole agent runs, wrap the
agent with ``graphthrift.langgraph.dedup_requests``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
)
from langchain_core._api.beta_decorator import suppress_langchain_beta_warning
from langchain_core.load import dumpd, load
from langchain_core.messages import ToolMessage
from langgraph.config import get_config
from langgraph.types import Command

from graphthrift import diagnostics
from graphthrift.budget.refusals import record_refusal
from graphthrift.errors import BudgetExceeded, NoCandidateLeft, classify_error
from graphthrift.kernel import cache_scope, run_tags
from graphthrift.langgraph.resilience import (
    message_fingerprint,
    message_usage,
    model_identity,
    model_name,
    request_id_of,
    tool_call_key,
)
from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.usage import Usage
from graphthrift.provenance import fabricated
from graphthrift.resilience import (
    JSON_CODEC,
    CircuitBreaker,
    Codec,
    Failover,
    RequestDedup,
    Retrier,
    RunBudget,
    SharedRateLimiter,
    SingleFlight,
    ToolIdempotency,
)
from graphthrift.resilience.ratelimit import Priority
from graphthrift.text.tokens import count_messages

__all__ = ["FailoverMiddleware", "IdempotentToolMiddleware", "ResilienceMiddleware"]


def _encode_response(response: Any) -> Any:
    if not isinstance(response, ModelResponse):
        raise TypeError(f"cannot share a {type(response).__name__} between callers")
    return dumpd({"result": response.result, "structured": response.structured_response})


def _decode_response(data: Any) -> ModelResponse[Any]:
    with suppress_langchain_beta_warning():  # ``load`` is LangChain's own, marked beta
        loaded = load(data, allowed_objects="messages")
    return ModelResponse(result=loaded["result"], structured_response=loaded["structured"])


#: ``ModelResponse`` to JSON and back, for answers handed over between processes.
RESPONSE_CODEC = Codec(encode=_encode_response, decode=_decode_response)


def _run_config() -> Mapping[str, Any]:
    try:
        return get_config()
    except RuntimeError:  # outside a LangGraph run
        return {}


def _response_usage(response: Any) -> Usage | None:
    if isinstance(response, ModelResponse):
        for message in reversed(response.result):
            usage = message_usage(message)
            if usage is not None:
                return usage
    return None


def _call_tokens(request: ModelRequest[Any], name: str, default_cap: int) -> tuple[int, int]:
    """The call's counted input tokens and its capped output (``max_tokens`` of the call or
    the model, else ``default_cap``): what a budget must assume the provider bills."""
    messages = list(request.messages)
    if request.system_message is not None:
        messages.insert(0, request.system_message)
    settings = request.model_settings or {}
    cap = settings.get("max_tokens") or getattr(request.model, "max_tokens", None)
    cap = cap if isinstance(cap, int) and cap > 0 else default_cap
    return count_messages(messages, name).tokens, cap


def _made_no_call(response: Any) -> bool:
    """Whether graphthrift wrote the answer in place of a model call (a budget's stop, a
    cache hit): the provider billed nothing, so the run's budget is not charged."""
    if not isinstance(response, ModelResponse) or not response.result:
        return False
    return fabricated(response.result[-1])


def _run_id(tags: Mapping[str, Any]) -> str | None:
    run_id = tags.get("run_id")
    return None if run_id is None else str(run_id)


class ResilienceMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Identical concurrent model calls make one provider call; failures retry within caps.

    Args:
        single_flight: the ``SingleFlight`` (with a ledger, waiters are booked as
            ``kind="dedup"`` rows with ``saved_usd``).
        retrier: a ``Retrier``: backoff with full jitter honouring ``retry-after``, retries
            capped per call and as a share of the run's and tenant's calls. Use it instead
            of ``ModelRetryMiddleware`` (not both: retries would multiply). Retries happen
            inside the single flight, so waiters never retry on their own.
        rate_limiter: a ``SharedRateLimiter``: each attempt reserves one request and its
            counted input plus capped output tokens (``max_tokens`` of the call, else
            ``max_output_tokens``), waits for room up to its bound (then ``RateLimited``),
            and settles the real usage.
        priority: ``"interactive"`` or ``"batch"`` (batch leaves the limiter's reserve).
        request_dedup: a ``RequestDedup``: in a run with a caller's request id (config
            metadata ``request_id``, else the request header ``header`` that LangGraph's
            server forwards into ``config["configurable"]``), each model call runs once per
            request id; a client's retry of the request waits for it or gets its stored
            answer instead of generating again. Runs without a request id pass through.
        header: the request header holding the request id (case-insensitive).
        model_name: the priced name of the agent's model (default: read from the model).
        run_budget: a ``RunBudget``: each delivered call is charged to its run at its real
            usage, each timed-out call at its input plus capped output (the provider bills
            it), and an attempt that would take the run over its budget is refused with
            ``BudgetExceeded`` instead of being retried (a ``kind="refusal"`` row in the
            run budget's ledger). An answer graphthrift wrote in place of a call (a budget's
            stop) is not charged: the provider billed nothing.

    It writes no state. Place it outermost (first in ``middleware=[...]``) so that retries
    and fallbacks inside it are shared too.

    Example:
        >>> agent = create_agent(model, tools,
        ...                      middleware=[ResilienceMiddleware(SingleFlight(store))])
    """

    def __init__(
        self,
        single_flight: SingleFlight | None = None,
        *,
        retrier: Retrier | None = None,
        rate_limiter: SharedRateLimiter | None = None,
        priority: Priority = "interactive",
        max_output_tokens: int = 1024,
        request_dedup: RequestDedup | None = None,
        header: str | None = "x-request-id",
        model_name: str | None = None,
        run_budget: RunBudget | None = None,
    ) -> None:
        super().__init__()
        self.run_budget = run_budget
        layers = (single_flight, retrier, rate_limiter, request_dedup, run_budget)
        if all(x is None for x in layers):
            raise ValueError(
                "ResilienceMiddleware needs a single_flight, a retrier, a rate_limiter, "
                "a request_dedup or a run_budget"
            )
        if request_dedup is not None and not isinstance(request_dedup, RequestDedup):
            raise TypeError(
                f"ResilienceMiddleware needs a graphthrift RequestDedup, got {request_dedup!r}"
            )
        if request_dedup is not None and request_dedup.engine.codec is JSON_CODEC:
            request_dedup.engine.codec = RESPONSE_CODEC
        self.request_dedup = request_dedup
        self.header = header
        if priority not in ("interactive", "batch"):
            raise ValueError(f"priority must be 'interactive' or 'batch', got {priority!r}")
        if single_flight is not None and not isinstance(single_flight, SingleFlight):
            raise TypeError(
                f"ResilienceMiddleware needs a graphthrift SingleFlight, got {single_flight!r}"
            )
        if retrier is not None and not isinstance(retrier, Retrier):
            raise TypeError(f"ResilienceMiddleware needs a graphthrift Retrier, got {retrier!r}")
        if single_flight is not None and single_flight.engine.codec is JSON_CODEC:
            single_flight.engine.codec = RESPONSE_CODEC
        self.single_flight = single_flight
        self.retrier = retrier
        self.rate_limiter = rate_limiter
        self.priority: Priority = priority
        self.max_output_tokens = max_output_tokens
        self.model_name = model_name

    def _args(self, request: ModelRequest[Any]) -> dict[str, Any]:
        messages = list(request.messages)
        if request.system_message is not None:
            messages.insert(0, request.system_message)
        tools = sorted(getattr(t, "name", None) or str(t) for t in request.tools or [])
        key = message_fingerprint(
            messages,
            model=model_identity(request.model),
            settings=dict(request.model_settings or {}),
            tools=tools,
            tool_choice=request.tool_choice,
        )
        config = _run_config()
        return {
            "key": key,
            "scope": cache_scope(config),
            "model": self.model_name or model_name(request.model),
            "usage_of": _response_usage,
            "tags": run_tags(config),
            "request_id": request_id_of(config, self.header),
        }

    def _request_args(self, args: Mapping[str, Any]) -> dict[str, Any] | None:
        """Request-id dedup of this model call: the request id plus the call's own key (each
        step of the agent loop is its own call), or None when not deduped."""
        if self.request_dedup is None or args["request_id"] is None:
            return None
        return {
            "request_id": f"{args['request_id']}|{args['key']}",
            "scope": args["scope"],
            "model": args["model"],
            "usage_of": _response_usage,
            "tags": args["tags"],
        }

    def _flight_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in args.items() if k != "request_id"}

    def _rate_args(
        self, request: ModelRequest[Any], args: Mapping[str, Any]
    ) -> tuple[str, int, str | None]:
        """The limit's model name, the tokens to reserve (counted input plus capped output)
        and the tenant."""
        name = args["model"] or "unknown"
        messages = list(request.messages)
        if request.system_message is not None:
            messages.insert(0, request.system_message)
        settings = request.model_settings or {}
        cap = settings.get("max_tokens") or getattr(request.model, "max_tokens", None)
        cap = cap if isinstance(cap, int) and cap > 0 else self.max_output_tokens
        tenant = args["tags"].get("tenant_id")
        tokens = count_messages(messages, name).tokens + cap
        return name, tokens, None if tenant is None else str(tenant)

    def _spend_check(
        self, request: ModelRequest[Any], args: Mapping[str, Any]
    ) -> tuple[str, int, int] | None:
        """(priced model, input tokens, output cap) of this attempt, after checking it fits
        the run's budget (``BudgetExceeded`` when it does not); None without a run budget."""
        budget = self.run_budget
        if budget is None:
            return None
        name = model_name(request.model) or args["model"] or "unknown"
        tokens, cap = _call_tokens(request, name, self.max_output_tokens)
        run_id = _run_id(args["tags"])
        if not budget.fits(run_id, name, tokens, cap):
            record_refusal(budget.ledger, "max_usd", args["tags"], name)
            raise BudgetExceeded(
                "max_usd",
                budget.max_usd,
                budget.spent(run_id),
                f"run {run_id}",
                requested=budget.estimate(name, tokens, cap),
            )
        return name, tokens, cap

    def _spend_failed(
        self, spend: tuple[str, int, int] | None, args: Mapping[str, Any], exc: BaseException
    ) -> None:
        """A timed-out attempt ran at the provider, which bills it: book it as spent."""
        if spend is not None and self.run_budget is not None and classify_error(exc) == "timeout":
            self.run_budget.charge_timeout(args["tags"], *spend)

    def _spend_done(
        self, spend: tuple[str, int, int] | None, args: Mapping[str, Any], response: Any
    ) -> None:
        if spend is None or self.run_budget is None or _made_no_call(response):
            return
        used = _response_usage(response)
        name, tokens, cap = spend
        usd = self.run_budget.estimate(
            name,
            tokens if used is None else used.input_tokens,
            cap if used is None else used.output_tokens,
        )
        self.run_budget.charge(_run_id(args["tags"]), usd)

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Call the model (retried within the caps), or take the answer of the identical
        call already running."""
        args = self._args(request)
        retrier = self.retrier

        def billed() -> ModelResponse[Any]:
            spend = self._spend_check(request, args)
            try:
                response = handler(request)
            except Exception as exc:
                self._spend_failed(spend, args, exc)
                raise
            self._spend_done(spend, args, response)
            return response

        def once() -> ModelResponse[Any]:
            limiter = self.rate_limiter
            if limiter is None:
                return billed()
            name, tokens, tenant = self._rate_args(request, args)
            held = limiter.acquire(name, tokens=tokens, tenant_id=tenant, priority=self.priority)
            response = billed()
            used = _response_usage(response)
            if used is not None:
                limiter.settle(held, used_tokens=used.input_tokens + used.output_tokens)
            return response

        if retrier is None:
            call: Callable[[], ModelResponse[Any]] = once
        else:
            call = lambda: retrier.call(once, tags=args["tags"])  # noqa: E731

        def shared() -> ModelResponse[Any]:
            if self.single_flight is None:
                return call()
            return self.single_flight.call(fn=call, **self._flight_args(args))

        by_request = self._request_args(args)
        if by_request is None or self.request_dedup is None:
            return shared()
        return self.request_dedup.call(fn=shared, **by_request)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async twin of ``wrap_model_call``."""
        args = self._args(request)

        async def billed() -> ModelResponse[Any]:
            spend = self._spend_check(request, args)
            try:
                response = await handler(request)
            except Exception as exc:
                self._spend_failed(spend, args, exc)
                raise
            self._spend_done(spend, args, response)
            return response

        async def once() -> ModelResponse[Any]:
            limiter = self.rate_limiter
            if limiter is None:
                return await billed()
            name, tokens, tenant = self._rate_args(request, args)
            held = await limiter.aacquire(
                name, tokens=tokens, tenant_id=tenant, priority=self.priority
            )
            response = await billed()
            used = _response_usage(response)
            if used is not None:
                await asyncio.to_thread(
                    limiter.settle, held, used_tokens=used.input_tokens + used.output_tokens
                )
            return response

        async def call() -> ModelResponse[Any]:
            if self.retrier is None:
                return await once()
            return await self.retrier.acall(once, tags=args["tags"])

        async def shared() -> ModelResponse[Any]:
            if self.single_flight is None:
                return await call()
            return await self.single_flight.acall(fn=call, **self._flight_args(args))

        by_request = self._request_args(args)
        if by_request is None or self.request_dedup is None:
            return await shared()
        return await self.request_dedup.acall(fn=shared, **by_request)


class IdempotentToolMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Side-effecting tools of a ``create_agent`` agent run at most once per key.

    Through ``wrap_tool_call``: before a guarded tool runs, its key is claimed in the store;
    a repeat (a LangGraph resume, a replay from a checkpoint, a restarted process) gets the
    stored ``ToolMessage`` back, with the repeat's own ``tool_call_id``. The key is the
    call's ``key_arg`` argument when present, else (thread, tool, canonical arguments).

    Args:
        guard: the ``ToolIdempotency`` (store, TTL, lease).
        tools: names of the side-effecting tools to guard (required: a read-only tool keyed
            by (thread, tool, arguments) would return its stored result when asked again).
        key_arg: the tool argument holding an explicit idempotency key.

    A tool that returns a ``Command`` is run unguarded (a command cannot be replayed safely);
    this is counted as ``idempotent_tool_command``. It writes no state.

    Example:
        >>> agent = create_agent(model, [pay_invoice], checkpointer=saver, middleware=[
        ...     IdempotentToolMiddleware(ToolIdempotency(store), tools=["pay_invoice"])])
    """

    def __init__(
        self,
        guard: ToolIdempotency,
        *,
        tools: Collection[str],
        key_arg: str | None = "idempotency_key",
    ) -> None:
        super().__init__()
        if not isinstance(guard, ToolIdempotency):
            raise TypeError(
                f"IdempotentToolMiddleware needs a graphthrift ToolIdempotency, got {guard!r}"
            )
        if guard.codec is JSON_CODEC:
            guard.codec = TOOL_MESSAGE_CODEC
        self.guard = guard
        if isinstance(tools, str) or not tools:
            raise ValueError(
                "IdempotentToolMiddleware needs the names of the side-effecting tools to guard "
                "(tools=[...]): a read-only tool guarded by (thread, tool, args) would return a "
                "stale result when called again in the same thread"
            )
        self.guarded_tools: frozenset[str] | None = frozenset(tools)
        self.key_arg = key_arg

    def _args(self, request: Any) -> dict[str, Any] | None:
        call = request.tool_call
        name = call.get("name") or ""
        if self.guarded_tools is not None and name not in self.guarded_tools:
            return None
        runtime = getattr(request, "runtime", None)
        config = getattr(runtime, "config", None) or _run_config()
        tags = run_tags(config)
        key, _ = tool_call_key(name, call.get("args") or {}, tags.get("thread_id"), self.key_arg)
        tenant = tags.get("tenant_id")
        return {
            "key": key,
            "tool": name,
            "tenant_id": None if tenant is None else str(tenant),
            "tags": tags,
        }

    @staticmethod
    def _checked(result: Any) -> ToolMessage:
        if not isinstance(result, ToolMessage):
            diagnostics.count("idempotent_tool_command")
            raise _Unstorable(result)
        if result.status == "error":
            raise _Unstorable(result)  # a failed call is not a result: let it be retried
        return result

    @staticmethod
    def _for(request: Any, message: ToolMessage) -> ToolMessage:
        # a new message (no id): the state's reducer appends it instead of replacing another
        return message.model_copy(
            update={"tool_call_id": request.tool_call.get("id") or "", "id": None}
        )

    def wrap_tool_call(
        self, request: Any, handler: Callable[[Any], ToolMessage | Command[Any]]
    ) -> ToolMessage | Command[Any]:
        """Run the tool once per key; repeats get the stored result."""
        args = self._args(request)
        if args is None:
            return handler(request)
        try:
            message = self.guard.run(fn=lambda: self._checked(handler(request)), **args)
        except _Unstorable as raw:
            return raw.result  # type: ignore[no-any-return]
        return self._for(request, message)

    async def awrap_tool_call(
        self, request: Any, handler: Callable[[Any], Awaitable[ToolMessage | Command[Any]]]
    ) -> ToolMessage | Command[Any]:
        """Async twin of ``wrap_tool_call``."""
        args = self._args(request)
        if args is None:
            return await handler(request)

        async def call() -> ToolMessage:
            return self._checked(await handler(request))

        try:
            message = await self.guard.arun(fn=call, **args)
        except _Unstorable as raw:
            return raw.result  # type: ignore[no-any-return]
        return self._for(request, message)


class _Unstorable(Exception):
    """A tool result that must not be stored (a Command, an error): released and returned."""

    def __init__(self, result: Any) -> None:
        super().__init__("unstorable tool result")
        self.result = result


def _encode_tool_message(message: Any) -> Any:
    return dumpd(message)


def _decode_tool_message(data: Any) -> Any:
    with suppress_langchain_beta_warning():
        return load(data, allowed_objects="messages")


#: ``ToolMessage`` to JSON and back, for results stored across processes.
TOOL_MESSAGE_CODEC = Codec(encode=_encode_tool_message, decode=_decode_tool_message)


class FailoverMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Cost-aware failover with circuit breakers for ``create_agent`` model calls.

    The agent's model is tried first, then ``fallbacks`` in order; a candidate whose circuit
    is open, or whose call would break the run's budget (``fits``), is skipped, and the reason
    is written to the ledger (``kind="failover"``). Unlike ``ModelFallbackMiddleware``, it
    does not call a provider its breaker knows is down, and it never falls back to a model the
    budget cannot pay for. Use one or the other, not both; put ``ResilienceMiddleware`` (retries)
    inside it when each candidate should be retried before moving on.

    Args:
        fallbacks: ``{name: chat model}``, best first; names are what ``fits`` and the
            ledger see.
        breaker: the ``CircuitBreaker`` (default: a new one).
        fits: ``model name -> bool``, whether the call fits the run's budget.
        ledger: where decisions are written.
        model_name: the name of the agent's own model (default: read from the model).
        run_budget: a ``RunBudget``: a candidate whose call (counted input plus capped
            output, ``max_output_tokens`` unless the call sets ``max_tokens``) would take the
            run past its budget, given what the run has spent (billed timeouts included), is
            skipped as ``"over budget"``; a run left with no candidate for that reason is a
            ``kind="refusal"`` row (in ``ledger``, else the run budget's).
        max_output_tokens: the output cap assumed when the call sets none.
    """

    def __init__(
        self,
        fallbacks: Mapping[str, Any],
        *,
        breaker: CircuitBreaker | None = None,
        fits: Callable[[str], bool] | None = None,
        ledger: Ledger | None = None,
        model_name: str | None = None,
        run_budget: RunBudget | None = None,
        max_output_tokens: int = 1024,
    ) -> None:
        super().__init__()
        if not fallbacks:
            raise ValueError("FailoverMiddleware needs at least one fallback model")
        self.fallbacks = dict(fallbacks)
        self.breaker = breaker or CircuitBreaker()
        self.fits = fits
        self.ledger = ledger
        self.model_name = model_name
        self.run_budget = run_budget
        self.max_output_tokens = max_output_tokens

    def _fits(self, request: ModelRequest[Any]) -> Callable[[str], bool] | None:
        """``fits`` and the run budget's check, for this request."""
        budget, fits = self.run_budget, self.fits
        if budget is None:
            return fits
        run_id = _run_id(run_tags(_run_config()))

        def check(name: str) -> bool:
            if fits is not None and not fits(name):
                return False
            tokens, cap = _call_tokens(request, name, self.max_output_tokens)
            return budget.fits(run_id, name, tokens, cap)

        return check

    def _plan(self, request: ModelRequest[Any]) -> tuple[Failover, dict[str, Any]]:
        primary = self.model_name or model_name(request.model) or "primary"
        models = {primary: request.model, **self.fallbacks}
        failover = Failover(
            list(models),
            breaker=self.breaker,
            fits=self._fits(request),
            ledger=self.ledger,
            answered=lambda response: not _made_no_call(response),
        )
        return failover, models

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Call the first candidate that is healthy, affordable and answers."""
        failover, models = self._plan(request)
        tags = run_tags(_run_config())
        try:
            return failover.call(
                lambda name: handler(request.override(model=models[name])), tags=tags
            )
        except NoCandidateLeft as refused:
            self._refused(refused, tags)
            raise

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async twin of ``wrap_model_call``."""
        failover, models = self._plan(request)
        tags = run_tags(_run_config())

        async def call(name: str) -> ModelResponse[Any]:
            return await handler(request.override(model=models[name]))

        try:
            return await failover.acall(call, tags=tags)
        except NoCandidateLeft as refused:
            self._refused(refused, tags)
            raise

    def _refused(self, refused: NoCandidateLeft, tags: Mapping[str, Any]) -> None:
        """A run the budget left no model for is a budget refusal: one ``kind="refusal"``
        row (the ``failover`` row says why each candidate was skipped)."""
        over = [name for name, why in refused.reasons.items() if why == "over budget"]
        if over:
            ledger = self.ledger or (self.run_budget.ledger if self.run_budget else None)
            record_refusal(ledger, "max_usd", tags, over[0])
