"""The mixed agent workload behind ``graphthrift bench`` (the savings stack).

Four segments, built with a fixed seed from the bundled data sets (``bench._data``; a
missing set raises ``DataSetMissing``), or, only when asked with ``sample=True``, from the
package's self-authored synthetic sample (``graphthrift/data/sample_workload.json``):

- ``faq``: banking77 test questions from a handful of intents, asked in a skewed order;
  a share of requests repeat an earlier question word for word, the rest are paraphrases
  (other questions of the same intent). The answer is one per intent, and the bot's system
  prompt is a long support policy, as support bots have.
- ``rag``: xquad_en questions with the 5 chunks a retriever returns (gold paragraph and 4
  of the same article, ``bench.compress.build_cases(..., "multi")``); a quarter are
  two-question multi-hop requests over two articles, labelled hard.
- ``chat``: long support and open-domain conversations (sgd_test with its stated facts,
  topical_chat), replayed turn by turn.
- ``agent``: synthetic tool loops (look up an order, read the refund policy, answer); a
  share of tasks never stop calling tools, the runaway loops budgets exist for.

Every request is registered in a ``graphthrift.sim.Oracle`` with its expected answer.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from graphthrift.bench._data import DataSetMissing, data_dir, data_file, read_set_file
from graphthrift.bench._data_history import Conversation, Turn, load_default_sets
from graphthrift.sim import Expected, Oracle, ToolCallRequest

__all__ = ["AgentTask", "ChatItem", "FaqItem", "RagItem", "Workload", "build_workload"]

SEED = 7
SIZES = {  # segment sizes: --full, the default run, --quick
    "full": {"faq": 240, "faq_intents": 12, "rag": 60, "chat": 60, "agent": 20},
    "default": {"faq": 120, "faq_intents": 8, "rag": 30, "chat": 10, "agent": 10},
    "quick": {"faq": 60, "faq_intents": 6, "rag": 16, "chat": 4, "agent": 6},
}
REPEAT_SHARE = 0.4  # FAQ requests that repeat an earlier question verbatim
MULTIHOP_SHARE = 0.25
RUNAWAY_SHARE = 0.2
RUNAWAY_CALLS = 14


@dataclass(frozen=True, slots=True)
class FaqItem:
    id: str
    text: str
    intent: str
    answer: str


@dataclass(frozen=True, slots=True)
class RagItem:
    id: str
    question: str
    chunks: tuple[str, ...]
    answers: tuple[tuple[str, ...], ...]  # one group per sub-question
    hard: bool


@dataclass(frozen=True, slots=True)
class ChatItem:
    id: str
    conversation: Conversation


@dataclass(frozen=True, slots=True)
class AgentTask:
    id: str
    request: str
    answer: str
    runaway: bool


@dataclass
class Workload:
    """The requests of every segment, their oracle and the texts the graphs need."""

    faq_system: str
    rag_system: str
    chat_system: str
    agent_system: str
    tool_texts: dict[str, str]
    faq: list[FaqItem] = field(default_factory=list)
    rag: list[RagItem] = field(default_factory=list)
    chat: list[ChatItem] = field(default_factory=list)
    agent: list[AgentTask] = field(default_factory=list)
    oracle: Oracle = field(default_factory=Oracle)
    source: str = ""

    def describe(self) -> dict[str, Any]:
        """What the workload holds, for the JSON."""
        turns = sum(sum(t.role == "user" for t in c.conversation.turns) for c in self.chat)
        texts = Counter(i.text for i in self.faq)
        return {
            "source": self.source,
            "seed": SEED,
            "faq": {
                "requests": len(self.faq),
                "intents": len({i.intent for i in self.faq}),
                "exact_repeats": sum(n - 1 for n in texts.values()),
            },
            "rag": {
                "requests": len(self.rag),
                "multihop_hard": sum(i.hard for i in self.rag),
                "chunks_per_request": 5,
            },
            "chat": {
                "conversations": len(self.chat),
                "by_source": dict(Counter(c.conversation.source for c in self.chat)),
                "user_turns": turns,
            },
            "agent": {
                "tasks": len(self.agent),
                "runaway": sum(t.runaway for t in self.agent),
                "tool_calls_per_task": 3,
                "runaway_tool_calls": RUNAWAY_CALLS,
            },
        }


# -- self-authored texts -----------------------------------------------------------------------

_POLICY_TOPICS = (
    "card delivery",
    "card activation",
    "lost or stolen cards",
    "PIN changes",
    "top-ups",
    "transfers",
    "exchange rates",
    "fees",
    "refunds",
    "identity checks",
    "account closure",
    "disputes",
    "cash withdrawals",
    "direct debits",
    "virtual cards",
    "limits",
)


def _policy(name: str, paragraphs: int) -> str:
    """A long, plausible, self-authored policy text (the system prompt of a support bot)."""
    rng = random.Random(name)
    lines = [f"You are the {name} assistant. Follow this policy exactly."]
    for i in range(paragraphs):
        topic = _POLICY_TOPICS[i % len(_POLICY_TOPICS)]
        days = rng.randint(2, 10)
        fee = rng.randint(1, 9)
        lines.append(
            f"Section {i + 1}, {topic}: explain the steps in the app before anything else. "
            f"Requests about {topic} are handled within {days} working days; a fee of "
            f"{fee} units may apply and must be stated. Never ask for a full card number or "
            f"a password. Offer to escalate to a human agent when the customer asks twice, "
            f"and summarise what was agreed at the end of the conversation."
        )
    return "\n".join(lines)


def _intent_answer(intent: str) -> str:
    words = intent.replace("_", " ")
    return (
        f"About {words}: open the app, go to Help, choose '{words}' and follow the steps shown. "
        "If that does not solve it, reply here and I will pass you to a colleague."
    )


_TOOL_TEXTS = {
    "get_order": "\n".join(
        f"line {i}: item SKU-{1000 + i}, qty {1 + i % 3}, status shipped, carrier parcel "
        f"service, tracking TRK{7_000_000 + i * 37}, warehouse aisle {i % 12}"
        for i in range(40)
    ),
    "refund_policy": _policy("refunds desk", 10),
    "search_orders": "\n".join(
        f"order ORD-{5000 + i}: placed day {i}, total {20 + i * 3}.00, status "
        f"{'delivered' if i % 4 else 'in transit'}"
        for i in range(30)
    ),
}


# -- loaders -----------------------------------------------------------------------------------


def _sample_file() -> dict[str, Any]:
    raw = resources.files("graphthrift").joinpath("data/sample_workload.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(raw)
    return data


def _faq_pool(base: Path | None) -> dict[str, list[str]]:
    if base is not None:
        pool: dict[str, list[str]] = {}
        for row in csv.DictReader(io.StringIO(read_set_file("banking77", "test.csv", base))):
            pool.setdefault(row["category"], []).append(row["text"])
        return pool
    return {k: list(v) for k, v in _sample_file()["faq"].items()}


def _rag_articles(base: Path | None) -> list[tuple[str, list[tuple[str, str, list[str]]]]]:
    from graphthrift.bench.compress import load_squad

    if base is not None:
        try:
            return load_squad(data_file("xquad_en", "xquad.en.json", base))
        except ValueError as exc:
            raise DataSetMissing("xquad_en", base / "xquad_en", f"is damaged ({exc})") from None
    articles = []
    for article in _sample_file()["rag"]:
        items = [
            (p["context"], q["question"], q["answers"])
            for p in article["paragraphs"]
            for q in p["qas"]
        ]
        articles.append((article["title"], items))
    return articles


def _conversations(base: Path | None, n: int, rng: random.Random) -> list[Conversation]:
    sets: dict[str, list[Conversation]] = {}
    if base is not None:
        problems: list[DataSetMissing] = []
        sets = load_default_sets(base, problems=problems)
        if problems:  # the chat segment mixes both sets: each one must be there
            raise problems[0]
    if not sets:
        convs = []
        for i, c in enumerate(_sample_file()["chat"]):
            turns = tuple(
                Turn(t["role"], t["content"], tuple(t.get("facts", ()))) for t in c["turns"]
            )
            convs.append(Conversation(f"sample-{i}", "sample", turns, any(t.facts for t in turns)))
        sets = {"sample": convs}
    out: list[Conversation] = []
    names = sorted(sets)
    per = {name: n // len(names) + (i < n % len(names)) for i, name in enumerate(names)}
    for name in names:
        pool = [c for c in sets[name] if len(c.turns) >= 20] or sets[name]
        out += rng.sample(pool, min(per[name], len(pool)))
    return out


# -- building ----------------------------------------------------------------------------------


def build_workload(
    quick: bool = False, limit: int | None = None, *, size: str | None = None, sample: bool = False
) -> Workload:
    """The workload of ``size`` (``quick``, ``default`` or ``full``; ``quick=True`` means
    ``quick``); ``limit`` caps every segment. Reads the data folder and raises
    ``DataSetMissing`` for a missing set, unless ``sample`` asks for the synthetic sample."""
    sizes = dict(SIZES[size or ("quick" if quick else "default")])
    if limit is not None:
        sizes = {k: max(1, min(v, limit)) for k, v in sizes.items()}
        sizes["faq_intents"] = max(2, min(SIZES["quick"]["faq_intents"], sizes["faq_intents"]))
    rng = random.Random(SEED)
    base = None if sample else data_dir()
    if base is None and not sample:
        raise DataSetMissing("banking77", None, "not found (no data folder)")
    work = Workload(
        faq_system=_policy("customer support", 16),
        rag_system="Answer the question using only the context below. Quote figures exactly.",
        chat_system="You are a helpful assistant. Keep answers short and friendly.",
        agent_system=_policy("order support", 6)
        + "\nUse the tools to look things up before answering.",
        tool_texts=dict(_TOOL_TEXTS),
        source=str(base) if base is not None else "bundled synthetic sample",
    )
    _build_faq(work, sizes, rng, base)
    _build_rag(work, sizes["rag"], rng, base)
    for i, conv in enumerate(_conversations(base, sizes["chat"], rng)):
        item = ChatItem(f"chat-{i}", conv)
        work.chat.append(item)
        previous = ""
        for j, turn in enumerate(conv.turns):
            if turn.role == "user":
                nxt = conv.turns[j + 1] if j + 1 < len(conv.turns) else None
                answer = nxt.content if nxt is not None and nxt.role == "assistant" else "OK."
                work.oracle.add(
                    turn.content, Expected(answer, item_id=f"{item.id}-{j}"), previous=previous
                )
            previous = turn.content
    _build_agent(work, sizes["agent"], rng)
    return work


def _build_faq(
    work: Workload, sizes: dict[str, int], rng: random.Random, base: Path | None
) -> None:
    pool = _faq_pool(base)
    intents = sorted(i for i, texts in pool.items() if len(texts) >= 3)
    chosen = rng.sample(intents, min(sizes["faq_intents"], len(intents)))
    weights = [1 / (r + 1) for r in range(len(chosen))]  # Zipf-like popularity
    asked: dict[str, list[str]] = {}
    fresh = {i: rng.sample(pool[i], len(pool[i])) for i in chosen}
    for n in range(sizes["faq"]):
        intent = rng.choices(chosen, weights)[0]
        seen = asked.setdefault(intent, [])
        if seen and (rng.random() < REPEAT_SHARE or not fresh[intent]):
            text = rng.choice(seen)
        else:
            text = fresh[intent].pop()
            seen.append(text)
        item = FaqItem(f"faq-{n}", text, intent, _intent_answer(intent))
        work.faq.append(item)
        work.oracle.add(text, Expected(item.answer, item_id=f"faq:{intent}"))


def _build_rag(work: Workload, n: int, rng: random.Random, base: Path | None) -> None:
    from graphthrift.bench.compress import build_cases

    cases = build_cases(_rag_articles(base), "multi", SEED)
    rng.shuffle(cases)
    hard_n = round(n * MULTIHOP_SHARE)
    used = 0
    for k in range(n):
        if k < n - hard_n:
            case = cases[used]
            used += 1
            item = RagItem(
                f"rag-{k}", case.question, tuple(case.chunks), (tuple(case.answers),), False
            )
        else:
            a, b = cases[used], cases[used + 1]
            used += 2
            gold_a = next(c for c in a.chunks if any(x in c for x in a.answers))
            gold_b = next(c for c in b.chunks if any(x in c for x in b.answers))
            others = [c for c in a.chunks if c != gold_a][:2] + [
                c for c in b.chunks if c != gold_b
            ][:1]
            chunks = [gold_a, gold_b, *others]
            rng.shuffle(chunks)
            question = (
                f"Answer both, using the two passages: (1) {a.question} (2) {b.question} "
                "Then explain how the two answers relate and compare them step by step."
            )
            item = RagItem(
                f"rag-{k}", question, tuple(chunks), (tuple(a.answers), tuple(b.answers)), True
            )
        answer = " / ".join(group[0] for group in item.answers)
        work.rag.append(item)
        work.oracle.add(
            item.question,
            Expected(answer, hard=item.hard, evidence=item.answers, item_id=item.id),
        )


def _build_agent(work: Workload, n: int, rng: random.Random) -> None:
    for k in range(n):
        order = f"ORD-{5000 + rng.randint(0, 29)}"
        runaway = k % round(1 / RUNAWAY_SHARE) == round(1 / RUNAWAY_SHARE) - 1
        request = (
            f"Task {k}: my order {order} arrived damaged. Find it, check whether it can be "
            "refunded under the policy, and tell me what to do."
        )
        plan = [
            ToolCallRequest("search_orders", {"customer": f"C-{k}"}),
            ToolCallRequest("get_order", {"order_id": order}),
            ToolCallRequest("refund_policy", {}),
        ]
        if runaway:
            plan += [
                ToolCallRequest("search_orders", {"customer": f"C-{k}", "page": p})
                for p in range(2, RUNAWAY_CALLS - 1)
            ]
        answer = f"Order {order} can be refunded: request it in the app under Orders > Refund."
        work.agent.append(AgentTask(f"agent-{k}", request, answer, runaway))
        work.oracle.add(request, Expected(answer, tool_plan=tuple(plan), item_id=f"agent-{k}"))
