"""``enforce_budget``: LangGraph nodes that reserve a model call's cost before it runs.

Long because: the guard and settle nodes (sync and async), their state schema, their edge,
and the deprecated names of issue 15 belong together.

A thin translation over ``graphthrift.Budget.preflight``: messages and tags out of the
state and config, the core's reservation and degradation ladder, a partial update back.
``interrupt`` rungs use ``langgraph.types.interrupt`` (the graph needs a checkpointer);
resume with ``Command(resume=True)`` to approve the call past the limit, anything else to
continue down the ladder.

The graph's state must extend ``BudgetState`` (LangGraph silently drops writes to keys a
state does not declare, so a guard on plain ``MessagesState`` could never settle); the
nodes raise ``StateSchemaError`` naming it otherwise.

Run scope: LangGraph gives a node no id of the invocation it runs in. The run's id is the
metadata's ``run_id``, else ``config["run_id"]``, else one the guard mints on the first
entry of an invocation and keeps in ``budget_run``, anchored to the id of the latest human
message: a new human turn starts a new run, the tool loop and an interrupt's resume stay in
the same one.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, NotRequired, overload

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, MessagesState
from langgraph.graph.message import REMOVE_ALL_MESSAGES

from graphthrift.budget.budget import Budget
from graphthrift.budget.ladder import Preflight, Shortfall
from graphthrift.budget.reservation import Reservation
from graphthrift.errors import ConfigError
from graphthrift.kernel import (
    answered_by,
    ask_human,
    model_name,
    read_state,
    renamed_argument,
    run_tags,
)
from graphthrift.langgraph._state import latest
from graphthrift.langgraph.compress import resolve_compression_savings
from graphthrift.provenance import OWN_MESSAGE_KEY
from graphthrift.provenance import fabricated as made_by_graphthrift

__all__ = [
    "BudgetGuard",
    "BudgetState",
    "budget_guard",
    "budget_max_tokens",
    "call_model_name",
    "enforce_budget",
    "route_on_budget",
    "step_calls",
]

MessagesFn = Callable[[list[Any]], Sequence[Any]]
_SCHEMA = "BudgetState"


class BudgetState(MessagesState):
    """The state ``enforce_budget`` reads and writes; extend it with your graph's own keys.

    ``budget_steps`` and ``budget_run`` always have a value (``[]`` and ``{}``) in a graph
    built on this schema, which is how the nodes check that the graph declares their keys.
    """

    budget_steps: Annotated[list[str], latest]
    budget_run: Annotated[dict[str, Any], latest]
    budget_model: NotRequired[str | None]
    budget_status: NotRequired[str | None]
    budget_reservation: NotRequired[dict[str, Any] | None]
    budget_max_tokens: NotRequired[int | None]


def _read(state: Any, key: str) -> Any:
    """An optional key of the state (None when absent); required keys go through ``_check``."""
    return read_state(state, key, schema=_SCHEMA, node="enforce_budget", default=None)


def call_model_name(message: Any, default: str | None = None) -> str | None:
    """Deprecated: use ``graphthrift.kernel.answered_by``."""
    warnings.warn(
        "call_model_name is deprecated; use graphthrift.kernel.answered_by",
        DeprecationWarning,
        stacklevel=2,
    )
    return answered_by(message, default)


def step_calls(state: Any, messages_key: str = "messages") -> tuple[list[Any], bool]:
    """The model calls of the current step: ``(model, usage)`` pairs, and whether an answer
    was fabricated (a cache hit) instead.

    The step's answers are the AI messages after the guard's mark (the last message when it
    reserved), else those at the end of the list; ``route_calls`` (``RouteState``) adds the calls whose answers were not
    served, such as the cheap answer of an escalation.
    """
    messages = list(_read(state, messages_key) or [])
    default = _read(state, "budget_model") or _read(state, "route_model")
    reservation = _read(state, "budget_reservation")
    mark = reservation.get("mark") if isinstance(reservation, Mapping) else None
    ids = [getattr(m, "id", None) for m in messages]
    if mark is not None and mark in ids:  # the step's messages: those after the guard's mark
        messages = messages[ids.index(mark) + 1 :]
    calls: list[Any] = []
    fabricated = False
    for message in reversed(messages):
        if not isinstance(message, AIMessage):
            break
        if made_by_graphthrift(message):
            fabricated = True
            continue
        calls.append((answered_by(message, default), message.usage_metadata))
    calls.reverse()
    for extra in _read(state, "route_calls") or []:
        if isinstance(extra, Mapping):
            calls.insert(0, (extra.get("model"), extra.get("usage")))
    return calls, fabricated


def _latest_human_id(messages: Sequence[Any]) -> str | None:
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.id
    return None


def _ask_human(shortfall: Shortfall) -> bool:
    return Shortfall.approved(ask_human(shortfall.interrupt_payload()))


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


def _ended(state: Any, status_key: str) -> bool:
    status = read_state(state, status_key, schema=_SCHEMA, node="route_on_budget", default=None)
    return bool(status == "ended")


@overload
def route_on_budget(
    proceed: str, end: str = END, *, status_key: str = "budget_status"
) -> Callable[[Any], str]: ...
@overload
def route_on_budget(proceed: Any) -> Literal["continue", "end"]: ...
def route_on_budget(
    proceed: Any, end: str = END, *, status_key: str = "budget_status"
) -> Callable[[Any], str] | Literal["continue", "end"]:
    """A conditional edge out of ``enforce_budget``'s guard: to ``end`` (default ``END``)
    when the budget stopped the run, else to ``proceed`` (the model node).

    The same shape as ``route_on_cache_hit`` and ``route_on_model``: destinations in,
    an edge ``state -> node`` out, so no path map is needed::

        builder.add_conditional_edges("guard", route_on_budget("model"))

    Deprecated form: ``route_on_budget`` itself as the edge (called with the state), which
    returns ``"continue"`` or ``"end"`` for a path map.
    """
    if not isinstance(proceed, str):  # the old edge, called with the graph's state
        warnings.warn(
            "route_on_budget(state) is deprecated; use route_on_budget('model_node') as the edge",
            DeprecationWarning,
            stacklevel=2,
        )
        return "end" if _ended(proceed, status_key) else "continue"
    if not proceed or not isinstance(end, str) or not end:
        raise ConfigError("route_on_budget(proceed, end)", (proceed, end), "name two nodes")

    def route(state: Any) -> str:
        return end if _ended(state, status_key) else proceed

    route.__name__ = f"route_on_budget_{proceed}"
    return route


class BudgetGuard:
    """The node pair ``enforce_budget`` returns: ``guard`` before the model, ``settle`` after.

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
            self._guard, afunc=self._aguard, name="enforce_budget"
        )
        self.settle: RunnableLambda[Any, dict[str, Any]] = RunnableLambda(
            self._settle, afunc=self._asettle, name="budget_settle"
        )

    def capped(
        self,
        chat_model: Any,
        state: Any,
        *,
        max_tokens_param: str | None = None,
        param: str | None = None,
    ) -> Any:
        """``chat_model`` bound so its output cannot exceed what the guard reserved.

        For the model node between ``guard`` and ``settle``:
        ``guard.capped(llm, state).invoke(state["messages"])``. ``max_tokens_param`` is the
        model's output-cap keyword (default ``max_tokens``: OpenAI, Anthropic and most chat
        models). Without an open reservation the model is returned unchanged. ``param`` is
        the deprecated spelling of ``max_tokens_param``.
        """
        key = _cap_param(max_tokens_param, param, "capped")
        cap = budget_max_tokens(state)
        return chat_model if cap is None else chat_model.bind(**{key: cap})

    def model_node(
        self, chat_model: Any, *, max_tokens_param: str | None = None, param: str | None = None
    ) -> RunnableLambda[Any, dict[str, Any]]:
        """A model node that calls ``chat_model`` on the messages, capped at the reservation."""
        key = self.messages_key
        cap_key = _cap_param(max_tokens_param, param, "model_node")

        def node(state: Any, config: RunnableConfig) -> dict[str, Any]:
            messages = list(_read(state, key) or [])
            bound = self.capped(chat_model, state, max_tokens_param=cap_key)
            return {key: [bound.invoke(messages, config)]}

        async def anode(state: Any, config: RunnableConfig) -> dict[str, Any]:
            messages = list(_read(state, key) or [])
            bound = self.capped(chat_model, state, max_tokens_param=cap_key)
            return {key: [await bound.ainvoke(messages, config)]}

        return RunnableLambda(node, afunc=anode, name="budget_capped_model")

    def _check(self, state: Any, node: str) -> None:
        read_state(state, "budget_steps", schema=_SCHEMA, node=node)

    def _run(self, state: Any, config: RunnableConfig) -> tuple[dict[str, Any], dict[str, Any]]:
        """The call's tags, with a run scope that comes from the run itself (module docs)."""
        tags = run_tags(config, **self.tags)
        if "run_id" in tags:
            return tags, {}
        node = "enforce_budget"
        messages = list(read_state(state, self.messages_key, schema=_SCHEMA, node=node))
        anchor = _latest_human_id(messages)
        kept = read_state(state, "budget_run", schema=_SCHEMA, node=node) or {}
        run_id = kept.get("run_id")
        if not run_id or kept.get("anchor") != anchor:
            run_id = f"lg-{uuid.uuid4().hex}"
        tags["run_id"] = run_id
        return tags, {"run_id": run_id, "anchor": anchor}

    def _kwargs(self, tags: dict[str, Any]) -> dict[str, Any]:
        return {
            "tags": tags,
            "cheaper_model": self.cheaper_model,
            "compress": self.compressor,
            "summarize": self.summarizer,
            "interrupt": _ask_human if self.allow_interrupt else None,
        }

    def _model_now(self, state: Any) -> str:
        return str(_read(state, "budget_model") or self.model)

    def _update(self, before: list[Any], done: Preflight, run: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"budget_model": done.model, "budget_steps": done.steps}
        if run:
            out["budget_run"] = run
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
        out["budget_max_tokens"] = done.reservation.max_output_tokens
        messages = before
        if done.messages is not before and any(s in ("compress", "summarize") for s in done.steps):
            messages = [_with_id(m) for m in done.messages]
            out[self.messages_key] = [RemoveMessage(id=REMOVE_ALL_MESSAGES), *messages]
            if run:  # the rewritten messages carry the run's anchor from now on
                out["budget_run"] = {**run, "anchor": _latest_human_id(messages)}
        mark = getattr(messages[-1], "id", None) if messages else None
        out["budget_reservation"] = {**done.reservation.as_state(), "mark": mark}
        return out

    def _begin(self, state: Any, config: RunnableConfig) -> tuple[list[Any], dict[str, Any], Any]:
        self._check(state, "enforce_budget")
        messages = list(_read(state, self.messages_key) or [])
        tags, run = self._run(state, config)
        return messages, run, self._kwargs(tags)

    def _guard(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages, run, kwargs = self._begin(state, config)
        done = self.budget.preflight(self._model_now(state), messages, **kwargs)
        return {**self._update(messages, done, run), **self._clear_route(state)}

    async def _aguard(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages, run, kwargs = self._begin(state, config)
        done = await self.budget.apreflight(self._model_now(state), messages, **kwargs)
        return {**self._update(messages, done, run), **self._clear_route(state)}

    @staticmethod
    def _clear_route(state: Any) -> dict[str, Any]:
        """A new step starts with no unserved route calls (when the state routes too)."""
        return {"route_calls": []} if _read(state, "route_calls") else {}

    def _usage(self, state: Any) -> tuple[Reservation | None, dict[str, Any] | None]:
        """The open reservation and how to settle it: every call of the step, priced at the
        model that answered; ``None`` releases it (the answer came from a cache)."""
        self._check(state, "budget_settle")
        raw = _read(state, "budget_reservation")
        if not raw:
            return None, {}
        reservation = Reservation.from_state(raw)
        calls, fabricated = step_calls(state, self.messages_key)
        if calls:
            return reservation, {"calls": calls}
        if fabricated:
            return reservation, None
        return reservation, {}

    def _settled(self, state: Any, how: dict[str, Any] | None) -> dict[str, Any]:
        """Clear the step, and book (or drop, after a cached answer) held compression savings
        at the model that answered."""
        out: dict[str, Any] = {"budget_reservation": None, "budget_max_tokens": None}
        calls = (how or {}).get("calls") or []
        model = calls[-1][0] if calls else self._model_now(state)
        savings = resolve_compression_savings(state, model, served=how is not None)
        return {**out, **self._clear_route(state), **savings}

    def _settle(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        reservation, how = self._usage(state)
        if reservation is not None:
            if how is None:
                self.budget.release(reservation)
            else:
                self.budget.settle(reservation, **how)
        return self._settled(state, how)

    async def _asettle(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        reservation, how = self._usage(state)
        if reservation is not None:
            if how is None:
                await self.budget.arelease(reservation)
            else:
                await self.budget.asettle(reservation, **how)
        return self._settled(state, how)


def _with_id(message: Any) -> Any:
    """``message`` with an id, so the guard knows the ids its rewritten messages will carry."""
    if isinstance(message, BaseMessage) and not message.id:
        return message.model_copy(update={"id": str(uuid.uuid4())})
    return message


def enforce_budget(
    budget: Budget,
    *,
    model: str,
    cheaper_model: Any = None,
    compressor: MessagesFn | None = None,
    summarizer: MessagesFn | None = None,
    allow_interrupt: bool | None = None,
    messages_key: str = "messages",
    tags: Mapping[str, Any] | None = None,
) -> BudgetGuard:
    """Nodes that reserve a model call's cost before it runs and settle it after.

    State keys (build the graph on ``BudgetState`` or a state that extends it; the nodes
    raise ``StateSchemaError`` otherwise):
        reads ``messages_key`` (default ``messages``): the prompt to estimate.
        reads/writes ``budget_model``: the model to call (``cheaper_model`` after that rung);
            the model node should call it.
        writes ``budget_status``: ``"ok"``, ``"degraded"`` (a rung ran) or ``"ended"``.
        writes ``budget_steps``: the rungs carried out; ``budget_reservation``: the open
            reservation (a dict), cleared by ``settle``.
        reads/writes ``budget_run``: the run scope the guard minted (see the module docs).
        writes ``budget_max_tokens``: the output tokens reserved; the model node must cap
            its call at it (``guard.capped(llm, state)``, or ``guard.model_node(llm)`` as
            the model node), else one call can spend more than it held. Read it with
            ``budget_max_tokens(state)`` (it falls back to ``budget_reservation``).
        writes ``messages_key``: after compress/summarize, the whole list is replaced
            (``RemoveMessage(REMOVE_ALL_MESSAGES)`` + the new list); on ``end`` an
            ``AIMessage`` explaining the stop is appended.

    Args:
        budget: the ``Budget``; its ``ladder`` orders the rungs.
        model: the name of the model the graph calls (priced for the estimate).
        cheaper_model: the chat model the ``cheaper_model`` rung switches to (its name is
            read with ``graphthrift.kernel.model_name`` and written to ``budget_model``; the
            model node calls it). Deprecated: its name as a string.
        compressor, summarizer: ``messages -> messages`` callables for those rungs.
        allow_interrupt: enable the ``interrupt`` rung (default: when it is in the ladder).
        tags: fixed tags; the config's metadata (tenant_id, feature, run_id) and
            ``configurable.thread_id`` are added per call (``graphthrift.kernel.run_tags``).

    ``settle`` books every model call of the step at the model that answered
    (``response_metadata["model_name"]``) and its reported usage, including a rejected
    cheap answer a ``choose_model`` node left in ``route_calls``; a cached answer releases
    the reservation. Behind a router, give ``model`` the strong model (the worst case).

    Returns:
        A ``BudgetGuard``: add ``.guard`` before the model node, ``.settle`` after it, and
        ``route_on_budget("model")`` as the conditional edge out of the guard. ``.model_node(llm)``
        is a model node that honours the reserved output cap.

    Raises:
        UnknownModelPrice: the budget has cost limits and a model has no price.
        ConfigError: ``cheaper_model`` tells no model name.

    Example:
        >>> g = enforce_budget(Budget(store, max_usd={"tenant": 1.0}), model="gpt-4o-mini")
        >>> builder.add_node("guard", g.guard)
        >>> builder.add_node("model", g.model_node(llm))
        >>> builder.add_node("settle", g.settle)
        >>> builder.add_conditional_edges("guard", route_on_budget("model"))
    """
    cheaper = _cheaper_name(cheaper_model)
    if allow_interrupt is None:
        allow_interrupt = "interrupt" in budget.ladder
    return BudgetGuard(
        budget,
        model=model,
        cheaper_model=cheaper,
        compressor=compressor,
        summarizer=summarizer,
        allow_interrupt=allow_interrupt,
        messages_key=messages_key,
        tags=tags,
    )


def _cheaper_name(cheaper_model: Any) -> str | None:
    """The priced name of the ``cheaper_model`` rung's chat model (or of a deprecated name)."""
    if cheaper_model is None:
        return None
    if isinstance(cheaper_model, str):
        warnings.warn(
            "enforce_budget(cheaper_model='name') is deprecated: pass the chat model",
            DeprecationWarning,
            stacklevel=3,
        )
        return cheaper_model
    name = model_name(cheaper_model)
    if name is None:
        raise ConfigError(
            "cheaper_model", type(cheaper_model).__name__, "a chat model that tells its name"
        )
    return name


def _cap_param(max_tokens_param: str | None, param: str | None, where: str) -> str:
    """The output-cap keyword: ``max_tokens_param``, or the deprecated ``param``; not both."""
    key = renamed_argument(where, "max_tokens_param", max_tokens_param, "param", param)
    return str(key or "max_tokens")


def budget_guard(budget: Budget, **kwargs: Any) -> BudgetGuard:
    """Deprecated: ``enforce_budget`` (same arguments)."""
    warnings.warn(
        "budget_guard is deprecated; use enforce_budget", DeprecationWarning, stacklevel=2
    )
    return enforce_budget(budget, **kwargs)
