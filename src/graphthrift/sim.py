"""A deterministic simulated LLM provider: answers from an oracle, usage like a real provider.

The savings harness (``graphthrift bench``) needs a model that costs what a real one would
and answers well or badly for reasons the layers can change, without network or keys:

- **Answers** come from an ``Oracle``: the expected answer of each request the workload
  holds, looked up by the latest user message (and, to tell apart repeated short turns, the
  message before it). Easy requests are answered right with probability
  ``quality[model]["easy"]``, hard ones with ``quality[model]["hard"]``; the draw is a hash
  of model and request, so a run is reproducible. A wrong cheap answer hedges ("I'm not
  sure...") with probability ``hedge_when_wrong``, which is what a cascade router catches.
  When the expected item names ``evidence`` (say, the gold answer spans of a RAG question)
  and it is not in the prompt, the model cannot know it and hedges: context
  compression that drops the answer costs quality here, as it would for real.
  An item with ``tool_plan`` asks for those tool calls in turn (one per model call, counted
  by the tool results after the latest user message) before answering.
- **Usage** is counted with tiktoken (``graphthrift.text.tokens.count_messages`` for the prompt,
  ``count_text`` for the answer), the numbers a provider bills.
- **Prompt cache**, like OpenAI's: a prompt whose first 1,024 or more tokens repeat a
  prompt this provider saw before, for the same model and within ``cache_ttl`` seconds, has
  its common prefix reported as cached, rounded down to 128-token increments. The provider
  remembers ``cache_entries`` prompts per model (least recently used go first). The ledger
  prices cached tokens at the model's cached-input price.
- **Latency**: ``base_ms + input_ms_per_token * uncached + cached_ms_per_token * cached +
  output_ms_per_token * output`` per call, reported (``latency_ms``) and slept only with
  ``sleep=True``.

Framework-free: ``graphthrift.langchain.sim.SimulatedChatModel`` wraps it for LangChain.

Example:
    >>> oracle = Oracle()
    >>> oracle.add("What is 2 + 2?", "4")
    >>> provider = SimulatedProvider(oracle)
    >>> reply = provider.complete("gpt-4o", [{"role": "user", "content": "What is 2 + 2?"}])
    >>> reply.text, reply.usage.cached_tokens
    ('4', 0)
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphthrift.ledger.usage import Usage
from graphthrift.text.messages import Message, to_messages
from graphthrift.text.tokens import count_messages, count_text, encoding_name_for, get_encoding

__all__ = [
    "DEFAULT_QUALITY",
    "Expected",
    "LatencyModel",
    "Oracle",
    "PromptCache",
    "SimReply",
    "SimulatedProvider",
    "ToolCallRequest",
    "draw",
]

CACHE_MIN_TOKENS = 1024
CACHE_INCREMENT = 128
HEDGE = "I'm not sure; there is not enough information to answer that."
UNKNOWN = "I'm sorry, I can't help with that request."
WRONG = "The answer is something else entirely."
# P(correct) by model tier and difficulty; models not listed use "*".
DEFAULT_QUALITY: dict[str, dict[str, float]] = {
    "cheap": {"easy": 0.95, "hard": 0.30},
    "strong": {"easy": 0.99, "hard": 0.90},
}


def draw(*parts: str) -> float:
    """A deterministic uniform number in [0, 1) from ``parts``."""
    digest = hashlib.blake2b("|".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """One tool call the model will ask for: tool name and JSON-able arguments."""

    name: str
    args: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Expected:
    """What the oracle knows about one request.

    Attributes:
        answer: the right answer.
        hard: whether the request needs a strong model.
        evidence: groups of strings; a right answer needs, for every group, one of its
            strings in the prompt (empty: no such check).
        tool_plan: tool calls to make, in order, before answering.
        item_id: the workload item this request belongs to.
    """

    answer: str
    hard: bool = False
    evidence: tuple[tuple[str, ...], ...] = ()
    tool_plan: tuple[ToolCallRequest, ...] = ()
    item_id: str = ""


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


class Oracle:
    """Expected answers, keyed by the latest user message (and optionally the one before)."""

    def __init__(self) -> None:
        self._by_text: dict[str, Expected] = {}
        self._by_pair: dict[tuple[str, str], Expected] = {}

    def __len__(self) -> int:
        return len(self._by_text) + len(self._by_pair)

    def add(
        self, user_text: str, answer: str | Expected, *, previous: str | None = None
    ) -> Expected:
        """Register the expected answer to ``user_text`` (after ``previous``, if given)."""
        expected = answer if isinstance(answer, Expected) else Expected(answer)
        if previous is not None:
            self._by_pair[(_norm(previous), _norm(user_text))] = expected
        self._by_text.setdefault(_norm(user_text), expected)
        return expected

    def lookup(self, messages: Sequence[Message]) -> Expected | None:
        """The expected answer for a prompt, or None when the request is unknown."""
        last_user = next(
            (i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None
        )
        if last_user is None:
            return None
        text = _norm(messages[last_user].text)
        if last_user > 0:
            found = self._by_pair.get((_norm(messages[last_user - 1].text), text))
            if found is not None:
                return found
        return self._by_text.get(text)


class PromptCache:
    """A provider-side prefix cache: which prompt prefixes this provider has seen, per model.

    Args:
        max_entries: prompts remembered per model (least recently used are forgotten).
        ttl: seconds a prompt stays cached after its last use.
        clock: returns seconds (``time.monotonic`` by default); for tests.
    """

    def __init__(
        self,
        max_entries: int = 4096,
        ttl: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        # model -> first-block hash -> OrderedDict[prompt hash, (tokens, last used)]
        self._entries: dict[str, OrderedDict[str, tuple[tuple[int, ...], float]]] = {}
        self._lock = threading.Lock()

    def cached_tokens(self, model: str, tokens: Sequence[int]) -> int:
        """Tokens of ``tokens`` served from the cache, then remember ``tokens``."""
        now = self.clock()
        seq = tuple(tokens)
        best = 0
        with self._lock:
            entries = self._entries.setdefault(model, OrderedDict())
            expired = [k for k, (_, used) in entries.items() if now - used > self.ttl]
            for k in expired:
                del entries[k]
            if len(seq) >= CACHE_MIN_TOKENS:
                head = seq[:CACHE_MIN_TOKENS]
                for key, (other, _) in entries.items():
                    if other[:CACHE_MIN_TOKENS] != head:
                        continue
                    common = _common_prefix(seq, other)
                    if common > best:
                        best = common
                        hit = key
                if best:
                    entries[hit] = (entries[hit][0], now)
                    entries.move_to_end(hit)
            key = hashlib.blake2b(repr(seq).encode(), digest_size=12).hexdigest()
            entries[key] = (seq, now)
            entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)
        if best < CACHE_MIN_TOKENS:
            return 0
        return (best // CACHE_INCREMENT) * CACHE_INCREMENT

    def clear(self) -> None:
        """Forget every cached prompt."""
        with self._lock:
            self._entries.clear()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    step = 256
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Milliseconds of one call: a base plus per-token terms (cached input is cheaper)."""

    base_ms: float = 250.0
    input_ms_per_token: float = 0.02
    cached_ms_per_token: float = 0.002
    output_ms_per_token: float = 12.0

    def ms(self, usage: Usage) -> float:
        uncached = usage.input_tokens - usage.cached_tokens
        return (
            self.base_ms
            + self.input_ms_per_token * uncached
            + self.cached_ms_per_token * usage.cached_tokens
            + self.output_ms_per_token * usage.output_tokens
        )


@dataclass(frozen=True, slots=True)
class SimReply:
    """One simulated completion."""

    model: str
    text: str
    usage: Usage
    latency_ms: float
    correct: bool | None
    tool_calls: tuple[ToolCallRequest, ...] = ()
    item_id: str = ""
    hedged: bool = False


def _prompt_text(messages: Sequence[Message]) -> str:
    """The prompt as one string, the way the prefix cache compares prompts."""
    parts = []
    for m in messages:
        calls = "".join(f"<{c.name}:{c.args}>" for c in m.tool_calls)
        parts.append(f"<|{m.role}|>{m.text}{calls}")
    return "\n".join(parts)


def _tool_results_since_user(messages: Sequence[Message]) -> int:
    count = 0
    for m in reversed(messages):
        if m.role == "user":
            break
        count += m.role == "tool"
    return count


@dataclass
class SimulatedProvider:
    """The simulated provider; see the module docstring.

    Args:
        oracle: the workload's expected answers.
        quality: P(correct) per model name or tier (``"cheap"``/``"strong"``), per
            ``"easy"``/``"hard"``; a model missing from it uses its ``tiers`` entry.
        tiers: model name -> ``"cheap"`` or ``"strong"`` (default ``"strong"``).
        hedge_when_wrong: P(a wrong cheap answer says it is unsure).
        prompt_cache: the provider-side prefix cache (a fresh one by default).
        latency: the latency model.
        sleep: sleep for the simulated latency (default: only report it).
    """

    oracle: Oracle = field(default_factory=Oracle)
    quality: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: DEFAULT_QUALITY)
    tiers: Mapping[str, str] = field(default_factory=dict)
    hedge_when_wrong: float = 0.6
    prompt_cache: PromptCache = field(default_factory=PromptCache)
    latency: LatencyModel = field(default_factory=LatencyModel)
    sleep: bool = False

    def _p_correct(self, model: str, hard: bool) -> float:
        table = self.quality.get(model) or self.quality[self.tiers.get(model, "strong")]
        return float(table["hard" if hard else "easy"])

    def _answer(
        self, model: str, msgs: Sequence[Message], expected: Expected | None, prompt: str
    ) -> tuple[str, bool | None, tuple[ToolCallRequest, ...], bool]:
        if expected is None:
            return UNKNOWN, None, (), False
        done = _tool_results_since_user(msgs)
        if done < len(expected.tool_plan):
            return "", None, (expected.tool_plan[done],), False
        user = next((m.text for m in reversed(msgs) if m.role == "user"), "")
        if expected.evidence:
            haystack = _norm(prompt)
            if not all(any(_norm(e) in haystack for e in group) for group in expected.evidence):
                return HEDGE, False, (), True
        if draw(model, "ok", user, expected.item_id) < self._p_correct(model, expected.hard):
            return expected.answer, True, (), False
        cheap = self.tiers.get(model, "strong") == "cheap"
        if cheap and draw(model, "hedge", user, expected.item_id) < self.hedge_when_wrong:
            return HEDGE, False, (), True
        return WRONG, False, (), False

    def complete(
        self, model: str, messages: Iterable[Any], *, tools: Sequence[Any] = ()
    ) -> SimReply:
        """Answer ``messages`` (any message format ``graphthrift.text.messages`` reads) as ``model``."""
        msgs = to_messages(list(messages))
        prompt = _prompt_text(msgs)
        expected = self.oracle.lookup(msgs)
        text, correct, calls, hedged = self._answer(model, msgs, expected, prompt)
        input_tokens = int(count_messages(msgs, model))
        if tools:
            input_tokens += count_text(json.dumps(list(tools), sort_keys=True, default=str), model)
        encoding = get_encoding(encoding_name_for(model)[0])
        cached = self.prompt_cache.cached_tokens(
            model, encoding.encode(prompt, disallowed_special=())
        )
        output = count_text(text, model) + sum(
            3 + count_text(c.name, model) + count_text(json.dumps(dict(c.args)), model)
            for c in calls
        )
        usage = Usage(input_tokens, max(output, 1), min(cached, input_tokens))
        latency = self.latency.ms(usage)
        if self.sleep:
            time.sleep(latency / 1000.0)
        return SimReply(
            model=model,
            text=text,
            usage=usage,
            latency_ms=round(latency, 3),
            correct=correct,
            tool_calls=calls,
            item_id=expected.item_id if expected else "",
            hedged=hedged,
        )
