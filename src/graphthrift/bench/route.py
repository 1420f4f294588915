"""``graphthrift bench route``: cheap-first routing on a labelled workload, through LangGraph.

Workload (from the bundled data sets, labels from how each request was built):
- ``faq`` (easy): banking77 customer queries, as asked;
- ``extract`` (easy): one xquad_en question with its paragraph;
- ``multihop`` (hard): two questions about two different xquad_en paragraphs, composed
  into one request that needs both.
A missing set raises ``DataSetMissing`` (the CLI says which and runs the other benches).

Two fake chat models answer through a LangGraph graph (``choose_model`` with ``models``).
Their per-call quality is simulated from the labels (deterministic per request): the cheap
model is right on most easy requests and few hard ones, and hedges on part of its misses;
the strong model is right on most of both. Figures: ``cheap_fraction`` (answers served by
the cheap model), ``escalation_rate`` (requests whose cheap answer was rejected),
``quality`` (correct answers relative to always-strong), ``cost_fraction`` (cost relative to
always-strong), ``overhead_ms`` (the routing decision alone, p50/p95) and the same with
the optional classifier (trained on a disjoint split) under ``classifier``. The classifier's
``overhead_ms`` is timed with its embedding cache cleared (every request a miss);
``overhead_cached_ms`` times the same requests again (every request a hit). Each row
records ``load_avg_1m``: the timings depend on how busy the machine is.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

from graphthrift.bench._common import (
    data_dir,
    machine,
    mode,
    percentiles,
    progress,
    tick,
    write_json,
)
from graphthrift.bench._data import DataSetMissing, data_file, read_set_file
from graphthrift.embed import MiniLMEmbedder
from graphthrift.ledger import default_price_book
from graphthrift.route import DifficultyClassifier, Router

CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"
# P(correct) per label, and P(hedge | wrong) for the cheap model
QUALITY = {
    CHEAP: {"faq": 0.95, "extract": 0.85, "multihop": 0.30},
    STRONG: {"faq": 0.97, "extract": 0.93, "multihop": 0.88},
}
HEDGE_WHEN_WRONG = 0.6
HARD = {"multihop"}
TARGETS = {"overhead_p95_ms": 1.0, "classifier_overhead_p95_ms": 5.0}
_TEMPLATES = (
    "Context A: {c1}\n\nContext B: {c2}\n\nFirst, {q1} And then, using the second passage, {q2}",
    "{c1}\n\n{c2}\n\nAnswer both: (1) {q1} (2) {q2}",
    "Read these two passages.\n{c1}\n---\n{c2}\nWhich is true, and why: {q1} Also {q2}",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=1500, help="requests in the workload")
    parser.add_argument("--threshold", type=float, default=0.5, help="router threshold")
    parser.add_argument("--no-classifier", action="store_true", help="skip the classifier run")
    parser.add_argument("--seed", type=int, default=13)


def build_workload(n: int, seed: int = 13) -> list[tuple[str, str]]:
    """``n`` (request, label) pairs: a third each of faq, extract and multihop."""
    rng = random.Random(seed)
    rows = csv.DictReader(io.StringIO(read_set_file("banking77", "test.csv")))
    faq = [row["text"] for row in rows]
    try:
        data = json.loads(read_set_file("xquad_en", "xquad.en.json"))
        paras = [
            (p["context"], [q["question"] for q in p["qas"]])
            for article in data["data"]
            for p in article["paragraphs"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataSetMissing(
            "xquad_en", data_file("xquad_en", "xquad.en.json"), f"is damaged ({exc})"
        ) from None
    if not faq or len(paras) < 2:
        raise DataSetMissing(
            "banking77" if not faq else "xquad_en", data_dir(), "holds too few records"
        )
    out: list[tuple[str, str]] = []
    for i in range(n):
        kind = ("faq", "extract", "multihop")[i % 3]
        if kind == "faq":
            out.append((rng.choice(faq), kind))
        elif kind == "extract":
            context, questions = rng.choice(paras)
            out.append((f"{context[:500]}\n\nQuestion: {rng.choice(questions)}", kind))
        else:
            (c1, q1s), (c2, q2s) = rng.sample(paras, 2)
            template = _TEMPLATES[i % len(_TEMPLATES)]
            out.append(
                (
                    template.format(
                        c1=c1[:400], c2=c2[:400], q1=rng.choice(q1s), q2=rng.choice(q2s)
                    ),
                    kind,
                )
            )
    rng.shuffle(out)
    return out


def _draw(text: str, model: str, salt: str) -> float:
    digest = hashlib.blake2b(f"{model}|{salt}|{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def simulate(text: str, label: str, model: str) -> tuple[str, bool]:
    """The simulated answer of ``model`` and whether it is correct."""
    correct = _draw(text, model, "ok") < QUALITY[model][label]
    if correct:
        return "The answer is in the passage: it is the one stated.", True
    if model == CHEAP and _draw(text, model, "hedge") < HEDGE_WHEN_WRONG:
        return "I'm not sure; there is not enough information.", False
    return "The answer is something else entirely.", False


def _models(labels: dict[str, str]) -> dict[str, Any]:
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    from graphthrift.text import count_text

    class SimulatedModel(BaseChatModel):
        model_name: str

        @property
        def _llm_type(self) -> str:
            return "graphthrift-simulated"

        def _generate(
            self,
            messages: list[BaseMessage],
            stop: Any = None,
            run_manager: Any = None,
            **kwargs: Any,
        ) -> ChatResult:
            text = str(messages[-1].content)
            answer, correct = simulate(text, labels[text], self.model_name)
            usage = {
                "input_tokens": count_text(text),
                "output_tokens": 12,
                "total_tokens": count_text(text) + 12,
            }
            message = AIMessage(
                answer,
                usage_metadata=usage,
                response_metadata={"model_name": self.model_name, "correct": correct},
            )
            return ChatResult(generations=[ChatGeneration(message=message)])

    return {CHEAP: SimulatedModel(model_name=CHEAP), STRONG: SimulatedModel(model_name=STRONG)}


def _graph(router: Router, models: dict[str, Any]) -> Any:
    from langgraph.graph import END, START, StateGraph

    from graphthrift.langgraph import RouteState, choose_model

    state = RouteState  # the declared schema choose_model checks
    builder = StateGraph(state)
    builder.add_node("route", choose_model(router, models=models))
    builder.add_edge(START, "route")
    builder.add_edge("route", END)
    return builder.compile()


def _evaluate(router: Router, work: list[tuple[str, str]]) -> dict[str, Any]:
    from langchain_core.messages import HumanMessage

    labels = {text: label for text, label in work}
    graph = _graph(router, _models(labels))
    prices = default_price_book()
    correct = strong_correct = 0
    cost = strong_cost = 0.0
    for text, label in work:
        tick()
        out = graph.invoke({"messages": [HumanMessage(text)]})
        answer = out["messages"][-1]
        correct += bool(answer.response_metadata.get("correct"))
        tokens_in = answer.usage_metadata["input_tokens"]
        calls = [out["route_model"]]
        if out["route_reason"] in ("confidence", "validator", "error"):
            calls.insert(0, CHEAP)
        cost += sum(prices.cost(m, tokens_in, 12) or 0.0 for m in calls)
        strong_correct += simulate(text, label, STRONG)[1]
        strong_cost += prices.cost(STRONG, tokens_in, 12) or 0.0
    if router.classifier is not None:
        router.classifier.cache_clear()  # the graph runs above saw these texts: time misses
    samples: list[float] = []
    for text, _ in work:
        tick()
        t0 = time.perf_counter()
        router.route(text)
        samples.append((time.perf_counter() - t0) * 1000)
    repeats: list[float] = []
    size = router.classifier.cache_size if router.classifier is not None else 0
    if size:  # the latest requests again (those the LRU still holds): embeddings are hits
        for text, _ in work[-size:]:
            t0 = time.perf_counter()
            router.route(text)
            repeats.append((time.perf_counter() - t0) * 1000)
    stats = router.stats
    n = len(work)
    return {
        "n": n,
        "cheap_fraction": round(stats["cheap"] / n, 4),
        "escalation_rate": round(stats["cascaded"] / n, 4),
        "quality": round(correct / strong_correct, 4) if strong_correct else float("nan"),
        "accuracy": round(correct / n, 4),
        "always_strong_accuracy": round(strong_correct / n, 4),
        "cost_fraction": round(cost / strong_cost, 4) if strong_cost else float("nan"),
        "overhead_ms": percentiles(samples, 50, 95),
        **({"overhead_cached_ms": percentiles(repeats, 50, 95)} if repeats else {}),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _split(work: list[tuple[str, str]], seed: int) -> Iterator[list[tuple[str, str]]]:
    train = build_workload(max(90, len(work) // 3), seed + 1)
    seen = {text for text, _ in work}
    yield [(t, label) for t, label in train if t not in seen]


def _untrainable(train: list[tuple[str, str]]) -> str | None:
    """Why the classifier cannot be trained on ``train`` (None: it can): it needs examples of
    both easy and hard requests, or its figures would mean nothing."""
    hard = sum(label in HARD for _, label in train)
    if not train or not hard or hard == len(train):
        return (
            f"the training split holds {len(train)} requests ({hard} hard); it needs easy and"
            " hard ones disjoint from the workload (a larger data set, or a smaller --n)"
        )
    return None


def _classifier_figures(
    clf: DifficultyClassifier,
    train: list[tuple[str, str]],
    work: list[tuple[str, str]],
    threshold: float,
) -> dict[str, Any]:
    """Train ``clf`` on ``train`` and route ``work`` with it; figures, training time, embedder."""
    t0 = time.perf_counter()
    clf.fit([t for t, _ in train], [label in HARD for _, label in train])
    train_s = time.perf_counter() - t0
    clf.predict_proba(["warm up"])
    figures = _evaluate(Router(CHEAP, STRONG, threshold=threshold, classifier=clf), work)
    figures["train_examples"] = len(train)
    figures["train_s"] = round(train_s, 3)
    figures["embedder"] = clf.embedder.model_id
    return figures


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    n = min(args.n, {"quick": 150, "default": 450, "full": args.n}[mode(args)])
    work = build_workload(n, args.seed)
    with progress(console, "bench route", total=len(work) * 6):
        figures = _evaluate(Router(CHEAP, STRONG, threshold=args.threshold), work)
        _classifiers(args, console, figures, work)
    figures["mode"] = mode(args)
    _print(figures, console, n)
    write_json(figures, getattr(args, "json", None))
    return figures


def _classifiers(
    args: argparse.Namespace, console: Console, figures: dict[str, Any], work: list[tuple[str, str]]
) -> None:
    """The classifier runs (static embedding and full MiniLM), or why they were skipped."""
    figures["data"] = str(data_dir())
    figures["labels"] = {"easy": ["faq", "extract"], "hard": sorted(HARD)}
    figures["simulated_quality"] = QUALITY
    train = next(_split(work, args.seed))
    why_not = _untrainable(train)
    if why_not and not args.no_classifier:
        console.print(f"[yellow]bench route: classifier not run: {why_not}[/]")
        figures["classifier"] = {"skipped": why_not}
    elif not args.no_classifier:
        default = DifficultyClassifier()
        static = _classifier_figures(default, train, work, args.threshold)
        # the same classifier on the full transformer, for the quality/overhead trade
        minilm = MiniLMEmbedder(max_length=default.embed_tokens)
        peer = _classifier_figures(DifficultyClassifier(minilm), train, work, args.threshold)
        p95 = peer["overhead_ms"]["p95"]
        static["overhead_p95_vs_transformer"] = (
            round(static["overhead_ms"]["p95"] / p95, 3) if p95 else None
        )
        figures["classifier"], figures["classifier_transformer"] = static, peer


def _print(figures: dict[str, Any], console: Console, n: int) -> None:
    figures["targets"] = TARGETS
    figures["machine"] = {**machine(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    table = Table(title=f"graphthrift bench route (n={n})")
    for col in (
        "router",
        "cheap_fraction",
        "escalation_rate",
        "quality",
        "cost_fraction",
        "overhead p50/p95 ms",
    ):
        table.add_column(col)
    rows = (
        ("features", figures),
        ("classifier (static)", figures.get("classifier")),
        ("classifier (MiniLM)", figures.get("classifier_transformer")),
    )
    for name, row in rows:
        if row and "skipped" not in row:
            table.add_row(
                name,
                str(row["cheap_fraction"]),
                str(row["escalation_rate"]),
                str(row["quality"]),
                str(row["cost_fraction"]),
                f"{row['overhead_ms']['p50']}/{row['overhead_ms']['p95']}",
            )
    console.print(table)


__all__ = ["add_arguments", "build_workload", "run", "simulate"]
