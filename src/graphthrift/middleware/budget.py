"""``BudgetMiddleware`` and ``ToolBudgetMiddleware``: pre-flight budgets for ``create_agent``.

``ModelCallLimitMiddleware`` and ``ToolCallLimitMiddleware`` count calls; these reserve
what a call may cost (tokens and USD, per tenant, feature, thread and run, per UTC day)
before it runs, degrade gracefully when the budget is short, and settle the actual usage
after. The logic is ``graphthrift.Budget``; this module only translates.

Run scope: the run's id is the metadata's ``run_id``, else ``config["run_id"]``, else one
``BudgetMiddleware`` mints in ``before_agent`` for every invocation and keeps in its state
(``graphthrift_run_id``); a resume after an interrupt stays in the same run. Every model
call is priced at the model the request carries (``ModelRequest.model``, so behind
``ModelRoutingMiddleware`` each call at its own model) and settled at the model and usage the
provider reported; a router inside the budget reports each call of its cascade.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Annotated, Any, Literal, NotRequired

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    PrivateStateAttr,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.runtime import Runtime
from langgraph.types import Command

from graphthrift.budget.budget import Budget
from graphthrift.budget.ladder import Preflight, Shortfall
from graphthrift.budget.reservation import Reservation
from graphthrift.errors import BudgetExceeded, ConfigError
from graphthrift.kernel import (
    answered_by,
    ask_human,
    model_name,
    renamed_argument,
    run_config,
    run_tags,
)
from graphthrift.ledger.ledger import Ledger
from graphthrift.provenance import OWN_MESSAGE_KEY, degraded_call, fabricated
from graphthrift.route.router import collect_calls

__all__ = [
    "BudgetAgentState",
    "BudgetMiddleware",
    "ToolBudgetAgentState",
    "ToolBudgetMiddleware",
    "model_name_of",
]

MessagesFn = Callable[[list[Any]], Sequence[Any]]


UNNAMED_MODEL = "unnamed-model"  # counted with the default tokenizer, never priced


class BudgetAgentState(AgentState[Any]):
    """``BudgetMiddleware``'s state: the run scope it minted for this invocation."""

    graphthrift_run_id: NotRequired[Annotated[str | None, PrivateStateAttr]]


class ToolBudgetAgentState(AgentState[Any]):
    """``ToolBudgetMiddleware``'s state: tool calls allowed so far in this invocation, and
    before the current step."""

    graphthrift_run_tool_calls: NotRequired[Annotated[int, PrivateStateAttr]]
    graphthrift_step_tool_calls_before: NotRequired[Annotated[int, PrivateStateAttr]]


def model_name_of(model: Any, default: str | None = None) -> str:
    """Deprecated: use ``graphthrift.kernel.model_name`` (which returns None, not raises).

    Raises:
        ValueError: ``model`` tells no name and no ``default`` is given.
    """
    warnings.warn(
        "model_name_of is deprecated; use graphthrift.kernel.model_name",
        DeprecationWarning,
        stacklevel=2,
    )
    return _priced_name(model, default)


def _priced_name(model: Any, default: str | None) -> str:
    name = model_name(model, default)
    if name is None:
        target = getattr(model, "bound", model)
        raise ValueError(
            f"cannot tell the model name of {type(target).__name__}; pass model= explicitly"
        )
    return name


def _answer_model(response: Any, default: str) -> str:
    """The model the provider says answered (its last AI message), else ``default``."""
    messages = response.result if isinstance(response, ModelResponse) else [response]
    answers = [m for m in messages if isinstance(m, AIMessage)]
    return (answered_by(answers[-1]) if answers else None) or default


def _tags(fixed: Mapping[str, Any], state: Any) -> dict[str, Any]:
    """The run's tags (``graphthrift.kernel.run_tags``), with the run scope minted for this
    invocation when the run has no id of its own."""
    tags = run_tags(run_config(), **fixed)
    minted = state.get("graphthrift_run_id") if isinstance(state, Mapping) else None
    if "run_id" not in tags and minted:
        tags["run_id"] = minted
    return tags


def _ask_human(shortfall: Shortfall) -> bool:
    return Shortfall.approved(ask_human(shortfall.interrupt_payload()))


def _degraded(done: Preflight) -> AbstractContextManager[None]:
    """While a degraded call runs, a cache inside this middleware stores nothing (the
    answer is marked only after that cache has seen it)."""
    return degraded_call() if done.steps else nullcontext()


def _mark_degraded(response: Any, done: Preflight) -> None:
    """Mark an answer a budget rung degraded, so that no cache stores it (issue 11.2)."""
    if done.steps:
        for message in getattr(response, "result", None) or [response]:
            if isinstance(message, AIMessage):
                message.response_metadata[OWN_MESSAGE_KEY] = "budget_degraded"


def _settlement(response: Any, name: str, calls: list[tuple[str, Any]]) -> dict[str, Any]:
    """How to settle one wrapped call: each model call a router inside made, else the
    response's own usage at the model that answered. A fabricated answer (a cache hit or a
    budget stop) made no call: it settles at zero."""
    if calls:
        return {"calls": calls}
    messages = response.result if isinstance(response, ModelResponse) else [response]
    answers = [m for m in messages if isinstance(m, AIMessage)]
    if answers and all(fabricated(m) for m in answers):
        return {"calls": []}
    usage = next((m.usage_metadata for m in reversed(answers) if m.usage_metadata), None)
    return {"calls": [(_answer_model(response, name), usage)]}


class BudgetMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Reserves each model call's worst-case cost, degrades when short, settles after.

    On a refused reservation the budget's ladder runs: ``compress`` (``compressor``),
    ``cheaper_model`` (``cheaper_model``), ``summarize`` (``summarizer``), ``interrupt``
    (a LangGraph interrupt; needs a checkpointer; resume with ``True`` to approve) and
    ``end`` (the model call is replaced by an ``AIMessage`` that explains the stop, so the
    agent ends cleanly). A ladder without ``end`` raises ``BudgetExceeded``.

    Args:
        budget: the ``graphthrift.Budget``.
        cheaper_model: a chat model for the ``cheaper_model`` rung.
        compressor, summarizer: ``messages -> messages`` callables; they receive the
            system message first when there is one.
        model: the priced model name used when a request's model does not tell its own
            (each call is priced at ``ModelRequest.model``'s name first). ``model_name`` is
            its deprecated spelling; giving both, different, raises ``ConfigError``.
        allow_interrupt: enable the ``interrupt`` rung (default: when in the ladder).
        tags: fixed tags; the run's metadata and ``thread_id`` are added per call.
        max_tokens_param: the model setting that caps a call's output (``max_tokens`` for
            OpenAI, Anthropic and most chat models); each call is sent with it set to the
            output tokens it reserved, so it cannot spend more than it held. ``None``
            leaves the model's settings alone (the reservation then assumes the model
            keeps to the budget's ``max_output_tokens``).

    Example:
        >>> agent = create_agent(model, tools, middleware=[
        ...     BudgetMiddleware(Budget(store, max_usd={"tenant": 2.0}))])
        >>> agent.invoke({"messages": [...]}, {"metadata": {"tenant_id": "acme"}})
    """

    state_schema = BudgetAgentState

    def __init__(
        self,
        budget: Budget,
        *,
        cheaper_model: BaseChatModel | None = None,
        compressor: MessagesFn | None = None,
        summarizer: MessagesFn | None = None,
        model: str | None = None,
        allow_interrupt: bool | None = None,
        tags: Mapping[str, Any] | None = None,
        max_tokens_param: str | None = "max_tokens",
        model_name: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(budget, Budget):
            raise TypeError(f"BudgetMiddleware needs a graphthrift.Budget, got {budget!r}")
        model_name = renamed_argument("BudgetMiddleware", "model", model, "model_name", model_name)
        self.budget = budget
        self.cheaper_model = cheaper_model
        self.cheaper_name = _priced_name(cheaper_model, None) if cheaper_model is not None else None
        if self.cheaper_name is not None:
            budget.check_model(self.cheaper_name)
        if model_name is not None:
            budget.check_model(model_name)
        self.model_name = model_name
        self.compressor = compressor
        self.summarizer = summarizer
        self.allow_interrupt = (
            "interrupt" in budget.ladder if allow_interrupt is None else allow_interrupt
        )
        self.tags = dict(tags or {})
        self.max_tokens_param = max_tokens_param

    def before_agent(self, state: Any, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Mint this invocation's run scope (used when the run has no ``run_id``)."""
        return {"graphthrift_run_id": f"agent-{uuid.uuid4().hex}"}

    async def abefore_agent(self, state: Any, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async twin of ``before_agent``."""
        return self.before_agent(state, runtime)

    def _name(self, request: ModelRequest[Any]) -> str:
        """The priced name of this call's model: the request's model, else the name a
        ``ModelRoutingMiddleware`` outside called it by, else ``model``.

        A token-only budget needs no price, so a model that tells no name is counted with
        the default tokenizer; a cost budget needs the name and says so.
        """
        routed = (run_config().get("metadata") or {}).get("routed_model")
        fallback = routed if isinstance(routed, str) and routed else self.model_name
        if fallback is None and not self.budget.has_cost_limits:
            fallback = UNNAMED_MODEL
        name = model_name(request.model, fallback)
        if name is None:
            raise ValueError(
                f"BudgetMiddleware: cannot tell the model name of {type(request.model).__name__}"
                " to price it for a cost budget; pass BudgetMiddleware(model=...)"
            )
        return name

    def _inputs(self, request: ModelRequest[Any]) -> tuple[str, list[Any], dict[str, Any]]:
        name = self._name(request)
        messages = list(request.messages)
        if request.system_message is not None:
            messages.insert(0, request.system_message)
        settings = request.model_settings or {}
        key = self.max_tokens_param or "max_tokens"
        cap = settings.get(key) or getattr(request.model, key, None)
        kwargs: dict[str, Any] = {
            "tags": _tags(self.tags, request.state),
            "cheaper_model": self.cheaper_name,
            "compress": self.compressor,
            "summarize": self.summarizer,
            "interrupt": _ask_human if self.allow_interrupt else None,
            "max_output_tokens": cap if isinstance(cap, int) and cap > 0 else None,
        }
        return name, messages, kwargs

    def _apply(self, request: ModelRequest[Any], done: Preflight) -> ModelRequest[Any]:
        overrides: dict[str, Any] = {}
        if "cheaper_model" in done.steps and self.cheaper_model is not None:
            overrides["model"] = self.cheaper_model
        if any(step in ("compress", "summarize") for step in done.steps):
            messages = list(done.messages)
            if messages and messages[0] is request.system_message:
                messages = messages[1:]
            overrides["messages"] = messages
        if self.max_tokens_param is not None and done.reservation is not None:
            # the call may produce at most what it reserved (the concurrency bound)
            settings = dict(request.model_settings or {})
            settings[self.max_tokens_param] = done.reservation.max_output_tokens
            overrides["model_settings"] = settings
        return request.override(**overrides) if overrides else request

    @staticmethod
    def _ended(done: Preflight) -> AIMessage:
        assert done.shortfall is not None
        return AIMessage(
            done.shortfall.message(),
            response_metadata={
                "graphthrift_budget": done.shortfall.limit_name,
                OWN_MESSAGE_KEY: "budget",  # never cached (issue 11, item 2)
            },
        )

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage:
        """Reserve, run the ladder if refused, call the model, settle the actual usage."""
        name, messages, kwargs = self._inputs(request)
        done = self.budget.preflight(name, messages, **kwargs)
        if done.outcome == "end":
            return self._ended(done)
        reservation: Reservation | None = done.reservation
        assert reservation is not None
        try:
            with collect_calls() as calls, _degraded(done):
                response = handler(self._apply(request, done))
        except BaseException:
            self.budget.release(reservation)
            raise
        self.budget.settle(reservation, **_settlement(response, done.model, calls))
        _mark_degraded(response, done)
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage:
        """Async twin of ``wrap_model_call``."""
        name, messages, kwargs = self._inputs(request)
        done = await self.budget.apreflight(name, messages, **kwargs)
        if done.outcome == "end":
            return self._ended(done)
        reservation = done.reservation
        assert reservation is not None
        try:
            with collect_calls() as calls, _degraded(done):
                response = await handler(self._apply(request, done))
        except BaseException:
            await self.budget.arelease(reservation)
            raise
        await self.budget.asettle(reservation, **_settlement(response, done.model, calls))
        _mark_degraded(response, done)
        return response


class ToolBudgetMiddleware(AgentMiddleware[ToolBudgetAgentState, Any, Any]):
    """Caps the tool calls one model turn (step) and one run (invocation) may run.

    The calls of one ``AIMessage`` past ``max_tool_calls_per_step``, and every call past
    ``max_tool_calls_per_run`` in the invocation, are not run: each gets an error
    ``ToolMessage`` (``exit_behavior="continue"``, the default, so the model sees why) or
    raises ``BudgetExceeded`` (``exit_behavior="error"``). The run's count lives in the
    agent's state (``before_agent`` resets it, ``after_model`` adds the step's allowed
    calls), so parallel tool calls of one step are counted by their position.

    Args:
        max_tool_calls_per_step: the cap per model turn (default: the ``budget``'s).
        max_tool_calls_per_run: the cap per invocation (default: the ``budget``'s).
        budget: a ``Budget`` whose ``max_tool_calls_per_step``/``_per_run`` are used.
        exit_behavior: ``"continue"`` or ``"error"``.
        ledger: gets one ``kind="refusal"`` row per refused call (default: the ``budget``'s).
        tags: fixed run tags for those rows (the run's own metadata wins).

    Example:
        >>> agent = create_agent(model, tools, middleware=[
        ...     ToolBudgetMiddleware(max_tool_calls_per_step=3, max_tool_calls_per_run=10)])
    """

    state_schema = ToolBudgetAgentState

    def __init__(
        self,
        max_tool_calls_per_step: int | None = None,
        *,
        max_tool_calls_per_run: int | None = None,
        budget: Budget | None = None,
        exit_behavior: Literal["continue", "error"] = "continue",
        ledger: Ledger | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if exit_behavior not in ("continue", "error"):
            raise ConfigError("exit_behavior", exit_behavior, "must be 'continue' or 'error'")
        step, run = max_tool_calls_per_step, max_tool_calls_per_run
        if budget is not None:
            step = budget.max_tool_calls_per_step if step is None else step
            run = budget.max_tool_calls_per_run if run is None else run
        if step is None and run is None:
            raise ConfigError(
                "ToolBudgetMiddleware(max_tool_calls_per_step, max_tool_calls_per_run)",
                (step, run),
                "give at least one (or a budget with them)",
            )
        for label, limit in (("max_tool_calls_per_step", step), ("max_tool_calls_per_run", run)):
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
            ):
                raise ConfigError(label, limit, "must be an int >= 1")
        self.max_tool_calls_per_step = step
        self.max_tool_calls_per_run = run
        self._limits = Budget(
            max_tool_calls_per_step=step,
            max_tool_calls_per_run=run,
            ledger=budget.ledger if budget is not None else ledger,
        )
        self.tags = dict(tags or {})
        self.exit_behavior = exit_behavior

    def before_agent(self, state: Any, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """A new invocation starts with the run's whole allowance."""
        return {"graphthrift_run_tool_calls": 0, "graphthrift_step_tool_calls_before": 0}

    async def abefore_agent(self, state: Any, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async twin of ``before_agent``."""
        return self.before_agent(state, runtime)

    def after_model(self, state: Any, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Count the calls of the model's turn that the budget lets run."""
        messages = state.get("messages") or []
        last = messages[-1] if messages else None
        if not isinstance(last, AIMessage) or not last.tool_calls:
            return None
        used = int(state.get("graphthrift_run_tool_calls") or 0)
        allowed = self._limits.allowed_tool_calls(len(last.tool_calls), used_in_run=used)
        return {
            "graphthrift_step_tool_calls_before": used,
            "graphthrift_run_tool_calls": used + allowed,
        }

    async def aafter_model(self, state: Any, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async twin of ``after_model``."""
        return self.after_model(state, runtime)

    def _position(self, request: Any) -> int:
        """This call's index among the tool calls of the AIMessage that made it."""
        call_id = request.tool_call.get("id")
        state = request.state if isinstance(request.state, Mapping) else {}
        for message in reversed(state.get("messages", [])):
            if isinstance(message, AIMessage) and message.tool_calls:
                ids = [c.get("id") for c in message.tool_calls]
                if call_id in ids:
                    return ids.index(call_id)
        return 0

    def _verdict(self, request: Any) -> tuple[str, int, int] | None:
        """Why this call may not run: the limit's name, the limit, the call's number."""
        position = self._position(request)
        step = self.max_tool_calls_per_step
        if step is not None and position >= step:
            return "max_tool_calls_per_step", step, position
        run = self.max_tool_calls_per_run
        state = request.state if isinstance(request.state, Mapping) else {}
        before = int(state.get("graphthrift_step_tool_calls_before") or 0)
        if run is not None and before + position >= run:
            return "max_tool_calls_per_run", run, before + position
        return None

    def _refuse(self, request: Any, verdict: tuple[str, int, int]) -> ToolMessage:
        name, limit, index = verdict
        scope = "step" if name.endswith("step") else "run"
        self._limits.record_refusal(name, _tags(self.tags, request.state))
        if self.exit_behavior == "error":
            raise BudgetExceeded(name, limit, index, scope, 1)
        return ToolMessage(
            content=(
                f"Tool call not run: the budget allows {limit} tool calls per {scope} and "
                f"this was call {index + 1}. Use fewer tools"
                + (" per step." if scope == "step" else "; answer with what you have.")
            ),
            tool_call_id=request.tool_call.get("id") or "",
            name=request.tool_call.get("name"),
            status="error",
        )

    def wrap_tool_call(
        self, request: Any, handler: Callable[[Any], ToolMessage | Command[Any]]
    ) -> ToolMessage | Command[Any]:
        """Run the call only if it is within the step's and the run's allowance."""
        verdict = self._verdict(request)
        if verdict is not None:
            return self._refuse(request, verdict)
        return handler(request)

    async def awrap_tool_call(
        self, request: Any, handler: Callable[[Any], Awaitable[ToolMessage | Command[Any]]]
    ) -> ToolMessage | Command[Any]:
        """Async twin of ``wrap_tool_call``."""
        verdict = self._verdict(request)
        if verdict is not None:
            return self._refuse(request, verdict)
        return await handler(request)
