"""``graphthrift bench --traffic FILE``: what each layer would have saved on your own traffic.

Long because: one replay of the user's logged traffic runs every layer over the same
requests, cumulatively, so their savings add up without double counting.

The file is logged OpenAI chat-completions requests, one JSON object a line (format in
``bench._traffic_read`` and docs/benchmarks.md). The requests are replayed in file order
through the layers, cumulatively, as ``graphthrift bench stack`` adds them: exact cache,
semantic cache, history pruning, context compression, routing, budgets. No model is
called. Each step books one ledger record per request that would still reach the provider
(``run_id=replay:<step>``, with the request's tenant_id, feature, thread_id and model), the
ledger prices it with genai-prices at that model, and the step's cost is the ledger's
report. ``saved_fraction = 1 - cost_step / cost_baseline``.

What each layer does here, and the quality proxy it reports without a model:

- The baseline is the traffic as logged, with the provider's own prompt cache: the logged
  ``cached_tokens`` where the usage has them, else a simulated prefix cache (1,024+ common
  tokens, 128-token steps, per model). Every step gets the same provider cache, so no
  saving it would have given anyway is claimed.
- exact / semantic cache: single-turn requests only (one user message, no assistant turn),
  keyed as ``graphthrift.cache.cache`` keys them (latest user message, system prompt fingerprint,
  tenant, model). Multi-turn follow-ups are never served from a cache. Proxy:
  ``answer_agreement``, the token F1 between the cached answer and the answer the provider
  actually gave (needs logged responses).
- history: ``HistoryPruner`` at ``--history-max-tokens`` on every multi-turn request,
  per conversation (``metadata.thread_id``, else the shared prefix: system prompt and first
  user message). Proxies: ``prefix_stability``, and ``literal_retention``: the share of
  numbers, codes and capitalised names from turns no longer sent verbatim that the prompt
  still holds.
- compression: ``ExtractiveCompressor`` at ratio 3 on the retrieved context of a message,
  recognised as the text after a ``Context:``, ``Documents:`` or ``Sources:`` line or inside
  ``<context>``/``<documents>`` tags. Proxy: ``answer_support``, the share of the logged
  answer's literals found in the context that the compressed context keeps.
- routing: ``Router`` (features, sticky per conversation) between each logged model and
  ``--cheap-model`` when that is cheaper. Without a model the cheap answers cannot be
  judged, so escalations are unknown: the saving is an upper bound, and no quality figure.
- budgets: only with ``--run-usd``: a per-conversation limit stops the requests after the
  spend crosses it. Proxy: the conversations stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from graphthrift.bench._common import machine, progress, scratch_store, write_json
from graphthrift.bench._traffic_read import LoggedRequest, TrafficFile, read_traffic
from graphthrift.bench.stack import STEPS

__all__ = ["STEPS", "add_arguments", "read_traffic", "replay", "run"]

SEMANTIC_THRESHOLD = 0.92
HISTORY_MAX_TOKENS = 384  # bench history's default budget
COMPRESS_RATIO = 3.0
MIN_CONTEXT_TOKENS = 200  # shorter contexts are not worth compressing
CHEAP_MODEL = "gpt-4o-mini"
PROVIDER_CACHE_MIN = 1024
PROVIDER_CACHE_STEP = 128
_CONTEXT = re.compile(
    r"(?:^|\n)(?:context|documents|sources)\s*:\s*\n(?P<a>.+)\Z"
    r"|<(?P<tag>context|documents)>(?P<b>.+?)</(?P=tag)>",
    re.IGNORECASE | re.DOTALL,
)
_LITERAL = re.compile(r"\b(?:\d[\d.,:/-]*\d|\d|[A-Z][A-Za-z]*[A-Z0-9][\w-]*|[A-Z][a-z]{2,})\b")
_WORD = re.compile(r"\w+")


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Options of the traffic replay (also accepted by ``graphthrift bench --traffic``)."""
    parser.add_argument("--cheap-model", default=CHEAP_MODEL, help="the routing target")
    parser.add_argument("--threshold", type=float, default=SEMANTIC_THRESHOLD)
    parser.add_argument("--run-usd", type=float, default=None, help="per-conversation budget")
    parser.add_argument("--history-max-tokens", type=int, default=HISTORY_MAX_TOKENS)


# -- measuring ---------------------------------------------------------------------------------


@lru_cache(maxsize=500_000)
def _tokens(role: str, text: str, calls: str) -> int:
    from graphthrift.text import Message, count_message, to_message

    if calls:
        message = to_message({"role": role, "content": text, "tool_calls": _calls(calls)})
    else:
        message = Message(role, text)  # type: ignore[arg-type]
    return count_message(message).tokens


def _calls(blob: str) -> list[dict[str, Any]]:
    import json

    calls: list[dict[str, Any]] = json.loads(blob)
    return calls


def _key(m: dict[str, Any]) -> tuple[str, str, str]:
    import json

    calls = json.dumps(m["tool_calls"], sort_keys=True) if m.get("tool_calls") else ""
    return (m["role"], m["content"], calls)


def _prompt_tokens(keys: Sequence[tuple[str, str, str]]) -> int:
    from graphthrift.text.tokens import TOKENS_REPLY_PRIMING

    return sum(_tokens(*k) for k in keys) + (TOKENS_REPLY_PRIMING if keys else 0)


def _literals(text: str) -> set[str]:
    return {m.group(0).lower() for m in _LITERAL.finditer(text)}


def _f1(a: str, b: str) -> float:
    """Token F1 of two answers (bag of lower-cased words)."""
    wa, wb = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    common = sum((wa & wb).values())
    if not wa or not wb or not common:
        return 0.0
    p, r = common / sum(wa.values()), common / sum(wb.values())
    return 2 * p * r / (p + r)


class _ProviderCache:
    """The provider's automatic prefix cache, at message granularity, per model."""

    def __init__(self, entries: int = 200_000) -> None:
        self.entries = entries
        self.seen: dict[str, OrderedDict[bytes, None]] = {}

    def cached(self, model: str, keys: Sequence[tuple[str, str, str]]) -> int:
        seen = self.seen.setdefault(model, OrderedDict())
        h = hashlib.blake2b(digest_size=12)
        best = total = 0
        for k in keys:
            h.update(repr(k).encode())
            total += _tokens(*k)
            digest = h.copy().digest()
            if digest in seen:
                best = total
                seen.move_to_end(digest)
            else:
                seen[digest] = None
        while len(seen) > self.entries:
            seen.popitem(last=False)
        if best < PROVIDER_CACHE_MIN:
            return 0
        return best // PROVIDER_CACHE_STEP * PROVIDER_CACHE_STEP


# -- what each layer would do to each request -------------------------------------------------


@dataclass
class _Plan:
    """Per request: what every layer would change (computed once, applied per step)."""

    conv: str
    single_turn: bool
    keys: list[tuple[str, str, str]]
    exact_hit: bool = False
    semantic_hit: bool = False
    pruned: list[tuple[str, str, str]] | None = None
    compressed: dict[int, str] = field(default_factory=dict)  # message index -> new content
    cheap: bool = False
    output_tokens: int = 0
    scale: float = 1.0  # logged / counted prompt tokens, applied to changed prompts


class _Conversations:
    """Groups requests into conversations: ``metadata.thread_id`` when logged, else the
    shared message prefix (a request continues the conversation whose previous request's
    messages it starts with; same system prompt and first user message otherwise start a
    new one)."""

    def __init__(self) -> None:
        self.open: dict[str, list[tuple[str, tuple[tuple[str, str, str], ...]]]] = {}
        self.count = 0

    def assign(self, req: LoggedRequest, keys: list[tuple[str, str, str]]) -> tuple[str, str]:
        """(conversation id, how it was found: ``thread_id`` or ``prefix``)."""
        if req.thread_id:
            return f"{req.tenant_id}|thread|{req.thread_id}", "thread_id"
        head = []
        for k in keys:
            head.append(k)
            if k[0] == "user":
                break
        digest = hashlib.blake2b(repr((req.tenant_id, head)).encode(), digest_size=8).hexdigest()
        threads = self.open.setdefault(digest, [])
        mine = tuple(keys)
        for n, (conv, last) in enumerate(threads):
            if len(last) < len(mine) and mine[: len(last)] == last:
                threads[n] = (conv, mine)
                return conv, "prefix"
        self.count += 1
        conv = f"{req.tenant_id}|prefix|{digest}-{self.count}"
        threads.append((conv, mine))
        return conv, "prefix"


def _cache_keys(reqs: list[LoggedRequest], plans: list[_Plan]) -> list[tuple[str, str]]:
    """(scope, normalized question) per request, as graphthrift.cache.cache keys it."""
    from graphthrift.cache import default_key

    keys = []
    for req, plan in zip(reqs, plans, strict=True):
        if not plan.single_turn:
            keys.append(("", ""))
            continue
        query = default_key(list(req.messages))
        keys.append((f"{req.tenant_id}|{req.model}|{query.context}", query.text))
    return keys


def _caches(
    reqs: list[LoggedRequest], plans: list[_Plan], threshold: float, advance: Any
) -> dict[str, Any]:
    """Mark exact and semantic hits; the answer agreement of served hits."""
    import numpy as np

    from graphthrift.cache import normalize_query
    from graphthrift.embed import default_embedder

    keys = _cache_keys(reqs, plans)
    stored: dict[tuple[str, str], int] = {}
    agree: dict[str, list[float]] = {"exact": [], "semantic": []}
    misses: list[int] = []
    for i, (scope, text) in enumerate(keys):
        if not scope:
            continue
        key = (scope, normalize_query(text))
        if key in stored:
            plans[i].exact_hit = True
            first = reqs[stored[key]].answer
            if first is not None and reqs[i].answer is not None:
                agree["exact"].append(_f1(first, reqs[i].answer or ""))
        else:
            stored[key] = i
            misses.append(i)
    advance(len(reqs) * 0.1)
    # semantic: each miss looks up the earlier misses (the entries) of its scope
    by_scope: dict[str, list[int]] = {}
    for i in misses:
        by_scope.setdefault(keys[i][0], []).append(i)
    embedder = default_embedder()
    sims_served: list[float] = []
    unique = list(dict.fromkeys(keys[i][1] for i in misses))
    vectors: dict[str, Any] = {}
    for start in range(0, len(unique), 256):
        chunk = unique[start : start + 256]
        vectors.update(zip(chunk, embedder.embed(chunk), strict=True))
        advance(len(chunk) / max(1, len(unique)) * len(reqs) * 0.3)
    for members in by_scope.values():
        if len(members) < 2:
            continue
        matrix = np.asarray([vectors[keys[i][1]] for i in members], dtype=np.float32)
        stored_mask = np.ones(len(members), dtype=bool)  # a served query stores no entry
        for block in range(0, len(members), 512):
            rows = matrix[block : block + 512]
            sims = rows @ matrix.T
            for r in range(rows.shape[0]):
                k = block + r
                if k == 0:
                    continue
                earlier = np.where(stored_mask[:k], sims[r, :k], -1.0)
                best = int(earlier.argmax())
                if earlier[best] >= threshold:
                    i = members[k]
                    plans[i].semantic_hit = True
                    stored_mask[k] = False
                    sims_served.append(float(earlier[best]))
                    first = reqs[members[best]].answer
                    if first is not None and reqs[i].answer is not None:
                        agree["semantic"].append(_f1(first, reqs[i].answer or ""))
    advance(len(reqs) * 0.1)
    return {
        "agreement": agree,
        "similarity": sims_served,
        "embedder": getattr(embedder, "model_id", type(embedder).__name__),
    }


def _history(
    reqs: list[LoggedRequest], plans: list[_Plan], max_tokens: int, advance: Any
) -> dict[str, Any]:
    """Prune every multi-turn request per conversation; stability and literal retention."""
    from graphthrift.history import HistoryPruner

    pruner = HistoryPruner(max_tokens=max_tokens)
    states: dict[str, Any] = {}
    previous: dict[str, list[tuple[str, str, str]]] = {}
    stable = turns = kept = literals = 0
    for req, plan in zip(reqs, plans, strict=True):
        advance(0.3)
        if plan.single_turn:
            continue
        result = pruner.prune(list(req.messages), states.get(plan.conv))
        states[plan.conv] = result.state
        sent = [_key({"role": m.role, "content": m.text}) for m in result.messages]
        if result.tokens_out < result.tokens_in:
            plan.pruned = sent
        prompt = plan.pruned or plan.keys
        before = previous.get(plan.conv)
        if before is not None:
            turns += 1
            stable += prompt[: len(before)] == before
        previous[plan.conv] = prompt
        if plan.pruned is not None:
            verbatim = {k[1] for k in sent}
            text = "\n".join(k[1] for k in sent).lower()
            for m in req.messages[:-1]:
                if m["content"] in verbatim:
                    continue
                for lit in _literals(m["content"]):
                    literals += 1
                    kept += lit in text
    return {
        "prefix_stability": round(stable / turns, 4) if turns else None,
        "literal_retention": round(kept / literals, 4) if literals else None,
        "literals_checked": literals,
    }


def _context(text: str) -> tuple[int, int] | None:
    """(start, end) of the retrieved context inside a message, if it has one."""
    match = _CONTEXT.search(text)
    if match is None:
        return None
    group = "a" if match.group("a") is not None else "b"
    return match.start(group), match.end(group)


def _compression(reqs: list[LoggedRequest], plans: list[_Plan], advance: Any) -> dict[str, Any]:
    """Compress the retrieved context of each request; how much of the answer it keeps."""
    from graphthrift.compress import ExtractiveCompressor

    compressor = ExtractiveCompressor(target_ratio=1 / COMPRESS_RATIO)
    memo: dict[tuple[str, str], str] = {}
    original = kept_tokens = 0
    supported = found = 0
    for req, plan in zip(reqs, plans, strict=True):
        advance(0.3)
        question = next((m["content"] for m in reversed(req.messages) if m["role"] == "user"), "")
        for index, m in enumerate(req.messages):
            span = _context(m["content"])
            if span is None or (
                m["content"] == question and index == len(req.messages) - 1 and span[0] == 0
            ):
                continue
            context = m["content"][span[0] : span[1]]
            if _tokens("user", context, "") < MIN_CONTEXT_TOKENS:
                continue
            key = (question, context)
            if key not in memo:
                chunks = [c for c in re.split(r"\n\s*\n", context) if c.strip()]
                result = compressor.compress(question, chunks)
                memo[key] = "\n\n".join(t for t in result.texts if t)
                original += result.original_tokens
                kept_tokens += result.kept_tokens
            small = memo[key]
            plan.compressed[index] = m["content"][: span[0]] + small + m["content"][span[1] :]
            if req.answer:
                for lit in _literals(req.answer):
                    if lit in context.lower():
                        found += 1
                        supported += lit in small.lower()
    return {
        "ratio": round(original / kept_tokens, 3) if kept_tokens else None,
        "answer_support": round(supported / found, 4) if found else None,
        "literals_checked": found,
    }


def _routing(
    reqs: list[LoggedRequest], plans: list[_Plan], cheap_model: str, advance: Any
) -> dict[str, Any]:
    """Route each request between its logged model and the cheap one (when cheaper)."""
    from graphthrift.ledger import default_price_book
    from graphthrift.route import Router

    prices = default_price_book()
    routers: dict[str, Router | None] = {}
    eligible = cheap = 0
    for req, plan in zip(reqs, plans, strict=True):
        advance(0.2)
        if req.model not in routers:
            mine = prices.cost(req.model, 1_000_000, 100_000)
            theirs = prices.cost(cheap_model, 1_000_000, 100_000)
            cheaper = mine is not None and theirs is not None and theirs < mine
            routers[req.model] = Router(cheap_model, req.model, sticky=True) if cheaper else None
        router = routers[req.model]
        if router is None:
            continue
        eligible += 1
        decision = router.route(list(req.messages), thread_id=plan.conv, has_tools=req.has_tools)
        plan.cheap = decision.tier == "cheap"
        cheap += plan.cheap
    return {"eligible": eligible, "cheap": cheap}


# -- replay -----------------------------------------------------------------------------------


@dataclass
class _Step:
    name: str
    records: list[Any] = field(default_factory=list)
    served_from_cache: int = 0
    stopped: int = 0
    changed_prompts: int = 0


def _plans(reqs: list[LoggedRequest]) -> tuple[list[_Plan], Counter[str]]:
    plans, how = [], Counter[str]()
    known_out = [r.usage.output_tokens for r in reqs if r.usage is not None]
    from graphthrift.text import count_text

    median_out = int(statistics.median(known_out)) if known_out else 0
    conversations = _Conversations()
    for req in reqs:
        keys = [_key(m) for m in req.messages]
        conv, found = conversations.assign(req, keys)
        how[found] += 1
        single = sum(m["role"] == "user" for m in req.messages) == 1 and not any(
            m["role"] in ("assistant", "tool") for m in req.messages
        )
        if req.usage is not None:
            out = req.usage.output_tokens
        elif req.answer is not None:
            out = count_text(req.answer)
        else:
            out = median_out
        plan = _Plan(conv, single, keys, output_tokens=out)
        if req.usage is not None:
            counted = _prompt_tokens(keys)
            plan.scale = min(2.0, max(0.5, req.usage.input_tokens / counted)) if counted else 1.0
        plans.append(plan)
    return plans, how


def _steps(
    reqs: list[LoggedRequest],
    plans: list[_Plan],
    steps: Sequence[str],
    run_usd: float | None,
    cheap_model: str,
) -> list[_Step]:
    """The ledger records of every step (cumulative layers)."""
    from graphthrift.ledger import LedgerRecord, default_price_book

    prices = default_price_book()
    out = []
    for step in steps:
        on = set(STEPS[1 : STEPS.index(step) + 1])
        provider = _ProviderCache()
        spent: dict[str, float] = {}
        result = _Step(step)
        for req, plan in zip(reqs, plans, strict=True):
            if ("exact_cache" in on and plan.exact_hit) or (
                "semantic_cache" in on and plan.semantic_hit
            ):
                result.served_from_cache += 1
                continue
            if "budgets" in on and run_usd is not None and spent.get(plan.conv, 0.0) >= run_usd:
                result.stopped += 1
                continue
            keys = plan.keys
            if "history" in on and plan.pruned is not None:
                keys = plan.pruned
            if "compression" in on and plan.compressed:
                keys = list(keys)
                for index, text in plan.compressed.items():
                    original = plan.keys[index]
                    keys = [(k[0], text, k[2]) if k == original else k for k in keys]
            model = req.model
            if "routing" in on and plan.cheap:
                model = cheap_model
            changed = keys is not plan.keys or model != req.model
            result.changed_prompts += changed
            simulated = provider.cached(model, keys)
            if not changed and req.usage is not None:
                tokens = req.usage.input_tokens
                cached = (
                    req.usage.cached_tokens if req.usage.cached_tokens is not None else simulated
                )
            else:
                tokens = round(_prompt_tokens(keys) * plan.scale)
                cached = simulated
            cached = min(cached, tokens)
            reasoning = req.usage.reasoning_tokens if req.usage is not None else 0
            record = LedgerRecord(
                tenant_id=req.tenant_id,
                feature=req.feature,
                thread_id=req.thread_id or plan.conv.rsplit("|", 1)[-1],
                run_id=f"replay:{step}",
                model=model,
                input_tokens=tokens,
                output_tokens=plan.output_tokens,
                cached_tokens=cached,
                reasoning_tokens=min(reasoning, plan.output_tokens),
                usage_source="replay",
                layer=step,
            )
            result.records.append(record)
            if run_usd is not None:
                cost = prices.cost(model, tokens, plan.output_tokens, cached) or 0.0
                spent[plan.conv] = spent.get(plan.conv, 0.0) + cost
        out.append(result)
    return out


def replay(
    traffic: TrafficFile,
    store: Any,
    *,
    cheap_model: str = CHEAP_MODEL,
    threshold: float = SEMANTIC_THRESHOLD,
    run_usd: float | None = None,
    history_max_tokens: int = HISTORY_MAX_TOKENS,
    console: Console | None = None,
) -> dict[str, Any]:
    """Replay ``traffic`` through the layers; the stack rows, per-layer notes and traffic facts."""
    from graphthrift.ledger import Ledger, default_price_book

    console = console or Console(quiet=True)
    reqs = traffic.requests
    steps = [s for s in STEPS if s != "budgets" or run_usd is not None]
    timings: dict[str, float] = {}
    with progress(console, f"replaying {len(reqs):,} requests", total=len(reqs) * 2.5) as advance:
        t0 = time.perf_counter()
        plans, grouping = _plans(reqs)
        advance(len(reqs) * 0.3)
        timings["read_and_count_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cache = _caches(reqs, plans, threshold, advance)
        timings["caches_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        history = _history(reqs, plans, history_max_tokens, advance)
        timings["history_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        compression = _compression(reqs, plans, advance)
        timings["compression_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        routing = _routing(reqs, plans, cheap_model, advance)
        timings["routing_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        booked = _steps(reqs, plans, steps, run_usd, cheap_model)
        ledger = Ledger(store)
        try:
            for step in booked:
                ledger.record_many(step.records)
                advance(len(reqs) * 0.1)
            ledger.flush()
            costs = {r["run_id"]: r for r in ledger.report(by=["run_id"], kind="llm")}
            by_tenant = ledger.report(by=["run_id", "tenant_id"], kind="llm")
        finally:
            ledger.close()
        timings["ledger_s"] = time.perf_counter() - t0
    prices = default_price_book()
    unknown = Counter(r.model for r in reqs if not prices.is_known(r.model))
    rows = []
    base = float(costs.get("replay:baseline", {}).get("cost_usd", 0.0))
    previous = base
    for step in booked:
        row = costs.get(f"replay:{step.name}", {})
        cost = round(float(row.get("cost_usd", 0.0)), 6)
        rows.append(
            {
                "layer": step.name,
                "cost_usd": cost,
                "saved_fraction": (round(1 - cost / base, 4) + 0.0 if base else None)
                if step.name != "baseline"
                else 0.0,
                "quality": None,
                "step_saving_usd": round(previous - cost, 6) if step.name != "baseline" else 0.0,
                "requests_sent": len(step.records),
                "served_from_cache": step.served_from_cache,
                "stopped_by_budget": step.stopped,
                "unpriced": int(row.get("unpriced", 0) or 0),
            }
        )
        previous = cost
    n = len(reqs)
    single = sum(p.single_turn for p in plans)
    multi = n - single
    agree = cache["agreement"]
    layers: dict[str, dict[str, Any]] = {
        "exact_cache": {
            "estimated": single > 0,
            "why": None if single else "no single-turn requests: caches serve only those",
            "hits": sum(p.exact_hit for p in plans),
            "single_turn_requests": single,
            "answer_agreement": _mean(agree["exact"]),
            "answer_agreement_n": len(agree["exact"]),
        },
        "semantic_cache": {
            "estimated": single > 0,
            "why": None if single else "no single-turn requests: caches serve only those",
            "threshold": threshold,
            "hits": sum(p.semantic_hit for p in plans),
            "mean_similarity": _mean(cache["similarity"]),
            "answer_agreement": _mean(agree["semantic"]),
            "answer_agreement_n": len(agree["semantic"]),
            "embedder": cache["embedder"],
        },
        "history": {
            "estimated": multi > 0,
            "why": None if multi else "no multi-turn requests to prune",
            "max_tokens": history_max_tokens,
            "requests_pruned": sum(p.pruned is not None for p in plans),
            **history,
        },
        "compression": {
            "estimated": any(p.compressed for p in plans),
            "why": None
            if any(p.compressed for p in plans)
            else "no request carries a retrieved context (a 'Context:' line or <context> tag)"
            f" of {MIN_CONTEXT_TOKENS}+ tokens",
            "target_ratio": COMPRESS_RATIO,
            "requests_compressed": sum(bool(p.compressed) for p in plans),
            **compression,
        },
        "routing": {
            "estimated": routing["eligible"] > 0,
            "why": "quality not estimated: judging the cheap model's answers needs the model;"
            " escalations are unknown, so the saving is an upper bound"
            if routing["eligible"]
            else f"no request uses a model dearer than --cheap-model {cheap_model}",
            "cheap_model": cheap_model,
            "eligible_requests": routing["eligible"],
            "cheap_fraction": round(routing["cheap"] / routing["eligible"], 4)
            if routing["eligible"]
            else None,
        },
        "budgets": {
            "estimated": run_usd is not None,
            "why": None
            if run_usd is not None
            else "no limit given: pass --run-usd to see what a per-conversation limit would stop",
            "run_usd": run_usd,
            "requests_stopped": booked[-1].stopped if run_usd is not None else 0,
        },
    }
    proxies = {
        "exact_cache": "answer_agreement",
        "semantic_cache": "answer_agreement",
        "history": "literal_retention",
        "compression": "answer_support",
    }
    for row in rows[1:]:
        layer = str(row["layer"])
        proxy = proxies.get(layer)
        row["quality"] = layers[layer].get(proxy) if proxy else None
    return {
        "stack": rows,
        "layers": layers,
        "traffic": {
            "file": str(traffic.path),
            "requests": n,
            "bad_lines": len(traffic.bad),
            "bad_line_examples": [{"line": b.line, "problem": b.problem} for b in traffic.bad[:20]],
            "unknown_models": dict(unknown),
            "models": dict(Counter(r.model for r in reqs)),
            "tenants": len({r.tenant_id for r in reqs}),
            "conversations": len({p.conv for p in plans}),
            "grouped_by": dict(grouping),
            "single_turn_requests": single,
            "with_logged_usage": sum(r.usage is not None for r in reqs),
            "with_logged_answer": sum(r.answer is not None for r in reqs),
        },
        "by_tenant": [
            {k: v for k, v in r.items() if k in ("run_id", "tenant_id", "requests", "cost_usd")}
            for r in by_tenant
        ],
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _table(out: dict[str, Any]) -> Table:
    t = out["traffic"]
    table = Table(
        title=f"graphthrift bench --traffic: {t['requests']:,} requests replayed"
        f" ({t['bad_lines']} bad lines), cost from the ledger"
    )
    for col in ("layer", "cost_usd", "saved_fraction", "quality proxy", "value"):
        table.add_column(col, justify="left" if col in ("layer", "quality proxy") else "right")
    for row in out["stack"]:
        info = out["layers"].get(row["layer"], {})
        proxy, value = "-", "-"
        for name in ("answer_agreement", "literal_retention", "answer_support", "cheap_fraction"):
            if info.get(name) is not None:
                proxy, value = name, f"{info[name]:.3f}"
                break
        saved = "-" if row["saved_fraction"] is None else f"{row['saved_fraction']:.3f}"
        table.add_row(row["layer"], f"{row['cost_usd']:.4f}", saved, proxy, value)
    for name in out["layers"]:
        if name not in {r["layer"] for r in out["stack"]}:
            table.add_row(name, "-", "-", "not estimated", "-")
    return table


def _notes(out: dict[str, Any]) -> list[str]:
    """One line per layer that was not estimated, or whose figures need a caveat."""
    return [f"{name}: {info['why']}" for name, info in out["layers"].items() if info.get("why")]


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Read ``args.traffic``, replay it, print the waterfall table, write JSON and the PNG."""
    from graphthrift.bench.stack import waterfall
    from graphthrift.embed import default_embedder
    from graphthrift.store import Store

    started = time.perf_counter()
    traffic = read_traffic(args.traffic)
    for bad in traffic.bad[:5]:
        console.print(f"[yellow]line {bad.line} skipped: {bad.problem}[/]", soft_wrap=True)
    if len(traffic.bad) > 5:
        console.print(f"[yellow]... and {len(traffic.bad) - 5} more bad lines[/]")
    json_path = Path(getattr(args, "json", None) or "bench-results/traffic.json")
    png_path = json_path.with_suffix(".png")
    if not traffic.requests:
        out: dict[str, Any] = {
            "stack": [],
            "traffic": {"file": str(traffic.path), "requests": 0, "bad_lines": len(traffic.bad)},
            "skipped": f"no valid request in {traffic.path} ({len(traffic.bad)} bad lines)",
        }
        console.print(f"[yellow]bench traffic: {out['skipped']}[/]")
        write_json(out, json_path)
        return out
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    default_embedder().embed(["warm up the embedder"])  # its first load is not the replay's
    embedder_load_s = round(time.perf_counter() - t0, 2)
    base = Store(getattr(args, "url", None))
    try:
        with scratch_store(base) as store:
            out = replay(
                traffic,
                store,
                cheap_model=getattr(args, "cheap_model", CHEAP_MODEL),
                threshold=float(getattr(args, "threshold", SEMANTIC_THRESHOLD)),
                run_usd=getattr(args, "run_usd", None),
                history_max_tokens=int(getattr(args, "history_max_tokens", HISTORY_MAX_TOKENS)),
                console=console,
            )
    finally:
        base.close()
    if out["traffic"]["unknown_models"]:
        models = ", ".join(f"{m} ({n})" for m, n in out["traffic"]["unknown_models"].items())
        console.print(
            f"[yellow]no price known for: {models}; their requests are counted but not priced"
            " (graphthrift.set_price adds one)[/]",
            soft_wrap=True,
        )
    out["seconds"] = round(time.perf_counter() - started, 2)
    out["timings_s"]["embedder_first_load_s"] = embedder_load_s
    out["timings_s"]["replay_s"] = round(out["seconds"] - embedder_load_s, 2)
    out["machine"] = {
        **machine(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    if out["stack"] and out["stack"][0]["cost_usd"] > 0:
        out["png"] = str(waterfall(out["stack"], png_path))
    write_json(out, json_path)
    console.print(_table(out))
    for note in _notes(out):
        console.print(f"  {note}", soft_wrap=True)
    console.print(
        f"figures in {json_path}" + (f", waterfall in {out['png']}" if "png" in out else "")
    )
    return out
