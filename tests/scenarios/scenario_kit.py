"""The world the composed scenarios run in, and the invariants they check on every turn.

A small support business with two tenants. Each tenant has its own opening hours and
closed day (told to the model in the system prompt), each user has orders whose status
the tools return with the account they belong to (``account=<user>@<tenant>``). The fake
model answers as a pure function of its prompt, so an answer names exactly the facts it
was given: an answer served to the wrong tenant, user or thread names the wrong account,
tenant or order, and the checks below see it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from genai_prices import Usage, calc_price
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, dynamic_prompt
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_config

CHEAP = "gpt-4o-mini"
STRONG = "gpt-4o"
HEDGE = "I'm not sure; I could not confirm that."
BUDGET_STOP = "I have to stop here"
TOOL_REFUSED = "Tool call not run"
ORDER_RE = re.compile(r"\b([A-Z]-\d{3})\b")
ACCOUNT_RE = re.compile(r"account=([\w.-]+)@([\w.-]+)")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST_ORDER_Q = "What was the first order I asked about?"
NO_ORDER_YET = "You have not asked about an order yet."


def digest(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(parts).encode(), digest_size=4).digest())


@dataclass
class World:
    """Two tenants with per-tenant facts, users with per-user orders, unique per test run."""

    tenants: list[str]
    users: dict[str, list[str]]
    hours: dict[str, str] = field(default_factory=dict)
    closed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, n_users: int = 2) -> World:
        run = uuid.uuid4().hex[:8]
        tenants = [f"acme-{run}", f"globex-{run}"]
        users = {
            t: [f"{name}{i}" for i, name in enumerate(("alice", "bob", "carol", "dave"))][:n_users]
            for t in tenants
        }
        world = cls(tenants=tenants, users=users)
        world.hours = {tenants[0]: "9:00-17:00", tenants[1]: "10:00-20:00"}
        world.closed = {tenants[0]: "Sunday", tenants[1]: "Monday"}
        return world

    def system_prompt(self, tenant: str) -> str:
        return (
            f"You are the support agent of tenant={tenant}; hours={self.hours[tenant]}; "
            f"closed={self.closed[tenant]}; answer briefly and use the tools for orders."
        )

    @staticmethod
    def orders() -> list[str]:
        """Order ids every user has (with different statuses): a shared id is where an
        answer about someone else's order would show."""
        return ["A-101", "A-102", "B-205", "C-310", "D-404"]

    @staticmethod
    def order_status(tenant: str, user: str, order_id: str) -> str:
        h = digest(tenant, user, order_id)
        status = ("shipped", "processing", "delivered", "delayed")[h % 4]
        eta = f"June {1 + h % 28}"
        return f"order={order_id}; status={status}; eta={eta}; account={user}@{tenant}"

    @staticmethod
    def refund(tenant: str, user: str, order_id: str) -> str:
        amount = 10 + digest("refund", tenant, user, order_id) % 90
        return f"refund={order_id}; amount=${amount}.00; state=approved; account={user}@{tenant}"


# ---------------------------------------------------------------- the fake model's logic


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return " ".join(
        str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
    )


def latest_human_index(messages: Sequence[BaseMessage]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].type == "human":
            return i
    return -1


def support_reply(
    messages: Sequence[BaseMessage], model: str
) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """What the support model answers to this prompt: a pure function of it.

    The cheap model hedges on refunds (so the router escalates them); everything else both
    models answer alike.
    """
    system = " ".join(_text(m) for m in messages if m.type == "system")
    tenant = m.group(1) if (m := re.search(r"tenant=([^;\s]+)", system)) else "?"
    hours = m.group(1) if (m := re.search(r"hours=([^;]+);", system)) else "?"
    closed = m.group(1) if (m := re.search(r"closed=([^;]+);", system)) else "?"
    at = latest_human_index(messages)
    if at < 0:
        return "Hello! How can I help?", []
    question = _text(messages[at]).strip()
    results = [_text(m) for m in messages[at + 1 :] if m.type == "tool"]
    if m := re.fullmatch(r"Where is my order (\S+)\?", question):
        if not results:
            return "", [("lookup_order", {"order_id": m.group(1)})]
        return f"Order {m.group(1)}: {results[-1]}", []
    if m := re.fullmatch(r"Where are my orders (\S+) and (\S+)\?", question):
        if not results:
            return "", [
                ("lookup_order", {"order_id": m.group(1)}),
                ("lookup_order", {"order_id": m.group(2)}),
            ]
        return "Your orders: " + " | ".join(results), []
    if m := re.fullmatch(r"Please refund order (\S+)\.", question):
        if not results:
            return "", [("refund_order", {"order_id": m.group(1)})]
        if model == CHEAP:
            return HEDGE, []
        return f"Refund of {m.group(1)}: {results[-1]}", []
    if question == FIRST_ORDER_Q:
        earlier = " ".join(_text(x) for x in messages[:at] if x.type == "human")
        found = ORDER_RE.findall(earlier)
        if not found:
            return NO_ORDER_YET, []
        return f"The first order you asked about was {found[0]}.", []
    if question in ("What are your opening hours?", "When are you open?"):
        return f"The {tenant} support desk is open {hours}.", []
    if m := re.fullmatch(r"Is the store open on (\w+)\?", question):
        day = m.group(1)
        state = "closed" if day == closed else "open"
        return f"On {day} the {tenant} store is {state}.", []
    if question == "Thanks!":
        return "You're welcome!", []
    return "I'm sorry, I can't help with that.", []


# ---------------------------------------------------------------- conversations


def conversation(rng: Any, n_turns: int) -> list[str]:
    """A seeded support conversation: order look-ups, refunds, history-dependent
    follow-ups, FAQ questions and small talk."""
    orders = World.orders()
    # every conversation opens with the FAQ: a first turn depends on no earlier one, so
    # it is the answer any safe cache key still reuses (across a user's threads at least)
    turns: list[str] = ["What are your opening hours?"]
    for _ in range(n_turns - 1):
        kind = rng.choices(
            ["order", "orders", "refund", "first", "hours", "thanks"],
            weights=[5, 1, 2, 3, 2, 1],
        )[0]
        if kind == "order":
            turns.append(f"Where is my order {rng.choice(orders)}?")
        elif kind == "orders":
            a, b = rng.sample(orders, 2)
            turns.append(f"Where are my orders {a} and {b}?")
        elif kind == "refund":
            turns.append(f"Please refund order {rng.choice(orders)}.")
        elif kind == "first":
            turns.append(FIRST_ORDER_Q)
        elif kind == "hours":
            turns.append(rng.choice(["What are your opening hours?", "When are you open?"]))
        else:
            turns.append("Thanks!")
    return turns


@dataclass
class Turn:
    """One user turn and what the stack did with it."""

    tenant: str
    user: str
    thread: str
    index: int
    mode: str
    question: str
    asked_before: list[str]
    new_messages: list[BaseMessage] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def answer(self) -> AIMessage | None:
        for message in reversed(self.new_messages):
            if isinstance(message, AIMessage) and not message.tool_calls:
                return message
        return None

    @property
    def served_from_cache(self) -> list[AIMessage]:
        return [
            m
            for m in self.new_messages
            if isinstance(m, AIMessage) and (m.response_metadata or {}).get("graphthrift_cache")
        ]

    def where(self) -> str:
        return f"{self.tenant}/{self.user}/{self.thread} turn {self.index} ({self.mode})"


def orders_in(question: str) -> list[str]:
    return ORDER_RE.findall(question)


# ---------------------------------------------------------------- the support agent


def support_tools(world: World) -> list[Any]:
    """The order tools: each answers for the run's own tenant and user (its metadata)."""

    @tool
    def lookup_order(order_id: str, config: RunnableConfig) -> str:
        """The status and delivery date of one of the customer's orders."""
        md = config.get("metadata") or {}
        return world.order_status(md["tenant_id"], md["user_id"], order_id)

    @tool
    def refund_order(order_id: str, config: RunnableConfig) -> str:
        """Refund one of the customer's orders."""
        md = config.get("metadata") or {}
        return world.refund(md["tenant_id"], md["user_id"], order_id)

    return [lookup_order, refund_order]


def tenant_prompt(world: World) -> AgentMiddleware[Any, Any, Any]:
    """The run's tenant's system prompt (what the cache key fingerprints)."""

    @dynamic_prompt
    def prompt(request: ModelRequest) -> str:
        return world.system_prompt(get_config()["metadata"]["tenant_id"])

    return prompt


def support_agent(
    world: World,
    model: Any,
    tools: list[Any],
    middleware: list[Any],
    *,
    checkpointer: Any = None,
) -> Any:
    """A ``create_agent`` support agent: the tenant's prompt outermost, then ``middleware``,
    on ``checkpointer`` (default: its own ``InMemorySaver``)."""
    return create_agent(
        model,
        tools,
        middleware=[tenant_prompt(world), *middleware],
        checkpointer=InMemorySaver() if checkpointer is None else checkpointer,
    )


# ---------------------------------------------------------------- driving conversations

MODES = ("invoke", "stream", "astream")


@dataclass
class Plan:
    """One thread's conversation and how it is driven (``MODES``)."""

    tenant: str
    user: str
    thread: str
    mode: str
    questions: list[str]


def plan_threads(
    world: World, threads: int, suffix: str, questions: Callable[[], list[str]]
) -> list[Plan]:
    """``threads`` threads per user, modes in turn, each with ``questions()``'s conversation."""
    plans: list[Plan] = []
    for tenant in world.tenants:
        for user in world.users[tenant]:
            for t in range(threads):
                mode = MODES[len(plans) % len(MODES)]
                thread = f"{tenant}-{user}-{suffix}{t}"
                plans.append(Plan(tenant, user, thread, mode, questions()))
    return plans


def thread_config(plan: Plan, **extra: Any) -> dict[str, Any]:
    """The run config of a plan's turns: its thread, tenant, user and feature tags."""
    return {
        "configurable": {"thread_id": plan.thread},
        "metadata": {"tenant_id": plan.tenant, "user_id": plan.user, "feature": "support"},
        **extra,
    }


@dataclass
class ScenarioRun:
    """Everything one scenario run produced."""

    world: World
    log: Any
    ledger: Any
    budget: Any
    turns: list[Turn] = field(default_factory=list)


def _message_count(state: Any) -> int:
    return len(state.values.get("messages", []))


class Driver:
    """Plays plans through a compiled graph and records each turn in ``run.turns``: the
    sync plans one after the other in a worker thread, while the async ones run
    concurrently on the loop (context variables must keep the runs apart)."""

    def __init__(
        self, graph: Any, run: ScenarioRun, config: Callable[[Plan], dict[str, Any]]
    ) -> None:
        self.graph = graph
        self.run = run
        self.config = config

    def turn_config(self, plan: Plan, i: int, config: dict[str, Any]) -> dict[str, Any]:
        """The config turn ``i`` runs with (a subclass adds per-run tags): the thread's."""
        return config

    def _begin(self, plan: Plan, i: int, asked: list[str], before: int) -> tuple[Turn, int, int]:
        turn = Turn(plan.tenant, plan.user, plan.thread, i, plan.mode, plan.questions[i], asked)
        return turn, before, len(self.run.log.of(thread_id=plan.thread))

    def _end(self, started: tuple[Turn, int, int], messages: list[BaseMessage]) -> list[str]:
        turn, before, n_calls = started
        turn.new_messages = messages[before:]
        turn.calls = self.run.log.of(thread_id=turn.thread)[n_calls:]
        self.run.turns.append(turn)
        return [*turn.asked_before, *orders_in(turn.question)]

    def _play_sync(self, plan: Plan) -> None:
        config, asked = self.config(plan), []
        for i, question in enumerate(plan.questions):
            started = self._begin(plan, i, asked, _message_count(self.graph.get_state(config)))
            inputs = {"messages": [{"role": "user", "content": question}]}
            this_turn = self.turn_config(plan, i, config)
            try:
                if plan.mode == "invoke":
                    self.graph.invoke(inputs, this_turn)
                else:
                    for _chunk in self.graph.stream(inputs, this_turn, stream_mode="messages"):
                        pass
            except Exception as exc:  # recorded; each scenario's completion test reports it
                started[0].error = repr(exc)
            asked = self._end(started, self.graph.get_state(config).values.get("messages", []))

    async def _play_async(self, plan: Plan) -> None:
        config, asked = self.config(plan), []
        for i, question in enumerate(plan.questions):
            state = await self.graph.aget_state(config)
            started = self._begin(plan, i, asked, _message_count(state))
            this_turn = self.turn_config(plan, i, config)
            try:
                async for _chunk in self.graph.astream(
                    {"messages": [{"role": "user", "content": question}]}, this_turn
                ):
                    pass
            except Exception as exc:
                started[0].error = repr(exc)
            state = await self.graph.aget_state(config)
            asked = self._end(started, state.values.get("messages", []))

    async def play(self, plans: list[Plan]) -> None:
        def play_all_sync() -> None:
            for plan in plans:
                if plan.mode != "astream":
                    self._play_sync(plan)

        await asyncio.gather(
            asyncio.to_thread(play_all_sync),
            *(self._play_async(p) for p in plans if p.mode == "astream"),
        )


async def play_scenario(
    graph: Any,
    run: ScenarioRun,
    plans: list[Plan],
    config: Callable[[Plan], dict[str, Any]] = thread_config,
) -> ScenarioRun:
    """Play ``plans`` through ``graph`` into ``run``, then flush its ledger for the checks."""
    await Driver(graph, run, config).play(plans)
    run.ledger.flush()
    return run


def by_thread(turns: Iterable[Turn]) -> dict[str, list[Turn]]:
    out: dict[str, list[Turn]] = {}
    for t in turns:
        out.setdefault(t.thread, []).append(t)
    return out


# ---------------------------------------------------------------- invariants


def written_by_graphthrift(message: BaseMessage) -> bool:
    """A message graphthrift produced itself: a budget stop, a refused tool call."""
    meta = getattr(message, "response_metadata", None) or {}
    text = _text(message)
    return "graphthrift_budget" in meta or text.startswith(BUDGET_STOP) or TOOL_REFUSED in text


def boundary_violations(turn: Turn, world: World) -> list[str]:
    """Facts in the answer that belong to another tenant or user (tool-dependent answers,
    per-tenant FAQ answers)."""
    answer = turn.answer
    if answer is None:
        return []
    text = _text(answer)
    out = []
    for user, tenant in ACCOUNT_RE.findall(text):
        if (user, tenant) != (turn.user, turn.tenant):
            out.append(f"{turn.where()}: {turn.question!r} answered with {user}@{tenant}'s data")
    for tenant in world.tenants:
        if tenant != turn.tenant and tenant in text:
            out.append(f"{turn.where()}: {turn.question!r} answered with {tenant}'s facts: {text}")
    if (m := re.search(r"On (\w+) the", text)) and turn.question.endswith(
        f"{m.group(1)}?"
    ) is False:
        out.append(f"{turn.where()}: {turn.question!r} answered for {m.group(1)}: {text}")
    return out


def history_violations(turn: Turn) -> list[str]:
    """A follow-up that depends on the thread's earlier turns must be answered from this
    thread: the first order named must be one this thread asked about, or none."""
    answer = turn.answer
    if answer is None or turn.question != FIRST_ORDER_Q or written_by_graphthrift(answer):
        return []
    text = _text(answer)
    named = ORDER_RE.findall(text)
    if not turn.asked_before:
        if named:
            return [f"{turn.where()}: nothing asked yet in this thread, answered {text!r}"]
        return []
    if named != [turn.asked_before[0]]:
        return [
            f"{turn.where()}: first order in this thread is {turn.asked_before[0]}, "
            f"answered {text!r} (orders asked before: {turn.asked_before}; "
            f"cached: {'graphthrift_cache' in (getattr(answer, 'response_metadata', None) or {})})"
        ]
    return []


def prompt_problems(call: dict[str, Any], question: str) -> list[str]:
    """The latest human turn is in the prompt verbatim (and is its latest human message)."""
    messages: list[BaseMessage] = call["messages"]
    at = latest_human_index(messages)
    if at < 0 or _text(messages[at]).strip() != question:
        last = _text(messages[at]) if at >= 0 else None
        return [f"prompt's latest human message is {last!r}, the user asked {question!r}"]
    return []


def tool_pair_problems(messages: Sequence[BaseMessage]) -> list[str]:
    """Every ToolMessage follows the AIMessage that called it (within its tool block), and
    every tool call of an AIMessage in the prompt has its result."""
    out = []
    open_ids: set[str] = set()
    for i, message in enumerate(messages):
        if isinstance(message, ToolMessage):
            if message.tool_call_id not in open_ids:
                out.append(f"message {i}: ToolMessage {message.tool_call_id} without its call")
            open_ids.discard(message.tool_call_id)
            continue
        if open_ids:
            out.append(f"message {i}: tool calls {sorted(open_ids)} have no result")
            open_ids = set()
        if isinstance(message, AIMessage) and message.tool_calls:
            open_ids = {str(c.get("id")) for c in message.tool_calls}
    if open_ids:
        out.append(f"prompt ends with unanswered tool calls {sorted(open_ids)}")
    return out


def prompt_problems_of(turns: Iterable[Turn]) -> list[str]:
    """``prompt_problems`` of every model call of every turn, each with where it was."""
    return [
        f"{t.where()} ({c['model']}): {p}"
        for t in turns
        for c in t.calls
        for p in prompt_problems(c, t.question)
    ]


def tool_pair_problems_of(turns: Iterable[Turn]) -> list[str]:
    """``tool_pair_problems`` of every model call's prompt, each with where it was."""
    return [
        f"{t.where()} ({c['model']}): {p}"
        for t in turns
        for c in t.calls
        for p in tool_pair_problems(c["messages"])
    ]


def price(calls: Iterable[dict[str, Any]]) -> float:
    """What the fake providers' usage costs, priced by genai-prices itself."""
    total = 0.0
    for call in calls:
        usage = call["usage"]
        cost = calc_price(
            Usage(input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"]),
            call["model"],
            provider_id="openai",
        )
        total += float(cost.total_price)
    return total


def first(problems: list[str], n: int = 8) -> str:
    return f"{len(problems)} violations, e.g.:\n" + "\n".join(problems[:n])
