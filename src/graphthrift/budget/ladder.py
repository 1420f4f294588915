"""The degradation ladder: why a reservation was refused (``Shortfall``), which rung to try
next, and the loop that walks the rungs for ``Budget.preflight``.

The loop is written once, as a generator that yields actions (reserve, compress,
summarize, interrupt) and receives their results; ``drive`` and ``adrive`` carry them out
with sync or async callables.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from graphthrift import diagnostics
from graphthrift.budget.limits import Step
from graphthrift.budget.reservation import Estimate, Reservation
from graphthrift.errors import BudgetExceeded
from graphthrift.ledger.prices import PriceBook

if TYPE_CHECKING:
    from graphthrift.budget.budget import Budget

__all__ = ["Preflight", "Shortfall", "adrive", "available_steps", "drive", "next_step"]

_INPUT_SHRINKERS = ("compress", "summarize")
Program = Generator[tuple[str, Any], Any, "Preflight"]


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a reservation was refused: the limit, what its scope holds, what was asked."""

    limit_name: str
    scope: str
    limit: float
    spent: float
    requested: float
    scope_kind: str = "step"

    def __post_init__(self) -> None:
        # Every refusal is observable (Prometheus graphthrift_budget_violations_total).
        diagnostics.count(f"budget_refusal_{self.limit_name}")

    @property
    def remaining(self) -> float:
        return max(self.limit - self.spent, 0.0)

    def error(self) -> BudgetExceeded:
        """The ``BudgetExceeded`` to raise for this shortfall."""
        return BudgetExceeded(self.limit_name, self.limit, self.spent, self.scope, self.requested)

    def interrupt_payload(self) -> dict[str, Any]:
        """What a human is shown when a run pauses on this shortfall (LangGraph ``interrupt``)."""
        return {
            "type": "budget",
            "limit_name": self.limit_name,
            "scope": self.scope,
            "limit": self.limit,
            "spent": self.spent,
            "requested": self.requested,
            "question": "Approve this model call past the budget? Resume with True to approve.",
        }

    @staticmethod
    def approved(answer: Any) -> bool:
        """Whether a human's resume value approves the call (True, "approve" or "yes")."""
        return answer is True or (isinstance(answer, str) and answer.lower() in ("approve", "yes"))

    def message(self) -> str:
        """A sentence for the user when the run ends on this shortfall."""
        return (
            f"I have to stop here: the {self.limit_name} budget for {self.scope} does not have"
            f" enough left for this step (limit {self.limit:g}, spent {self.spent:g}, this step needs"
            f" {self.requested:g})."
        )


@dataclass(slots=True)
class Preflight:
    """What ``Budget.preflight`` decided for one call.

    ``outcome`` is ``"proceed"`` (call ``model`` with ``messages``, then settle
    ``reservation``) or ``"end"`` (stop cleanly; ``shortfall`` says why). ``steps`` lists
    the ladder rungs carried out, in order.
    """

    outcome: Literal["proceed", "end"]
    model: str
    messages: list[Any]
    steps: list[str]
    reservation: Reservation | None
    shortfall: Shortfall | None


def next_step(
    ladder: Iterable[Step],
    prices: PriceBook,
    shortfall: Shortfall,
    *,
    tried: Iterable[str] = (),
    available: Iterable[str] = ("end",),
    estimate: Estimate | None = None,
    cheaper: Estimate | None = None,
) -> Step | None:
    """The next rung of ``ladder`` that could make this call fit (``Budget.next_step``)."""
    done, can = set(tried), set(available)
    for step in ladder:
        if step in done or step not in can:
            continue
        if step in _INPUT_SHRINKERS and not _input_helps(prices, shortfall, estimate):
            continue
        if step == "cheaper_model" and not _cheaper_helps(shortfall, estimate, cheaper):
            continue
        return step
    return None


def _input_helps(prices: PriceBook, short: Shortfall, est: Estimate | None) -> bool:
    """Whether a shorter prompt could fit: not when even the output alone is over."""
    if short.limit_name == "max_input_tokens":
        return True
    if est is None:
        return True
    if short.limit_name in ("max_tokens",):
        return est.output_tokens <= short.remaining and est.input_tokens > 0
    if short.limit_name in ("max_usd", "max_request_usd"):
        floor = prices.cost(est.model, 0, est.output_tokens) or 0.0
        return floor <= short.remaining and est.input_tokens > 0
    return False


def _cheaper_helps(short: Shortfall, est: Estimate | None, cheaper: Estimate | None) -> bool:
    if short.limit_name not in ("max_usd", "max_request_usd") or cheaper is None:
        return False
    if cheaper.usd is None:
        return False
    if est is not None and est.usd is not None and cheaper.usd >= est.usd:
        return False
    return cheaper.usd <= short.remaining


def available_steps(cheaper: Any, compress: Any, summarize: Any, interrupt: Any) -> set[str]:
    """The rungs an adapter can carry out: ``end`` always, the others when given."""
    can = {"end"}
    for step, tool in (
        ("cheaper_model", cheaper),
        ("compress", compress),
        ("summarize", summarize),
        ("interrupt", interrupt),
    ):
        if tool is not None:
            can.add(step)
    return can


def program(
    budget: Budget,
    model: str,
    messages: list[Any],
    cheaper_model: str | None,
    can: set[str],
    max_output_tokens: int | None,
) -> Program:
    """The degradation loop, written once: yields actions, receives their results."""
    taken: list[str] = []
    force = False
    while True:
        est = budget.estimate(model, messages, max_output_tokens=max_output_tokens)
        result = yield "reserve", (est, force)
        if isinstance(result, Reservation):
            return Preflight("proceed", model, messages, taken, result, None)
        cheaper = None
        if cheaper_model is not None and cheaper_model != model and "cheaper_model" in can:
            cheaper = budget.estimate(
                cheaper_model,
                messages,
                input_tokens=est.input_tokens,
                max_output_tokens=max_output_tokens,
            )
        step = budget.next_step(result, tried=taken, available=can, estimate=est, cheaper=cheaper)
        if step is None:
            raise result.error()
        taken.append(step)
        if step == "end":
            return Preflight("end", model, messages, taken, None, result)
        if step == "cheaper_model":
            assert cheaper_model is not None
            model = cheaper_model
        elif step == "interrupt":
            force = bool((yield "interrupt", result))
        else:
            messages = list((yield step, messages))


def drive(
    steps: Program,
    reserve: Callable[[Estimate, bool], Reservation | Shortfall],
    rungs: Mapping[str, Callable[[Any], Any] | None],
) -> Preflight:
    """Carry out the loop's actions: ``reserve``, else the rung's callable."""
    try:
        action, payload = next(steps)
        while True:
            if action == "reserve":
                reply: Any = reserve(payload[0], payload[1])
            else:
                fn = rungs[action]
                assert fn is not None
                reply = fn(payload)
            action, payload = steps.send(reply)
    except StopIteration as stop:
        done: Preflight = stop.value
        return done


async def adrive(
    steps: Program,
    reserve: Callable[[Estimate, bool], Awaitable[Reservation | Shortfall]],
    rungs: Mapping[str, Callable[[Any], Any] | None],
) -> Preflight:
    """Async twin of ``drive``; the rungs' callables may be sync or async."""
    try:
        action, payload = next(steps)
        while True:
            if action == "reserve":
                reply: Any = await reserve(payload[0], payload[1])
            else:
                fn = rungs[action]
                assert fn is not None
                reply = fn(payload)
                if inspect.isawaitable(reply):
                    reply = await reply
            action, payload = steps.send(reply)
    except StopIteration as stop:
        done: Preflight = stop.value
        return done
