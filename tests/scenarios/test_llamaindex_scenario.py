"""Composed scenario: a LlamaIndex query engine and chat engine with graphthrift's components.

Per tenant, one retriever over the tenant's documents feeds

- a query engine: ``CachedQueryEngine(RetrieverQueryEngine(retriever, llm=BudgetedLLM(...),
  node_postprocessors=[CompressionPostprocessor(...)]), cache)``: the cache outermost, so
  a hit skips retrieval, compression and the model;
- a chat engine per user and thread: ``ContextChatEngine(retriever, llm=BudgetedLLM(...),
  memory=PrunedChatMemory(...), node_postprocessors=[CompressionPostprocessor(...)])``.

Every call runs inside ``graphthrift.llamaindex.tags(tenant_id=..., thread_id=...)`` with
``instrument(ledger)`` (the ``CostEventHandler``) recording each LLM call. Seeded queries
and chats over ``query``/``aquery`` and ``chat``/``achat``; the run happens once per
module and each test checks one invariant family.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_asyncio
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.chat_engine import ContextChatEngine
from llama_index.core.llms import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseGen,
    CustomLLM,
    LLMMetadata,
)
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from scenario_kit import CHEAP, HEDGE, World, first, price

from graphthrift import Budget, Ledger, SemanticCache
from graphthrift.llamaindex import (
    BudgetedLLM,
    CachedQueryEngine,
    CompressionPostprocessor,
    PrunedChatMemory,
    instrument,
    tags,
    uninstrument,
)

from fakes import CallLog, fake_usage_text

QUERIES = 10
CHAT_TURNS = 14
WORDS = ("falcon", "harbor", "juniper", "quartz")
CODE_Q = "What is my code word?"


def _messages_to_prompt(messages: Sequence[ChatMessage]) -> str:
    """Keep the chat structure through ``CustomLLM.chat`` -> ``complete``."""
    return json.dumps([{"role": str(m.role.value), "content": m.content or ""} for m in messages])


class RecordingLlamaLLM(CustomLLM):
    """A LlamaIndex LLM that answers from its prompt, reports OpenAI-style usage in ``raw``
    and records each prompt with the tags of the call in ``log``."""

    model: str = CHEAP
    log: Any = None

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            model_name=self.model, context_window=16_000, num_output=200, is_chat_model=True
        )

    def _answer(self, prompt: str) -> CompletionResponse:
        from graphthrift.llamaindex.instrumentation import _TAGS

        try:
            chat = json.loads(prompt)
        except ValueError:
            chat = None
        if isinstance(chat, list):
            context = " ".join(m["content"] for m in chat if m["role"] == "system")
            humans = [m["content"] for m in chat if m["role"] == "user"]
            question = humans[-1] if humans else ""
            earlier = humans[:-1]
            if found := re.search(r"Query: (.*?)\nAnswer:", question, flags=re.S):
                context, question = question, found.group(1).strip()
        else:
            context = prompt
            found = re.search(r"Query: (.*?)\nAnswer:", prompt, flags=re.S)
            question, earlier = (found.group(1).strip() if found else ""), []
        text = li_reply(context, question, earlier)
        usage = fake_usage_text(prompt, text)
        self.log.add(
            {
                "model": self.model,
                "prompt": prompt,
                "question": question,
                "metadata": dict(_TAGS.get() or {}),
                "usage": {
                    "input_tokens": usage["prompt_tokens"],
                    "output_tokens": usage["completion_tokens"],
                    "total_tokens": usage["total_tokens"],
                },
            }
        )
        return CompletionResponse(text=text, raw={"usage": usage, "model": self.model})

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._answer(prompt)

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        response = self._answer(prompt)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=response.text, delta=response.text, raw=response.raw)

        return gen()


# CustomLLM.complete must carry LlamaIndex's instrumentation like every LLM's does
from llama_index.core.llms.callbacks import llm_completion_callback  # noqa: E402

RecordingLlamaLLM.complete = llm_completion_callback()(RecordingLlamaLLM.complete)  # type: ignore[method-assign]
RecordingLlamaLLM.stream_complete = llm_completion_callback()(  # type: ignore[method-assign]
    RecordingLlamaLLM.stream_complete
)


def li_reply(context: str, question: str, earlier: list[str]) -> str:
    if question in ("What is the refund window?", "How long do I have to return an item?"):
        if m := re.search(r"The refund window at (\S+) is (\d+ days)", context):
            return f"At {m.group(1)} the refund window is {m.group(2)}."
        return HEDGE
    if question in ("How fast is standard shipping?", "When do standard parcels arrive?"):
        if m := re.search(r"Standard parcels at (\S+) arrive within (\d+)", context):
            return f"At {m.group(1)} standard parcels arrive within {m.group(2)} days."
        return HEDGE
    if m := re.fullmatch(r"Remember my code word (\w+)\.", question):
        return f"Noted: {m.group(1)}."
    if question == CODE_Q:
        words = re.findall(r"code word (\w+)\.", " ".join(earlier))
        return f"Your code word is {words[-1]}." if words else "You have not told me a code word."
    return "I'm sorry, I can't help with that."


class TenantRetriever(BaseRetriever):
    """The tenant's documents (a stand-in for a per-tenant vector index)."""

    def __init__(self, tenant: str, world: World) -> None:
        super().__init__()
        days = 14 if tenant == world.tenants[0] else 30
        ship = 5 if tenant == world.tenants[0] else 3
        self.nodes = [
            TextNode(
                text=f"Refund policy. The refund window at {tenant} is {days} days from "
                "delivery. Refunds go back to the original card. Gift cards are not "
                "refundable. Our warehouse staff inspect every returned parcel.",
                id_=f"{tenant}-refunds",
            ),
            TextNode(
                text=f"Shipping. Standard parcels at {tenant} arrive within {ship} business "
                "days. Express parcels arrive the next day when ordered before noon.",
                id_=f"{tenant}-shipping",
            ),
        ]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [NodeWithScore(node=n, score=1.0) for n in self.nodes]


class Run:
    def __init__(self, world: World, log: CallLog, ledger: Ledger, budget: Budget) -> None:
        self.world, self.log, self.ledger, self.budget = world, log, ledger, budget
        self.queries: list[dict[str, Any]] = []
        self.chats: list[dict[str, Any]] = []


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def li_run(store: Any) -> AsyncIterator[Run]:
    world = World.make(n_users=2)
    log = CallLog()
    ledger = Ledger(store, flush_interval=0.05)
    budget = Budget(store, max_tokens={"tenant": 200_000}, max_output_tokens=200)
    cache = SemanticCache(store, namespace=f"li-{world.tenants[0]}", ledger=ledger, timeout=5)
    handler = instrument(ledger, feature="li")
    run = Run(world, log, ledger, budget)
    rng = random.Random(2026)
    llm = RecordingLlamaLLM(model=CHEAP, log=log, messages_to_prompt=_messages_to_prompt)

    def budgeted(tenant: str) -> BudgetedLLM:
        return BudgetedLLM(llm=llm, budget=budget, tags={"tenant_id": tenant})

    def compression() -> CompressionPostprocessor:
        return CompressionPostprocessor(
            target_ratio=0.6, model=CHEAP, embedder=False, ledger=ledger
        )

    engines = {
        t: CachedQueryEngine(
            RetrieverQueryEngine.from_args(
                TenantRetriever(t, world), llm=budgeted(t), node_postprocessors=[compression()]
            ),
            cache,
            model=CHEAP,
        )
        for t in world.tenants
    }
    questions = [
        "What is the refund window?",
        "How long do I have to return an item?",
        "How fast is standard shipping?",
        "When do standard parcels arrive?",
    ]
    try:
        for i in range(QUERIES * len(world.tenants)):
            tenant = world.tenants[rng.randrange(2)]
            question = rng.choice(questions)
            n_calls = len(log.calls)
            with tags(tenant_id=tenant, thread_id=f"q-{tenant}-{i}"):
                if i % 2:
                    response = await engines[tenant].aquery(question)
                else:
                    response = await asyncio.to_thread(engines[tenant].query, question)
            run.queries.append(
                {
                    "tenant": tenant,
                    "question": question,
                    "answer": str(response),
                    "hit": bool((response.metadata or {}).get("graphthrift_cache")),
                    "calls": log.calls[n_calls:],
                }
            )

        async def chat_thread(tenant: str, user: str, seed: int) -> None:
            thread = f"chat-{tenant}-{user}-{uuid.uuid4().hex[:4]}"
            memory = PrunedChatMemory.from_defaults(max_tokens=300, model=CHEAP)
            engine = ContextChatEngine.from_defaults(
                TenantRetriever(tenant, world),
                llm=budgeted(tenant),
                memory=memory,
                node_postprocessors=[compression()],
                system_prompt=f"You are the assistant of {tenant}.",
            )
            local = random.Random(seed)
            said: list[str] = []
            for turn in range(CHAT_TURNS):
                kind = local.choice(["remember", "code", "refund", "ship"])
                if kind == "remember":
                    question = f"Remember my code word {local.choice(WORDS)}."
                elif kind == "code":
                    question = CODE_Q
                else:
                    question = local.choice(questions)
                with tags(tenant_id=tenant, thread_id=thread):
                    n = len(log.of(thread_id=thread))
                    if turn % 2:
                        response = await engine.achat(question)
                    else:
                        response = await asyncio.to_thread(engine.chat, question)
                run.chats.append(
                    {
                        "tenant": tenant,
                        "user": user,
                        "thread": thread,
                        "question": question,
                        "answer": str(response),
                        "said": list(said),
                        "calls": log.of(thread_id=thread)[n:],
                    }
                )
                said += re.findall(r"code word (\w+)\.", question)

        await asyncio.gather(
            *(
                chat_thread(t, u, i)
                for i, (t, u) in enumerate((t, u) for t in world.tenants for u in world.users[t])
            )
        )
    finally:
        cache.flush()
        ledger.flush()
        uninstrument(handler)
    yield run
    ledger.close()


# ---------------------------------------------------------------- invariants, per family


def test_query_answers_stay_with_their_tenant(li_run: Run) -> None:
    problems = [
        f"{q['tenant']}: {q['question']!r} answered {q['answer']!r}"
        for q in li_run.queries
        for other in li_run.world.tenants
        if other != q["tenant"] and other in q["answer"]
    ]
    assert not problems, first(problems)
    # A model answer names its own tenant's facts, or hedges when the compressed context
    # lost them (a quality loss the compression bench measures, not a leak): hedges stay rare.
    answered = [q for q in li_run.queries if not q["hit"]]
    missed = [q for q in answered if q["tenant"] not in q["answer"] and q["answer"] != HEDGE]
    assert not missed, first(
        [f"{q['tenant']}: {q['question']!r} -> {q['answer']!r}" for q in missed]
    )
    hedged = [q for q in answered if q["answer"] == HEDGE]
    assert len(hedged) <= 0.1 * len(answered), first([q["question"] for q in hedged])


def test_cache_hits_are_booked_to_their_tenant_with_their_saving(li_run: Run) -> None:
    problems = []
    for tenant in li_run.world.tenants:
        served = sum(1 for q in li_run.queries if q["tenant"] == tenant and q["hit"])
        rows = li_run.ledger.records(tenant_id=tenant, kind="cache_hit")
        if len(rows) != served:
            problems.append(f"{tenant}: {served} hits served, {len(rows)} cache_hit rows")
        if any(not (r["saved_usd"] or 0) > 0 for r in rows):
            problems.append(f"{tenant}: a cache_hit row saved nothing")
    assert not problems, first(problems)
    assert any(q["hit"] for q in li_run.queries)


def test_a_cache_hit_calls_no_model(li_run: Run) -> None:
    problems = [
        f"{q['question']!r}: hit, yet {len(q['calls'])} calls"
        for q in li_run.queries
        if q["hit"] and q["calls"]
    ]
    assert not problems, first(problems)


def test_compression_rows_carry_the_tenant(li_run: Run) -> None:
    untagged = li_run.ledger.records(kind="compression", tenant_id=None)
    ours = [
        r
        for r in li_run.ledger.records(kind="compression")
        if r["tenant_id"] in li_run.world.tenants
    ]
    assert ours, f"{len(untagged)} compression rows without a tenant"
    model_turns = sum(1 for q in li_run.queries if not q["hit"]) + len(li_run.chats)
    assert len(ours) == model_turns  # one per model turn, none on a cache hit


def test_chat_answers_stay_in_their_thread(li_run: Run) -> None:
    """A code word named in an answer must be one this thread was told (pruning may lose
    it, which is a quality loss; naming another thread's word is a leak)."""
    problems = []
    for c in li_run.chats:
        named = re.findall(r"code word is (\w+)\.", c["answer"])
        if c["question"] == CODE_Q and named and named[0] not in c["said"]:
            problems.append(f"{c['thread']}: told {c['said']}, answered {c['answer']!r}")
        for other in li_run.world.tenants:
            if other != c["tenant"] and other in c["answer"]:
                problems.append(f"{c['thread']}: {other}'s facts in {c['answer']!r}")
    assert not problems, first(problems)
    assert any(re.search(r"code word is", c["answer"]) for c in li_run.chats)


def test_latest_human_turn_is_in_every_chat_prompt(li_run: Run) -> None:
    problems = [
        f"{c['thread']}: asked {c['question']!r}, the prompt's latest user turn is {call['question']!r}"
        for c in li_run.chats
        for call in c["calls"]
        if call["question"] != c["question"]
    ]
    assert not problems, first(problems)
    assert all(c["calls"] for c in li_run.chats)


def test_every_reservation_settles_at_the_usage_reported(li_run: Run) -> None:
    for tenant in li_run.world.tenants:
        row = li_run.budget.usage({"tenant_id": tenant})["tenant"]
        assert row["reserved_tokens"] == 0, row
        used = sum(
            c["usage"]["total_tokens"]
            for c in li_run.log.calls
            if c["metadata"].get("tenant_id") == tenant
        )
        assert row["spent_tokens"] == used, (tenant, row["spent_tokens"], used)


def test_ledger_cost_is_the_providers_usage_priced_by_genai_prices(li_run: Run) -> None:
    for tenant in li_run.world.tenants:
        calls = li_run.log.of(tenant_id=tenant)
        rows = li_run.ledger.records(tenant_id=tenant, kind="llm")
        assert len(rows) == len(calls) > 0, (tenant, len(rows), len(calls))
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(price(calls), abs=1e-6)
