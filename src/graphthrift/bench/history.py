"""``graphthrift bench history``: what each pruning policy would send, turn by turn.

Long because: the replay, its four policies (ours and three peers) and the figures they feed
are one measurement, read together against docs/benchmarks.md.

Each conversation is replayed: before every assistant reply, the history so far goes
through each policy, and what it would send is measured. Policies, in the same run and at
the same token budget: the full history, ``langchain_core``'s ``trim_messages``, langmem's
``SummarizationNode`` (its model faked by our extractive summarizer, asked to extend the
summary as langmem's prompt asks an LLM to), and our ``HistoryPruner`` with the
``ExtractiveSummarizer``.

Figures (defined in docs/benchmarks.md): tokens sent, ``saved_fraction``, ``fact_retention`` (share of
(prompt, fact) pairs where a fact stated in a turn that is no longer sent verbatim still
appears in the prompt), ``prefix_stability`` (share of prompts that start with the
previous prompt) and ``summary_tokens`` (mean final summary length). Also
``cacheable_fraction`` (share of sent tokens a prefix cache could serve),
``ms_per_turn`` (policy overhead, summarizer time excluded) and the tracemalloc peak.
``bound`` is the most any fold schedule could save at the stability target
(``_history_bound``), which shows whether the targets can be met together on the data.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
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
from graphthrift.bench._data import DataSetMissing
from graphthrift.bench._data_history import (
    Conversation,
    load_conversations_jsonl,
    load_default_sets,
)
from graphthrift.bench._history_bound import fold_bound
from graphthrift.history import HistoryPruner, HistoryState
from graphthrift.summarize import ExtractiveSummarizer, Summarizer
from graphthrift.text import TOKENS_REPLY_PRIMING, Message, count_message, count_text, to_message

__all__ = ["add_arguments", "as_langchain", "fold_ceiling", "prompt_points", "run"]

# the smallest budget of the sweep where fact retention and stability clear 0.9 with margin
DEFAULT_MAX_TOKENS = 384
QUICK_STRIDE = 15  # --quick: every 15th conversation of each set, keeping their proportions
STRIDES = {"quick": QUICK_STRIDE, "default": 5, "full": 1}  # the default: every 5th
QUICK_FILE_LIMIT = 200
MEMORY_SAMPLE = 8
TARGETS = {
    "saved_fraction_20plus": 0.6,
    "fact_retention_sgd": 0.9,
    "prefix_stability": 0.9,
    "ms_per_turn_p95": 2.0,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``graphthrift bench history``."""
    parser.add_argument(
        "--conversations",
        type=Path,
        default=None,
        help="conversations JSONL (generic format); default: the bundled topical_chat and sgd_test",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"token budget of every prompt, for every policy (default {DEFAULT_MAX_TOKENS})",
    )
    parser.add_argument(
        "--keep-turns", type=int, default=None, help="turns HistoryPruner keeps verbatim"
    )
    parser.add_argument(
        "--target-tokens", type=int, default=None, help="HistoryPruner's low watermark"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many conversations per data set"
    )
    parser.add_argument(
        "--budgets",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[],
        help="also report every policy at these budgets, e.g. 192,256,384",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip trim_messages and langmem")


# ---------------------------------------------------------------- measuring


@lru_cache(maxsize=200_000)
def _msg_tokens(role: str, text: str) -> int:
    return count_message(Message(role, text)).tokens  # type: ignore[arg-type]


def _key(m: Message) -> tuple[str, str]:
    return (m.role, m.text)


def _prompt_tokens(keys: Sequence[tuple[str, str]]) -> int:
    return sum(_msg_tokens(r, t) for r, t in keys) + (TOKENS_REPLY_PRIMING if keys else 0)


@dataclass(slots=True)
class _Tally:
    """Running totals of one policy over one data set."""

    conversations: int = 0
    prompts: int = 0
    tokens_full: int = 0
    tokens_sent: int = 0
    tokens_full_20: int = 0
    tokens_sent_20: int = 0
    facts_total: int = 0
    facts_kept: int = 0
    transitions: int = 0
    stable: int = 0
    cacheable: int = 0
    summary_tokens: list[int] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    summarizer_calls: int = 0
    summarizer_input_tokens: int = 0
    over_budget: int = 0
    max_prompt: int = 0
    budget: int = 0

    def add(self, other: _Tally) -> None:
        for name in self.__slots__:
            value = getattr(other, name)
            if isinstance(value, list):
                getattr(self, name).extend(value)
            elif name in ("max_prompt", "budget"):
                setattr(self, name, max(getattr(self, name), value))
            else:
                setattr(self, name, getattr(self, name) + value)

    def figures(self, *, full: bool = False) -> dict[str, Any]:
        saved = 1 - self.tokens_sent / self.tokens_full if self.tokens_full else 0.0
        saved20 = 1 - self.tokens_sent_20 / self.tokens_full_20 if self.tokens_full_20 else None
        if full:
            retention: float | None = 1.0
        else:
            retention = self.facts_kept / self.facts_total if self.facts_total else None
        return {
            "n_conversations": self.conversations,
            "n_turns": self.prompts,
            "tokens_full": self.tokens_full,
            "tokens_pruned": self.tokens_sent,
            "saved_fraction": round(saved, 4),
            "saved_fraction_20plus": None if saved20 is None else round(saved20, 4),
            "fact_retention": None if retention is None else round(retention, 4),
            "facts_checked": self.facts_total,
            "prefix_stability": round(self.stable / self.transitions, 4)
            if self.transitions
            else 1.0,
            "cacheable_fraction": round(self.cacheable / self.tokens_sent, 4)
            if self.tokens_sent
            else 0.0,
            "summary_tokens": round(statistics.fmean(self.summary_tokens), 1)
            if self.summary_tokens
            else 0.0,
            "ms_per_turn": percentiles(self.step_ms, 50, 95),
            "summarizer_calls": self.summarizer_calls,
            "summarizer_input_tokens": self.summarizer_input_tokens,
            "over_budget_fraction": round(self.over_budget / self.prompts, 4)
            if self.prompts
            else 0.0,
            "max_prompt_tokens": self.max_prompt,
        }


class _TimedSummarizer:
    """Wraps a summarizer to book its time apart from the policy's overhead."""

    def __init__(self, inner: Summarizer) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0
        self.input_tokens = 0

    def summarize(self, messages: Sequence[Message], previous_summary: str, max_tokens: int) -> str:
        started = time.perf_counter()
        out = self.inner.summarize(messages, previous_summary, max_tokens)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        self.input_tokens += _prompt_tokens([_key(m) for m in messages]) + count_text(
            previous_summary
        )
        return out

    async def asummarize(
        self, messages: Sequence[Message], previous_summary: str, max_tokens: int
    ) -> str:
        return self.summarize(messages, previous_summary, max_tokens)


# ---------------------------------------------------------------- policies


class _Policy:
    """One pruning policy replayed over a conversation."""

    name = ""

    def start(self) -> None:
        """A new conversation begins."""

    def step(self, history: list[Any]) -> list[Message]:
        raise NotImplementedError

    def summarizer_seconds(self) -> float:
        return 0.0

    def summary_tokens(self) -> int:
        return 0

    def summarizer_usage(self) -> tuple[int, int]:
        return 0, 0


class _Full(_Policy):
    name = "full_history"

    def step(self, history: list[Any]) -> list[Message]:
        return [to_message(m) for m in history]


class _Ours(_Policy):
    name = "graphthrift"

    def __init__(self, max_tokens: int, keep_turns: int | None, target_tokens: int | None) -> None:
        self.timed = _TimedSummarizer(ExtractiveSummarizer())
        self.pruner = HistoryPruner(
            summarizer=self.timed,
            max_tokens=max_tokens,
            keep_turns=keep_turns,
            target_tokens=target_tokens,
        )
        self.state: HistoryState | None = None

    def start(self) -> None:
        self.state = None

    def step(self, history: list[Any]) -> list[Message]:
        result = self.pruner.prune(history, self.state)
        self.state = result.state
        return result.messages

    def summarizer_seconds(self) -> float:
        return self.timed.seconds

    def summary_tokens(self) -> int:
        return count_text(self.state.summary) if self.state else 0

    def summarizer_usage(self) -> tuple[int, int]:
        return self.timed.calls, self.timed.input_tokens


def _lc_counter() -> Callable[[Sequence[Any]], int]:
    def counter(messages: Sequence[Any]) -> int:
        return _prompt_tokens([_key(to_message(m)) for m in messages])

    return counter


class _Trim(_Policy):
    name = "trim_messages"

    def __init__(self, max_tokens: int) -> None:
        from langchain_core.messages import trim_messages

        self.trim = trim_messages
        self.max_tokens = max_tokens
        self.counter = _lc_counter()

    def step(self, history: list[Any]) -> list[Message]:
        kept = self.trim(
            history,
            max_tokens=self.max_tokens,
            token_counter=self.counter,
            strategy="last",
            include_system=True,
            start_on="human",
            allow_partial=False,
        )
        return [to_message(m) for m in kept]


class _LangMem(_Policy):
    """langmem's SummarizationNode, its model faked by our extractive summarizer."""

    name = "langmem_summarization"

    def __init__(self, max_tokens: int, max_summary_tokens: int) -> None:
        from langchain_core.messages import AIMessage
        from langchain_core.runnables import RunnableLambda
        from langmem.short_term import SummarizationNode

        self.seconds = 0.0
        self.calls = 0
        self.input_tokens = 0
        extractive = ExtractiveSummarizer()
        marker = "This is summary of the conversation so far:"

        def fake_model(prompt: Any) -> Any:
            started = time.perf_counter()
            msgs = [to_message(m) for m in getattr(prompt, "messages", prompt)]
            self.calls += 1
            self.input_tokens += _prompt_tokens([_key(m) for m in msgs])
            instruction = msgs[-1].text
            previous = ""
            if instruction.startswith(marker):
                previous = instruction[len(marker) :].split("\n\nExtend this summary", 1)[0].strip()
            # langmem asks for the whole summary, rewritten: fold old summary and new messages.
            source = (
                [Message("system", previous, name="graphthrift_summary_section")]
                if previous
                else []
            )
            body = [m for m in msgs[:-1] if m.role != "system"]
            text = (
                extractive.summarize(source + body, "", max_summary_tokens)
                if previous
                else extractive.summarize(body, "", max_summary_tokens)
            )
            self.seconds += time.perf_counter() - started
            return AIMessage(content=text)

        self.node = SummarizationNode(
            model=RunnableLambda(fake_model),
            max_tokens=max_tokens,
            max_tokens_before_summary=max_tokens,
            max_summary_tokens=max_summary_tokens,
            token_counter=_lc_counter(),
        )
        self.context: dict[str, Any] = {}

    def start(self) -> None:
        self.context = {}

    def step(self, history: list[Any]) -> list[Message]:
        update = self.node.invoke({"messages": history, "context": self.context})
        self.context = update.get("context", self.context)
        return [to_message(m) for m in update["summarized_messages"]]

    def summarizer_seconds(self) -> float:
        return self.seconds

    def summary_tokens(self) -> int:
        running = self.context.get("running_summary")
        return count_text(running.summary) if running is not None else 0

    def summarizer_usage(self) -> tuple[int, int]:
        return self.calls, self.input_tokens


# ---------------------------------------------------------------- replay


def as_langchain(conv: Conversation) -> list[Any]:
    """The conversation as LangChain messages with ids (langmem requires ids)."""
    try:
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    except ImportError:  # pragma: no cover - langchain-core is a dependency
        return [Message(t.role, t.content, id=f"{conv.id}-{i}") for i, t in enumerate(conv.turns)]  # type: ignore[arg-type]
    kinds = {"user": HumanMessage, "assistant": AIMessage, "system": SystemMessage}
    return [kinds[t.role](content=t.content, id=f"{conv.id}-{i}") for i, t in enumerate(conv.turns)]


def prompt_points(conv: Conversation) -> list[int]:
    """History lengths at which a prompt is sent: after each run of user messages."""
    turns = conv.turns
    return [
        i + 1
        for i, t in enumerate(turns)
        if t.role == "user" and (i + 1 == len(turns) or turns[i + 1].role != "user")
    ]


def fold_ceiling(
    conversations: Iterable[Conversation],
    *,
    summary_tokens: Sequence[int] = (0, 40, 80),
    stability: float = TARGETS["prefix_stability"],
) -> dict[str, Any]:
    """``fold_bound`` over ``conversations``, with this bench's prompt points and token counts."""
    return fold_bound(
        [
            (c, prompt_points(c), [_msg_tokens(t.role, t.content) for t in c.turns])
            for c in conversations
        ],
        summary_tokens=summary_tokens,
        stability=stability,
    )


def _replay(
    policy: _Policy,
    conv: Conversation,
    history: list[Any],
    tally: _Tally,
    *,
    timed: bool,
    budget: int,
) -> None:
    policy.start()
    previous: list[tuple[str, str]] | None = None
    long = len(conv.turns) >= 20
    originals = [(t.role, t.content) for t in conv.turns]
    ids = {f"{conv.id}-{i}": i for i in range(len(conv.turns))}
    tally.conversations += 1
    calls0, inputs0 = policy.summarizer_usage()
    for end in prompt_points(conv):
        summarizer_before = policy.summarizer_seconds()
        started = time.perf_counter()
        sent = policy.step(history[:end])
        elapsed = time.perf_counter() - started - (policy.summarizer_seconds() - summarizer_before)
        if timed:
            tally.step_ms.append(elapsed * 1000.0)
        keys = [_key(m) for m in sent]
        full_tokens = _prompt_tokens(originals[:end])
        sent_tokens = _prompt_tokens(keys)
        tally.prompts += 1
        tally.tokens_full += full_tokens
        tally.tokens_sent += sent_tokens
        tally.max_prompt = max(tally.max_prompt, sent_tokens)
        tally.over_budget += sent_tokens > budget
        if long:
            tally.tokens_full_20 += full_tokens
            tally.tokens_sent_20 += sent_tokens
        if previous is not None:
            tally.transitions += 1
            common = 0
            for a, b in zip(previous, keys, strict=False):
                if a != b:
                    break
                common += 1
            tally.stable += common == len(previous)
            tally.cacheable += _prompt_tokens(keys[:common]) - (
                TOKENS_REPLY_PRIMING if common else 0
            )
        previous = keys
        if conv.has_facts:
            verbatim = {ids[m.id] for m in sent if m.id in ids and originals[ids[m.id]] == _key(m)}
            text = "\n".join(t for _, t in keys).lower()
            for i in range(end):
                if i in verbatim:
                    continue
                for fact in conv.turns[i].facts:
                    tally.facts_total += 1
                    tally.facts_kept += fact.lower() in text
    tally.summary_tokens.append(policy.summary_tokens())
    calls1, inputs1 = policy.summarizer_usage()
    tally.summarizer_calls += calls1 - calls0
    tally.summarizer_input_tokens += inputs1 - inputs0


def _policies(args: argparse.Namespace, console: Console) -> list[_Policy]:
    ours = _Ours(args.max_tokens, args.keep_turns, args.target_tokens)
    policies: list[_Policy] = [ours, _Full()]
    if not args.no_peers:
        try:
            policies.append(_Trim(args.max_tokens))
        except ImportError as exc:
            console.print(f"[yellow]skipping trim_messages: {exc}[/yellow]")
        try:
            policies.append(_LangMem(args.max_tokens, ours.pruner.max_summary_tokens))
        except ImportError as exc:
            console.print(f"[yellow]skipping langmem (pip install langmem): {exc}[/yellow]")
    return policies


def _memory_peak(
    policy: _Policy, sample: list[tuple[Conversation, list[Any]]], budget: int
) -> float:
    """tracemalloc peak (KiB) of one policy replaying ``sample`` (caches already warm)."""
    tracemalloc.start()
    try:
        for conv, history in sample:
            _replay(policy, conv, history, _Tally(), timed=False, budget=budget)
        return tracemalloc.get_traced_memory()[1] / 1024.0
    finally:
        tracemalloc.stop()


def _load(args: argparse.Namespace, console: Console) -> dict[str, list[Conversation]]:
    """The conversations: ``--conversations`` (a file or a folder of the bundled sets), else
    the data folder's topical_chat and sgd_test; a missing set is said and left out, and
    with none left ``DataSetMissing`` is raised."""
    stride = STRIDES[mode(args)] if args.limit is None else 1
    if args.conversations is not None:
        path = Path(args.conversations)
        if path.is_file():
            limit = QUICK_FILE_LIMIT if mode(args) == "quick" and args.limit is None else args.limit
            return {path.stem: load_conversations_jsonl(path, limit)}
        if not path.is_dir():
            raise DataSetMissing("conversations", path, "not found (--conversations)")
        root: Path | None = path
    else:
        root = data_dir()
    if root is None:
        raise DataSetMissing("topical_chat", None, "not found (no data folder)")
    problems: list[DataSetMissing] = []
    sets = load_default_sets(root, args.limit, stride, problems)
    if not sets:
        raise problems[0]
    for problem in problems:
        console.print(
            f"[yellow]bench history: {problem}; running the other set[/yellow]", soft_wrap=True
        )
    return sets


Prepared = dict[str, list[tuple[Conversation, list[Any]]]]


def _measure(
    policies: list[_Policy], prepared: Prepared, budget: int
) -> tuple[dict[str, dict[str, _Tally]], dict[str, _Tally]]:
    """Replay every conversation through every policy; tallies per data set and in total."""
    per_set: dict[str, dict[str, _Tally]] = {}
    for name, items in prepared.items():
        per_set[name] = {}
        for policy in policies:
            tally = _Tally()
            for conv, history in items:
                _replay(policy, conv, history, tally, timed=True, budget=budget)
                tick()
            per_set[name][policy.name] = tally
    totals: dict[str, _Tally] = {p.name: _Tally() for p in policies}
    for tallies in per_set.values():
        for pname, tally in tallies.items():
            totals[pname].add(tally)
    return per_set, totals


def _curve(args: argparse.Namespace, console: Console, prepared: Prepared) -> list[dict[str, Any]]:
    """The headline figures of every policy at each budget of ``--budgets``."""
    points = []
    for budget in args.budgets:
        sub = argparse.Namespace(**{**vars(args), "max_tokens": budget})
        per_set, totals = _measure(_policies(sub, console), prepared, budget)
        point: dict[str, Any] = {"max_tokens": budget}
        for pname, tally in totals.items():
            f = tally.figures(full=pname == "full_history")
            sgd = per_set.get("sgd_test", {}).get(pname)
            point[pname] = {
                "saved_fraction": f["saved_fraction"],
                "saved_fraction_20plus": f["saved_fraction_20plus"],
                "fact_retention_sgd": sgd.figures(full=pname == "full_history")["fact_retention"]
                if sgd
                else None,
                "prefix_stability": f["prefix_stability"],
                "cacheable_fraction": f["cacheable_fraction"],
                "over_budget_fraction": f["over_budget_fraction"],
            }
        points.append(point)
    return points


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Replay the conversations through every policy and return the figures."""
    sets = _load(args, console)
    policies = _policies(args, console)
    count_text("warm up the tokenizer")
    prepared = {
        name: [(c, as_langchain(c)) for c in convs if prompt_points(c)]
        for name, convs in sets.items()
    }
    n_items = sum(len(items) for items in prepared.values())
    passes = len(policies) * (1 + len(args.budgets))
    with progress(console, "bench history", total=n_items * passes + 1) as advance:
        per_set, totals = _measure(policies, prepared, args.max_tokens)
        sample = [item for items in prepared.values() for item in items[:MEMORY_SAMPLE]]
        peaks = {p.name: round(_memory_peak(p, sample, args.max_tokens), 1) for p in policies}
        curve = _curve(args, console, prepared) if args.budgets else None
        bound = fold_ceiling(c for items in prepared.values() for c, _ in items)
        advance(1)

    figures = {pname: totals[pname].figures(full=pname == "full_history") for pname in totals}
    for pname in figures:
        figures[pname]["peak_memory_kb"] = peaks[pname]
    ours = figures.pop("graphthrift")
    result: dict[str, Any] = {
        **ours,
        "max_tokens": args.max_tokens,
        "sample": "all"
        if STRIDES[mode(args)] == 1 or args.limit is not None
        else f"every {STRIDES[mode(args)]}th conversation",
        "mode": mode(args),
        "config": _config(policies[0]),
        "baselines": figures,
        "datasets": {
            name: {pname: t.figures(full=pname == "full_history") for pname, t in tallies.items()}
            for name, tallies in per_set.items()
        },
    }
    result["ratios"] = _ratios(ours, figures)
    result["targets"] = _targets(result)
    result["bound"] = bound
    if curve is not None:
        result["curve"] = curve
    result["machine"] = machine()
    _print(result, console)
    write_json(result, args.json)
    return result


def _config(policy: _Policy) -> dict[str, Any]:
    pruner = policy.pruner if isinstance(policy, _Ours) else None
    if pruner is None:
        return {}
    return {
        "summarizer": "ExtractiveSummarizer",
        "max_tokens": pruner.max_tokens,
        "target_tokens": pruner.target_tokens,
        "keep_turns": pruner.keep_turns,
        "max_summary_tokens": pruner.max_summary_tokens,
        "section_tokens": pruner.section_tokens,
    }


def _ratios(ours: dict[str, Any], peers: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, peer in peers.items():
        if name == "full_history":
            continue
        p50 = peer["ms_per_turn"]["p50"]
        out[f"ms_per_turn_p50_vs_{name}"] = (
            round(ours["ms_per_turn"]["p50"] / p50, 3) if p50 else None
        )
        mem = peer.get("peak_memory_kb")
        out[f"peak_memory_vs_{name}"] = round(ours["peak_memory_kb"] / mem, 3) if mem else None
        sent = peer["tokens_pruned"]
        out[f"tokens_vs_{name}"] = round(ours["tokens_pruned"] / sent, 3) if sent else None
    return out


def _targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sgd = result["datasets"].get("sgd_test", {}).get("graphthrift", {})
    values = {
        "saved_fraction_20plus": result.get("saved_fraction_20plus"),
        "fact_retention_sgd": sgd.get("fact_retention"),
        "prefix_stability": result.get("prefix_stability"),
        "ms_per_turn_p95": result["ms_per_turn"]["p95"],
    }
    out = {}
    for name, target in TARGETS.items():
        value = values[name]
        met = (
            None
            if value is None
            else (value < target if name.startswith("ms_") else value >= target)
        )
        out[name] = {"target": target, "value": value, "met": met}
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _print(result: dict[str, Any], console: Console) -> None:
    rows = {"graphthrift": result, **result["baselines"]}
    table = Table(
        title=f"bench history: {result['n_conversations']} conversations, {result['n_turns']} prompts, "
        f"max_tokens={result['max_tokens']}"
    )
    for col in (
        "policy",
        "tokens sent",
        "saved",
        "saved 20+",
        "fact retention",
        "prefix stable",
        "cacheable",
        "summary tok",
        "over budget",
        "ms p50",
        "ms p95",
        "peak KB",
    ):
        table.add_column(col, justify="right" if col != "policy" else "left")
    for name, f in rows.items():
        table.add_row(
            name,
            str(f["tokens_pruned"]),
            _fmt(f["saved_fraction"]),
            _fmt(f["saved_fraction_20plus"]),
            _fmt(f["fact_retention"]),
            _fmt(f["prefix_stability"]),
            _fmt(f["cacheable_fraction"]),
            _fmt(f["summary_tokens"]),
            _fmt(f["over_budget_fraction"]),
            _fmt(f["ms_per_turn"]["p50"]),
            _fmt(f["ms_per_turn"]["p95"]),
            _fmt(f.get("peak_memory_kb")),
        )
    console.print(table)
    per = Table(title="per data set (saved / fact retention / prefix stability)")
    per.add_column("data set")
    names = list(rows)
    for name in names:
        per.add_column(name, justify="right")
    for ds, figs in result["datasets"].items():
        per.add_row(
            ds,
            *(
                f"{_fmt(figs[n]['saved_fraction'])} / {_fmt(figs[n]['fact_retention'])} / {_fmt(figs[n]['prefix_stability'])}"
                if n in figs
                else "-"
                for n in names
            ),
        )
    console.print(per)
    targets = Table(title="targets (graphthrift)")
    for col in ("figure", "target", "value", "met"):
        targets.add_column(col)
    for name, t in result["targets"].items():
        targets.add_row(
            name,
            _fmt(t["target"]),
            _fmt(t["value"]),
            {True: "yes", False: "NO", None: "-"}[t["met"]],
        )
    console.print(targets)
    bound = result.get("bound")
    if bound:
        ceiling = ", ".join(
            f"{p['saved_fraction_20plus']:.3f} with a {p['summary_tokens']}-token summary"
            for p in bound["points"]
        )
        console.print(
            f"ceiling for any fold schedule at prefix stability {bound['prefix_stability']}"
            f" (saved on 20+ turns, folds chosen knowing the future): {ceiling}"
        )
