"""``BudgetMiddleware`` and ``ToolBudgetMiddleware``: pre-flight budgets for ``create_agent``.

``ModelCallLimitMiddleware`` and ``ToolCallLimitMiddleware`` count calls; these reserve
what a call may cost (tokens and USD, per tenant, feature, thread and run, per UTC day)
before it runs, degrade gracefully when the budget is short, and settle the actual usage
after. The logic is ``graphthrift.Budget``; this module only translates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.config import get_config
from langgraph.types import Command, interrupt

from graphthrift.budget import Budget, Preflight, Reservation, Shortfall, tags_from_metadata
from graphthrift.errors import BudgetExceeded
from graphthrift.provenance import OWN_MESSAGE_KEY
from graphthrift.usage import read_usage

__all__ = ["BudgetMiddleware", "ToolBudgetMiddleware", "model_name_of"]

MessagesFn = Callable[[list[Any]], Sequence[Any]]


def model_name_of(model: Any) -> str:
    """The priced name of a LangChain chat model (``model_name``, ``model`` or ``model_id``)."""
    for attr in ("model_name", "model", "model_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    raise ValueError(
        f"cannot tell the model name of {type(model).__name__}; pass model_name= explicitly"
    )


def _run_config() -> Mapping[str, Any]:
    try:
        return get_config()
    except RuntimeError:  # outside a LangGraph run
        return {}


def _tags(fixed: Mapping[str, Any]) -> dict[str, Any]:
    config = _run_config()
    return {**fixed, **tags_from_metadata(config.get("metadata"), config.get("configurable"))}


def _ask_human(shortfall: Shortfall) -> bool:
    return Shortfall.approved(interrupt(shortfall.interrupt_payload()))


def _mark_degraded(response: Any, done: Preflight) -> None:
    """Mark an answer a budget rung degraded, so that no cache stores it (issue 11.2)."""
    if done.steps:
        for message in getattr(response, "result", None) or [response]:
            if isinstance(message, AIMessage):
                message.response_metadata[OWN_MESSAGE_KEY] = "budget_degraded"


def _usage_of(response: Any) -> dict[str, Any]:
    messages = response.result if isinstance(response, ModelResponse) else [response]
    for message in reversed(messages):
        if isinstance(message, AIMessage):
            usage = read_usage(message.usage_metadata)
            if usage is not None:
                return {
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "cached_tokens": usage.cached_tokens,
                }
    return {}


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
        model_name: the priced name of the agent's model (default: read from the model).
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

    def __init__(
        self,
        budget: Budget,
        *,
        cheaper_model: BaseChatModel | None = None,
        compressor: MessagesFn | None = None,
        summarizer: MessagesFn | None = None,
        model_name: str | None = None,
        allow_interrupt: bool | None = None,
        tags: Mapping[str, Any] | None = None,
        max_tokens_param: str | None = "max_tokens",
    ) -> None:
        super().__init__()
        if not isinstance(budget, Budget):
            raise TypeError(f"BudgetMiddleware needs a graphthrift.Budget, got {budget!r}")
        self.budget = budget
        self.cheaper_model = cheaper_model
        self.cheaper_name = model_name_of(cheaper_model) if cheaper_model is not None else None
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

    def _inputs(self, request: ModelRequest[Any]) -> tuple[str, list[Any], dict[str, Any]]:
        name = self.model_name or model_name_of(request.model)
        messages = list(request.messages)
        if request.system_message is not None:
            messages.insert(0, request.system_message)
        settings = request.model_settings or {}
        key = self.max_tokens_param or "max_tokens"
        cap = settings.get(key) or getattr(request.model, key, None)
        kwargs: dict[str, Any] = {
            "tags": _tags(self.tags),
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
            response = handler(self._apply(request, done))
        except BaseException:
            self.budget.release(reservation)
            raise
        self.budget.settle(reservation, **_usage_of(response))
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
            response = await handler(self._apply(request, done))
        except BaseException:
            await self.budget.arelease(reservation)
            raise
        await self.budget.asettle(reservation, **_usage_of(response))
        _mark_degraded(response, done)
        return response


class ToolBudgetMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Caps the tool calls one model turn (step) may run, through ``wrap_tool_call``.

    The calls of one ``AIMessage`` past ``max_tool_calls_per_step`` are not run: each gets
    an error ``ToolMessage`` (``exit_behavior="continue"``, the default, so the model sees
    why) or raises ``BudgetExceeded`` (``exit_behavior="error"``).

    Args:
        max_tool_calls_per_step: the cap (default: the ``budget``'s).
        budget: a ``Budget`` whose ``max_tool_calls_per_step`` is used.
        exit_behavior: ``"continue"`` or ``"error"``.

    Example:
        >>> agent = create_agent(model, tools,
        ...                      middleware=[ToolBudgetMiddleware(max_tool_calls_per_step=3)])
    """

    def __init__(
        self,
        max_tool_calls_per_step: int | None = None,
        *,
        budget: Budget | None = None,
        exit_behavior: Literal["continue", "error"] = "continue",
    ) -> None:
        super().__init__()
        if exit_behavior not in ("continue", "error"):
            raise ValueError(f"exit_behavior must be 'continue' or 'error', got {exit_behavior!r}")
        limit = max_tool_calls_per_step
        if limit is None and budget is not None:
            limit = budget.max_tool_calls_per_step
        if limit is None:
            raise ValueError(
                "ToolBudgetMiddleware needs max_tool_calls_per_step (or a budget with it)"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_tool_calls_per_step must be an int >= 1, got {limit!r}")
        self.max_tool_calls_per_step = limit
        self.exit_behavior = exit_behavior

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

    def _refuse(self, request: Any, position: int) -> ToolMessage:
        if self.exit_behavior == "error":
            raise BudgetExceeded(
                "max_tool_calls_per_step", self.max_tool_calls_per_step, position, "step", 1
            )
        return ToolMessage(
            content=(
                f"Tool call not run: the budget allows {self.max_tool_calls_per_step} tool "
                f"calls per step and this was call {position + 1}. Use fewer tools per step."
            ),
            tool_call_id=request.tool_call.get("id") or "",
            name=request.tool_call.get("name"),
            status="error",
        )

    def wrap_tool_call(
        self, request: Any, handler: Callable[[Any], ToolMessage | Command[Any]]
    ) -> ToolMessage | Command[Any]:
        """Run the call only if it is within the step's allowance."""
        position = self._position(request)
        if position >= self.max_tool_calls_per_step:
            return self._refuse(request, position)
        return handler(request)

    async def awrap_tool_call(
        self, request: Any, handler: Callable[[Any], Awaitable[ToolMessage | Command[Any]]]
    ) -> ToolMessage | Command[Any]:
        """Async twin of ``wrap_tool_call``."""
        position = self._position(request)
        if position >= self.max_tool_calls_per_step:
            return self._refuse(request, position)
        return await handler(request)
