"""``budget_guard``: a LangGraph node that reserves a model call's cost before it runs.

A thin translation over ``graphthrift.Budget.preflight``: messages and tags out of the
state and config, the core's reservation and degradation ladder, a partial update back.
``interrupt`` rungs use ``langgraph.types.interrupt`` (the graph needs a checkpointer);
resume with ``Command(resume=True)`` to approve the call past the limit, anything else to
continue down the ladder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from langchain_core.messages import AIMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.types import interrupt

from graphthrift.budget import Budget, Preflight, Reservation, Shortfall, tags_from_metadata
from graphthrift.provenance import OWN_MESSAGE_KEY
from graphthrift.usage import read_usage

__all__ = ["BudgetGuard", "budget_guard", "budget_max_tokens", "route_on_budget"]

MessagesFn = Callable[[list[Any]], Sequence[Any]]


def _read(state: Any, key: str) -> Any:
    if isinstance(state, Mapping):
        return state.get(key)
    return getattr(state, key, None)


def _tags(config: RunnableConfig | None, fixed: Mapping[str, Any]) -> dict[str, Any]:
    config = config or {}
    return {
        **fixed,
        **tags_from_metadata(config.get("metadata"), config.get("configurable")),
    }


def _ask_human(shortfall: Shortfall) -> bool:
    return Shortfall.approved(interrupt(shortfall.interrupt_payload()))


def budget_max_tokens(state: Any) -> int | None:
    """The output tokens the open reservation holds (``budget_max_tokens``), or None.

    The model node should cap its call at this (``model.bind(max_tokens=...)``, or
    ``BudgetGuard.capped``): a call that writes more than it reserved breaks the bound on
    what concurrent runs of one tenant can overspend.
    """
    value = _read(state, "budget_max_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raw = _read(state, "budget_reservation")
    if isinstance(raw, Mapping):
        out = raw.get("output_tokens")
        if isinstance(out, int) and out > 0:
            return out
    return None


def route_on_budget(state: Any) -> Literal["continue", "end"]:
    """Conditional edge after ``budget_guard``: ``"end"`` when the guard stopped the run."""
    return "end" if _read(state, "budget_status") == "ended" else "continue"


class BudgetGuard:
    """The node pair a ``budget_guard`` returns: ``guard`` before the model, ``settle`` after.

    Both are runnables (sync and async) for ``StateGraph.add_node``.
    """

    def __init__(
        self,
        budget: Budget,
        *,
        model: str,
        cheaper_model: str | None,
        compressor: MessagesFn | None,
        summarizer: MessagesFn | None,
        allow_interrupt: bool,
        messages_key: str,
        tags: Mapping[str, Any] | None,
    ) -> None:
        budget.check_model(model)
        if cheaper_model is not None:
            budget.check_model(cheaper_model)
        self.budget = budget
        self.model = model
        self.cheaper_model = cheaper_model
        self.compressor = compressor
        self.summarizer = summarizer
        self.allow_interrupt = allow_interrupt
        self.messages_key = messages_key
        self.tags = dict(tags or {})
        self.guard: RunnableLambda[Any, dict[str, Any]] = RunnableLambda(
            self._guard, afunc=self._aguard, name="budget_guard"
        )
        self.settle: RunnableLambda[Any, dict[str, Any]] = RunnableLambda(
            self._settle, afunc=self._asettle, name="budget_settle"
        )

    def capped(self, model: Any, state: Any, *, param: str = "max_tokens") -> Any:
        """``model`` bound so its output cannot exceed what the guard reserved.

        For the model node between ``guard`` and ``settle``:
        ``guard.capped(llm, state).invoke(state["messages"])``. ``param`` is the model's
        output-cap keyword (``max_tokens`` for OpenAI, Anthropic and most chat models).
        Without an open reservation the model is returned unchanged.
        """
        cap = budget_max_tokens(state)
        return model if cap is None else model.bind(**{param: cap})

    def model_node(
        self, model: Any, *, param: str = "max_tokens"
    ) -> RunnableLambda[Any, dict[str, Any]]:
        """A model node that calls ``model`` on the messages, capped at the reservation."""
        key = self.messages_key

        def node(state: Any, config: RunnableConfig) -> dict[str, Any]:
            messages = list(_read(state, key) or [])
            return {key: [self.capped(model, state, param=param).invoke(messages, config)]}

        async def anode(state: Any, config: RunnableConfig) -> dict[str, Any]:
            messages = list(_read(state, key) or [])
            bound = self.capped(model, state, param=param)
            return {key: [await bound.ainvoke(messages, config)]}

        return RunnableLambda(node, afunc=anode, name="budget_capped_model")

    def _kwargs(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        return {
            "tags": _tags(config, self.tags),
            "cheaper_model": self.cheaper_model,
            "compress": self.compressor,
            "summarize": self.summarizer,
            "interrupt": _ask_human if self.allow_interrupt else None,
        }

    def _model_now(self, state: Any) -> str:
        return str(_read(state, "budget_model") or self.model)

    def _update(self, before: list[Any], done: Preflight) -> dict[str, Any]:
        out: dict[str, Any] = {"budget_model": done.model, "budget_steps": done.steps}
        if done.outcome == "end":
            assert done.shortfall is not None
            out["budget_status"] = "ended"
            out["budget_reservation"] = None
            out["budget_max_tokens"] = None
            out[self.messages_key] = [
                AIMessage(
                    done.shortfall.message(),
                    response_metadata={
                        "graphthrift_budget": done.shortfall.limit_name,
                        OWN_MESSAGE_KEY: "budget",  # never cached (issue 11, item 2)
                    },
                )
            ]
            return out
        assert done.reservation is not None
        out["budget_status"] = "ok" if not done.steps else "degraded"
        out["budget_reservation"] = done.reservation.as_state()
        out["budget_max_tokens"] = done.reservation.max_output_tokens
        if done.messages is not before and any(s in ("compress", "summarize") for s in done.steps):
            out[self.messages_key] = [RemoveMessage(id=REMOVE_ALL_MESSAGES), *done.messages]
        return out

    def _guard(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages = list(_read(state, self.messages_key) or [])
        done = self.budget.preflight(
            self._model_now(state), messages, **self._kwargs(state, config)
        )
        return self._update(messages, done)

    async def _aguard(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages = list(_read(state, self.messages_key) or [])
        done = await self.budget.apreflight(
            self._model_now(state), messages, **self._kwargs(state, config)
        )
        return self._update(messages, done)

    def _usage(self, state: Any) -> tuple[Reservation | None, dict[str, Any]]:
        raw = _read(state, "budget_reservation")
        if not raw:
            return None, {}
        reservation = Reservation.from_state(raw)
        messages = _read(state, self.messages_key) or []
        last = messages[-1] if messages else None
        usage = read_usage(getattr(last, "usage_metadata", None)) if last is not None else None
        if usage is None:
            return reservation, {}
        return reservation, {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens,
        }

    def _settle(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        reservation, usage = self._usage(state)
        if reservation is not None:
            self.budget.settle(reservation, **usage)
        return {"budget_reservation": None, "budget_max_tokens": None}

    async def _asettle(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        reservation, usage = self._usage(state)
        if reservation is not None:
            await self.budget.asettle(reservation, **usage)
        return {"budget_reservation": None, "budget_max_tokens": None}


def budget_guard(
    budget: Budget,
    *,
    model: str,
    cheaper_model: str | None = None,
    compressor: MessagesFn | None = None,
    summarizer: MessagesFn | None = None,
    allow_interrupt: bool | None = None,
    messages_key: str = "messages",
    tags: Mapping[str, Any] | None = None,
) -> BudgetGuard:
    """Nodes that reserve a model call's cost before it runs and settle it after.

    State keys:
        reads ``messages_key`` (default ``messages``): the prompt to estimate.
        reads/writes ``budget_model``: the model to call (``cheaper_model`` after that rung);
            the model node should call it.
        writes ``budget_status``: ``"ok"``, ``"degraded"`` (a rung ran) or ``"ended"``.
        writes ``budget_steps``: the rungs carried out; ``budget_reservation``: the open
            reservation (a dict), cleared by ``settle``.
        writes ``budget_max_tokens``: the output tokens reserved; the model node must cap
            its call at it (``guard.capped(llm, state)``, or ``guard.model_node(llm)`` as
            the model node), else one call can spend more than it held. Read it with
            ``budget_max_tokens(state)`` (it falls back to ``budget_reservation``).
        writes ``messages_key``: after compress/summarize, the whole list is replaced
            (``RemoveMessage(REMOVE_ALL_MESSAGES)`` + the new list); on ``end`` an
            ``AIMessage`` explaining the stop is appended.

    Args:
        budget: the ``Budget``; its ``ladder`` orders the rungs.
        model: the model name the graph calls (priced for the estimate).
        cheaper_model: the name the ``cheaper_model`` rung switches to.
        compressor, summarizer: ``messages -> messages`` callables for those rungs.
        allow_interrupt: enable the ``interrupt`` rung (default: when it is in the ladder).
        tags: fixed tags; the config's metadata (tenant_id, feature, run_id) and
            ``configurable.thread_id`` are added per call.

    Returns:
        A ``BudgetGuard``: add ``.guard`` before the model node, ``.settle`` after it, and
        ``route_on_budget`` as the conditional edge out of the guard. ``.model_node(llm)``
        is a model node that honours the reserved output cap.

    Raises:
        UnknownModelPrice: the budget has cost limits and a model has no price.

    Example:
        >>> g = budget_guard(Budget(store, max_usd={"tenant": 1.0}), model="gpt-4o-mini")
        >>> builder.add_node("guard", g.guard)
        >>> builder.add_node("model", g.model_node(llm))
        >>> builder.add_node("settle", g.settle)
        >>> builder.add_conditional_edges("guard", route_on_budget,
        ...                               {"continue": "model", "end": END})
    """
    if allow_interrupt is None:
        allow_interrupt = "interrupt" in budget.ladder
    return BudgetGuard(
        budget,
        model=model,
        cheaper_model=cheaper_model,
        compressor=compressor,
        summarizer=summarizer,
        allow_interrupt=allow_interrupt,
        messages_key=messages_key,
        tags=tags,
    )
