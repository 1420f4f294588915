"""History pruning that keeps tool pairs whole and the provider's prompt cache warm.

Long because: the fold is one algorithm (read the list, resolve the sticky boundary, choose
the new one, weigh an early fold, fold and keep, render, fit, recall) over one ``_Work``;
its steps share that state and one generator drives them sync and async.

Long agent threads are pruned so each model call stays under a token budget. The peers
(``trim_messages``, langmem's SummarizationNode, langchain's SummarizationMiddleware)
have three failure modes this module is built against:

- a cut between an AI message's tool calls and their ToolMessages, which providers reject.
  Here the window only ever starts at a cut point that no tool pair spans and that is not
  a ToolMessage;
- a summary rewritten from scratch on every fold, which drifts and loses facts. Here the
  summary only grows by appending a section, and is compacted once it passes its own cap;
- a boundary that moves every turn, so the prompt prefix changes and the prompt cache
  never hits. Here the boundary is sticky: nothing moves until the prompt passes the high
  watermark (``max_tokens``), then older turns are folded down to the low watermark
  (``target_tokens``) in one go. Between two folds every prompt extends the previous one.

The prompt is ``[system messages] [summary] [verbatim window]``. The state that makes the
boundary sticky is ``HistoryState``, a small JSON-serialisable dataclass that adapters keep
in LangGraph state, agent state or a LlamaIndex memory.

Example:
    >>> from graphthrift.text.messages import Message
    >>> pruner = HistoryPruner(max_tokens=44, target_tokens=36, max_summary_tokens=30, keep_turns=1)
    >>> chat = [Message("user", "My order id is A-1234."), Message("assistant", "Noted."),
    ...         Message("user", "Ship it to 5 Elm St, Boston."), Message("assistant", "Done."),
    ...         Message("user", "When does it arrive?")]
    >>> result = pruner.prune(chat)
    >>> [m.role for m in result.messages], result.folded
    (['user', 'user'], (0, 1, 2, 3))
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from graphthrift import diagnostics
from graphthrift.config import env_int
from graphthrift.errors import (
    ConfigError,
    HistoryConfigError,
    HistoryRequestTooLarge,
    HistoryStateError,
    UnsupportedMessage,
)
from graphthrift.history.fold_cost import DEFAULT_FOLD_PRICE_MODEL, CachePricing, fold_pays
from graphthrift.history.recall import FoldedTurn, FoldedTurnStore, RecalledSnippet
from graphthrift.history.state import RECALL_ID, SUMMARY_ID, HistoryState, PruneResult
from graphthrift.history.truncate import (
    MIN_TRUNCATED_TOKENS,
    message_tokens,
    truncate_message,
    truncate_text,
)
from graphthrift.kernel import reject_conflicts
from graphthrift.ledger.prices import default_price_book
from graphthrift.summarize.base import SECTION_NAME, Summarizer
from graphthrift.summarize.chat_model import ChatModelSummarizer
from graphthrift.summarize.extractive import ExtractiveSummarizer
from graphthrift.text.messages import Message, to_message
from graphthrift.text.tokens import TOKENS_REPLY_PRIMING, count_text

# The names this module held before the package was split by idea stay importable here.
__all__ = [
    "SUMMARY_ID",
    "HistoryConfigError",
    "HistoryPruner",
    "HistoryRequestTooLarge",
    "HistoryState",
    "HistoryStateError",
    "PruneResult",
    "UnsupportedMessage",
    "build_pruner",
    "prune_history",
    "truncate_text",
]

DEFAULT_SUMMARY_PREFIX = "Summary of the earlier conversation:"
DEFAULT_RECALL_PREFIX = "Recalled from earlier in this conversation:"
DEFAULT_RECALL_K = 10
DEFAULT_MAX_TOKENS = 8000
DEFAULT_KEEP_TURNS = 1
_JOIN_SLACK = 2  # tokens a section may add where it joins the summary (merges at the seam)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Ask:
    """A summarizer call the pruning steps need answered."""

    messages: list[Message]
    previous_summary: str
    max_tokens: int


@dataclass(frozen=True, slots=True)
class _Keep:
    """Folded turns to keep verbatim in the recall store."""

    tenant: str
    thread: str
    turns: list[FoldedTurn]


@dataclass(frozen=True, slots=True)
class _Recall:
    """A recall lookup the prompt needs answered."""

    tenant: str
    thread: str
    query: str
    k: int
    token_budget: int


_Step = _Ask | _Keep | _Recall
_NO_THREAD_WARNING = (
    "graphthrift: HistoryPruner has a recall store but the call names no thread, so nothing"
    " is kept or recalled (pass thread=, or configurable.thread_id in a LangGraph or"
    " create_agent run)"
)
#: (tenant, thread) a call keeps and recalls folded turns under; None: no recall.
Scope = tuple[str, str]


# ---------------------------------------------------------------- the pruner


def _setting(value: int | None, env: str | None, default: int) -> int:
    """Keyword first, then the ``GRAPHTHRIFT_`` setting (``graphthrift.config``), then the default."""
    if value is None and env:
        try:
            value = env_int(env, default)
        except ConfigError as exc:
            raise HistoryConfigError(env, exc.value, exc.rule) from None
    return default if value is None else value


def _check(name: str, value: object, low: int, high: int | None, rule: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HistoryConfigError(name, value, rule)
    if value < low or (high is not None and value > high):
        raise HistoryConfigError(name, value, rule)


@dataclass(slots=True)
class _Work:
    """The input list, read once: messages, their origin, tokens and cut points."""

    messages: list[Message]
    origin: list[int]
    tokens: list[int]
    truncated: list[bool]
    cut_ok: list[bool]  # a window may start here: not a ToolMessage, no tool pair spans it
    request: list[int]  # the latest human turn: always sent verbatim, never cut or left out
    stale: list[int]  # input indices of summary renders, never sent again
    tokens_in: int

    @property
    def n(self) -> int:
        return len(self.messages)


class HistoryPruner:
    """Tool-pair-safe sliding-window pruning with a sticky boundary and a running summary.

    Args:
        summarizer: writes summary sections (default ``ExtractiveSummarizer()``, no LLM).
        max_tokens: high watermark and hard budget of the prompt (env
            ``GRAPHTHRIFT_HISTORY_MAX_TOKENS``, default 8000). Passing it triggers a fold.
        target_tokens: low watermark a fold prunes down to (env
            ``GRAPHTHRIFT_HISTORY_TARGET_TOKENS``, default half of ``max_tokens``).
        keep_turns: last turns (a user message and everything after it) always kept
            verbatim, unless they alone break ``max_tokens`` (env
            ``GRAPHTHRIFT_HISTORY_KEEP_TURNS``, default 1: the current turn, tool calls
            included). A fold keeps as many more recent turns as ``target_tokens`` allows.
        max_summary_tokens: the summary's cap; past it the summary is compacted
            (env ``GRAPHTHRIFT_HISTORY_MAX_SUMMARY_TOKENS``, default 40% of ``max_tokens``).
        section_tokens: least budget of the section one fold appends; a section may use
            all the room left under the cap (default a quarter of the cap).
        compact_tokens: size a compaction brings the summary down to (default three
            quarters of the cap: compaction drops the least, and runs only past the cap).
        max_message_tokens: a longer message is sent truncated with a marker, the same way
            every turn (default half of ``max_tokens``).
        summary_role: role of the summary message (placed after the system messages),
            ``"user"`` (default) or ``"system"``. The summary is written from what users
            and tools said, so by default it does not carry a system prompt's authority
            (a tool result could plant instructions in it), and providers that take system
            text only at the start of a prompt accept it anywhere. Every adapter defaults
            to the same role.
        summary_prefix: first line of the summary message.
        model: model name for token counting (``None``: o200k_base, an estimate).
        oversized_request: what to do when the latest human turn alone exceeds
            ``max_tokens``: ``"send"`` (default) sends it whole anyway, flags the result
            ``over_budget`` and counts ``history_request_over_budget``; ``"raise"`` raises
            ``HistoryRequestTooLarge``. ``"send"`` is the default because the budget is a
            cost target, well under the model's context window, and an agent that stops
            on a long question is worse than one call over budget.
        fold_policy: ``"cost"`` (default) also folds before ``max_tokens`` when that is
            cheaper under the provider's prompt cache (``fold_pays``): the prompt is past
            ``target_tokens`` and the provider's cache minimum, the fold frees at least
            ``min_fold_tokens``, and carrying the history over ``horizon_turns`` costs more
            than the cache miss plus the summarizer call. ``"budget"`` folds only at
            ``max_tokens``. Either way a fold the budget forces is always taken.
        price_model: the ``provider:model`` whose cache pricing weighs early folds (via
            the ledger's ``PriceBook``, genai-prices); default ``model`` when it has a
            price, else ``DEFAULT_FOLD_PRICE_MODEL`` (Anthropic: cheap cached reads, so
            early folds pay only in long threads).
        cache_pricing: a ``CachePricing`` used as is, instead of ``price_model``'s.
        horizon_turns: turns a fold is expected to pay back over (default: as many user
            turns as the thread has had so far, at least 1).
        min_fold_tokens: least a cost-driven fold frees (default half the distance
            between the watermarks), so early folds do not run every turn.
        recall: a ``FoldedTurnStore``. Folded turns are kept in it verbatim, and each call
            given a ``thread`` recalls the ``recall_k`` folded turns most relevant to the
            latest user message into one message just before it (after the cached
            prefix), inside ``max_tokens`` and at most ``recall_tokens``. The window then
            folds once it passes ``max_tokens - recall_tokens``, so they always have room.
        recall_k: snippets recalled per call (default 10; focused snippets are short).
        recall_tokens: the recall message's cap (default a third of ``max_tokens``, at
            least 64 and at most 256: on the long multi-session set at 384 tokens an eighth
            kept 0.72 of the facts asked for, a third 0.80, a half 0.78, docs/history.md;
            the cap keeps a large budget's window, and so its cached prefix, clear of the
            providers' 1,024-token cache minimum);
            the room left under ``max_tokens`` bounds it too.

    The latest human turn (the last user message, with the user messages right before it)
    is always sent verbatim: it is never truncated, and when the budget cannot hold it with
    the tool round-trips that follow it, those round-trips are folded (whole pairs) and the
    request is sent right after the summary, before the kept window.

    Example:
        >>> pruner = HistoryPruner(max_tokens=4000)
        >>> state = None
        >>> history = [{"role": "system", "content": "You book tables."}]
        >>> for text in ["Table for 2 at Nopa, 8 pm.", "Make it 4 people."]:
        ...     history.append({"role": "user", "content": text})
        ...     result = pruner.prune(history, state)  # result.messages go to the model
        ...     state = result.state  # keep it with the thread (JSON: state.to_dict())
        ...     history.append({"role": "assistant", "content": "Done."})
        >>> result.tokens_out == result.tokens_in, state.summarizations
        (True, 0)
    """

    def __init__(
        self,
        *,
        summarizer: Summarizer | None = None,
        max_tokens: int | None = None,
        target_tokens: int | None = None,
        keep_turns: int | None = None,
        max_summary_tokens: int | None = None,
        section_tokens: int | None = None,
        compact_tokens: int | None = None,
        max_message_tokens: int | None = None,
        summary_role: Literal["system", "user"] = "user",
        summary_prefix: str = DEFAULT_SUMMARY_PREFIX,
        model: str | None = None,
        oversized_request: Literal["send", "raise"] = "send",
        fold_policy: Literal["cost", "budget"] = "cost",
        price_model: str | None = None,
        cache_pricing: CachePricing | None = None,
        horizon_turns: int | None = None,
        min_fold_tokens: int | None = None,
        recall: FoldedTurnStore | None = None,
        recall_k: int = DEFAULT_RECALL_K,
        recall_tokens: int | None = None,
    ) -> None:
        if oversized_request not in ("send", "raise"):
            raise HistoryConfigError(
                "oversized_request", oversized_request, "must be 'send' or 'raise'"
            )
        high = _setting(max_tokens, "GRAPHTHRIFT_HISTORY_MAX_TOKENS", DEFAULT_MAX_TOKENS)
        _check("max_tokens", high, 32, None, "must be an integer >= 32")
        low = _setting(target_tokens, "GRAPHTHRIFT_HISTORY_TARGET_TOKENS", high // 2)
        _check("target_tokens", low, 1, high, f"must be in (0, max_tokens={high}]")
        keep = _setting(keep_turns, "GRAPHTHRIFT_HISTORY_KEEP_TURNS", DEFAULT_KEEP_TURNS)
        _check("keep_turns", keep, 1, None, "must be >= 1 (the current turn is always kept)")
        default_cap = min(max(high * 2 // 5, 16), low - 1)
        cap = _setting(max_summary_tokens, "GRAPHTHRIFT_HISTORY_MAX_SUMMARY_TOKENS", default_cap)
        _check("max_summary_tokens", cap, 1, low - 1, f"must be in (0, target_tokens={low})")
        section = _setting(section_tokens, None, min(max(cap // 4, 8), cap))
        _check("section_tokens", section, 1, cap, f"must be in (0, {cap}]")
        compact = _setting(compact_tokens, None, max(cap * 3 // 4, 1))
        _check("compact_tokens", compact, 1, cap - 1, f"must be in (0, {cap})")
        per_message = _setting(max_message_tokens, None, max(high // 2, 32))
        _check("max_message_tokens", per_message, 32, high, f"must be in [32, {high}]")
        if summary_role not in ("system", "user"):
            raise HistoryConfigError("summary_role", summary_role, "must be 'system' or 'user'")
        self.summarizer: Summarizer = (
            summarizer if summarizer is not None else ExtractiveSummarizer(model=model)
        )
        if not hasattr(self.summarizer, "summarize") or not hasattr(self.summarizer, "asummarize"):
            raise HistoryConfigError(
                "summarizer", summarizer, "must implement summarize() and asummarize()"
            )
        self.max_tokens = high
        self.target_tokens = low
        self.keep_turns = keep
        self.max_summary_tokens = cap
        self.section_tokens = section
        self.compact_tokens = compact
        self.max_message_tokens = per_message
        self.summary_role: Literal["system", "user"] = summary_role
        self.summary_prefix = summary_prefix
        self.model = model
        self.oversized_request: Literal["send", "raise"] = oversized_request
        if fold_policy not in ("cost", "budget"):
            raise HistoryConfigError("fold_policy", fold_policy, "must be 'cost' or 'budget'")
        if cache_pricing is not None and price_model is not None:
            raise ConfigError(
                "cache_pricing", cache_pricing, "give cache_pricing or price_model, not both"
            )
        if cache_pricing is not None and not isinstance(cache_pricing, CachePricing):
            raise HistoryConfigError("cache_pricing", cache_pricing, "must be a CachePricing")
        if price_model is not None and not default_price_book().is_known(price_model):
            raise HistoryConfigError("price_model", price_model, "genai-prices has no price for it")
        if horizon_turns is not None:
            _check("horizon_turns", horizon_turns, 1, None, "must be an integer >= 1 turns")
        gap = _setting(min_fold_tokens, None, max((high - low) // 2, 1))
        _check("min_fold_tokens", gap, 1, high, f"must be in [1, max_tokens={high}]")
        if recall is not None and not isinstance(recall, FoldedTurnStore):
            raise HistoryConfigError("recall", recall, "must be a FoldedTurnStore")
        _check("recall_k", recall_k, 1, None, "must be an integer >= 1 snippets")
        recall_cap = _setting(recall_tokens, None, min(max(high // 3, 64), 256, high))
        _check("recall_tokens", recall_cap, 1, high, f"must be in [1, max_tokens={high}]")
        self.fold_policy: Literal["cost", "budget"] = fold_policy
        self.price_model = price_model
        self._cache_pricing = cache_pricing
        self.horizon_turns = horizon_turns
        self.min_fold_tokens = gap
        self.recall = recall
        self.recall_k = recall_k
        self.recall_tokens = recall_cap
        self.recall_prefix = DEFAULT_RECALL_PREFIX
        self._warned_no_thread = False

    @property
    def cache_pricing(self) -> CachePricing:
        """The cache pricing early folds are weighed at (resolved on first use)."""
        if self._cache_pricing is None:
            model = self.price_model
            if model is None:
                known = self.model is not None and default_price_book().is_known(self.model)
                model = self.model if known and self.model else DEFAULT_FOLD_PRICE_MODEL
            try:
                self._cache_pricing = CachePricing.for_model(model)
            except ConfigError:  # a priced model whose provider's cache rules are unknown
                self._cache_pricing = CachePricing.for_model(DEFAULT_FOLD_PRICE_MODEL)
        return self._cache_pricing

    # ------------------------------------------------------------ public API

    def prune(
        self,
        messages: Iterable[Any],
        state: HistoryState | Mapping[str, Any] | None = None,
        *,
        tenant: str = "",
        thread: str | None = None,
        recall: bool = True,
    ) -> PruneResult:
        """Prune ``messages`` for the next model call, folding turns if the budget demands.

        With a ``recall`` store and a ``thread``, folded turns are kept under (``tenant``,
        ``thread``) and, unless ``recall=False``, relevant ones are recalled into the prompt.
        """
        scope = self._scope(tenant, thread)
        return self._drive(self._steps(messages, state, fold=True, scope=scope, recall=recall))

    async def aprune(
        self,
        messages: Iterable[Any],
        state: HistoryState | Mapping[str, Any] | None = None,
        *,
        tenant: str = "",
        thread: str | None = None,
        recall: bool = True,
    ) -> PruneResult:
        """Async twin of ``prune``: the same steps, with the summarizer and store awaited."""
        scope = self._scope(tenant, thread)
        return await self._adrive(
            self._steps(messages, state, fold=True, scope=scope, recall=recall)
        )

    def view(
        self,
        messages: Iterable[Any],
        state: HistoryState | Mapping[str, Any] | None = None,
        *,
        tenant: str = "",
        thread: str | None = None,
    ) -> PruneResult:
        """The prompt for the current boundary and summary, without folding (no summarizer
        call); with a ``recall`` store and a ``thread``, recalled snippets included."""
        scope = self._scope(tenant, thread)
        return self._drive(self._steps(messages, state, fold=False, scope=scope, recall=True))

    async def aview(
        self,
        messages: Iterable[Any],
        state: HistoryState | Mapping[str, Any] | None = None,
        *,
        tenant: str = "",
        thread: str | None = None,
    ) -> PruneResult:
        """Async twin of ``view``."""
        scope = self._scope(tenant, thread)
        return await self._adrive(
            self._steps(messages, state, fold=False, scope=scope, recall=True)
        )

    def fold(
        self,
        messages: Iterable[Any],
        state: HistoryState | Mapping[str, Any] | None = None,
        *,
        tenant: str = "",
        thread: str | None = None,
    ) -> HistoryState:
        """Fold ``messages`` into the summary unconditionally (for memories that evict by themselves)."""
        scope = self._scope(tenant, thread)
        return self._drive(
            self._fold_steps(self._plain(messages), HistoryState.from_dict(state), scope)
        )

    async def afold(
        self,
        messages: Iterable[Any],
        state: HistoryState | Mapping[str, Any] | None = None,
        *,
        tenant: str = "",
        thread: str | None = None,
    ) -> HistoryState:
        """Async twin of ``fold``."""
        scope = self._scope(tenant, thread)
        return await self._adrive(
            self._fold_steps(self._plain(messages), HistoryState.from_dict(state), scope)
        )

    def _scope(self, tenant: str, thread: str | None) -> Scope | None:
        if self.recall is None:
            return None
        if thread is None:
            # recall asked for but nothing to scope it by: keep and recall nothing, and say so
            # once per pruner (a thread-less store would mix every conversation's turns)
            said = None if self._warned_no_thread else _NO_THREAD_WARNING
            self._warned_no_thread = True
            diagnostics.count("recall_no_thread", said)
            return None
        if not isinstance(tenant, str):
            raise HistoryConfigError("tenant", tenant, "must be a str ('' for the default tenant)")
        if not isinstance(thread, str) or not thread:
            raise HistoryConfigError("thread", thread, "must be a non-empty str")
        return (tenant, thread)

    def _answer(self, ask: _Step) -> Any:
        if isinstance(ask, _Ask):
            return self.summarizer.summarize(ask.messages, ask.previous_summary, ask.max_tokens)
        assert self.recall is not None
        if isinstance(ask, _Keep):
            return self.recall.add(ask.tenant, ask.thread, ask.turns)
        return self.recall.recall(
            ask.tenant, ask.thread, ask.query, k=ask.k, token_budget=ask.token_budget
        )

    async def _aanswer(self, ask: _Step) -> Any:
        if isinstance(ask, _Ask):
            return await self.summarizer.asummarize(
                ask.messages, ask.previous_summary, ask.max_tokens
            )
        assert self.recall is not None
        if isinstance(ask, _Keep):
            return await self.recall.aadd(ask.tenant, ask.thread, ask.turns)
        return await self.recall.arecall(
            ask.tenant, ask.thread, ask.query, k=ask.k, token_budget=ask.token_budget
        )

    def _drive(self, steps: Generator[_Step, Any, _T]) -> _T:
        try:
            ask = next(steps)
            while True:
                ask = steps.send(self._answer(ask))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _adrive(self, steps: Generator[_Step, Any, _T]) -> _T:
        try:
            ask = next(steps)
            while True:
                ask = steps.send(await self._aanswer(ask))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _plain(self, messages: Iterable[Any]) -> list[Message]:
        work = self._read(messages)
        return [m for m in work.messages if m.role != "system"]

    def summary_message(self, state: HistoryState) -> Message | None:
        """The message that carries the summary, or None while there is none."""
        text = state.summary
        if not text:
            return None
        return Message(self.summary_role, f"{self.summary_prefix}\n{text}", id=SUMMARY_ID)

    # ------------------------------------------------------------ the steps

    def _read(self, messages: Iterable[Any]) -> _Work:
        if isinstance(messages, str | bytes):
            raise UnsupportedMessage(
                0, type(messages).__name__, "pass a list of messages, not a string"
            )
        msgs: list[Message] = []
        origin: list[int] = []
        stale: list[int] = []
        tokens_in = 0
        for i, raw in enumerate(messages):
            if raw is None:
                raise UnsupportedMessage(i, "NoneType", "None is not a message")
            try:
                m = to_message(raw)
            except TypeError as exc:
                raise UnsupportedMessage(i, type(raw).__name__, str(exc)) from None
            if m.id is not None and m.id.startswith(SUMMARY_ID):
                stale.append(i)
                continue
            msgs.append(m)
            origin.append(i)
        tokens = [message_tokens(m, self.model) for m in msgs]
        tokens_in = sum(tokens) + (TOKENS_REPLY_PRIMING if msgs else 0)
        truncated = [False] * len(msgs)
        request = self._request(msgs)
        for j, t in enumerate(tokens):
            if t > self.max_message_tokens and j not in request:
                cut = truncate_message(msgs[j], self.max_message_tokens, self.model)
                cut_tokens = message_tokens(cut, self.model)
                if cut_tokens < t:
                    msgs[j], tokens[j], truncated[j] = cut, cut_tokens, True
                    diagnostics.count("history_message_truncated")
        return _Work(
            msgs, origin, tokens, truncated, self._cut_points(msgs), request, stale, tokens_in
        )

    @staticmethod
    def _request(msgs: Sequence[Message]) -> list[int]:
        """The latest human turn: the last user message and the user messages right before it."""
        last = next((i for i in range(len(msgs) - 1, -1, -1) if msgs[i].role == "user"), None)
        if last is None:
            return []
        first = last
        while first > 0 and msgs[first - 1].role == "user":
            first -= 1
        return list(range(first, last + 1))

    @staticmethod
    def _cut_points(msgs: Sequence[Message]) -> list[bool]:
        """Where a window may start: not on a ToolMessage and not inside a tool pair."""
        n = len(msgs)
        issued: dict[str, int] = {}
        spans = [0] * (n + 2)
        for k, m in enumerate(msgs):
            for call in m.tool_calls:
                if call.id:
                    issued[call.id] = k
            if m.role == "tool" and m.tool_call_id in issued:
                j = issued[m.tool_call_id]
                spans[j + 1] += 1
                spans[k + 1] -= 1
        ok = [False] * (n + 1)
        depth = 0
        for p in range(n + 1):
            depth += spans[p]
            ok[p] = depth == 0 and (p == n or msgs[p].role != "tool")
        return ok

    def _resolve(self, work: _Work, state: HistoryState) -> tuple[int, list[int]]:
        """Find the sticky boundary in this list, stepping back to a cut point if needed,
        and the held human turn behind it (moved with the boundary if the list shifted)."""
        b = self._boundary(work, state)
        shift = b - state.folded
        while b > 0 and not work.cut_ok[b]:
            b -= 1  # show more rather than hide something never summarized
        held = [
            i + shift
            for i in state.held
            if 0 <= i + shift < b and work.messages[i + shift].role == "user"
        ]
        return b, held

    def _boundary(self, work: _Work, state: HistoryState) -> int:
        b = state.folded
        if b:
            through = state.folded_through_id
            if through is not None:
                if not (b <= work.n and work.messages[b - 1].id == through):
                    found = next(
                        (i for i in range(work.n - 1, -1, -1) if work.messages[i].id == through),
                        None,
                    )
                    b = 0 if found is None else found + 1
                    if found is None:
                        diagnostics.count(
                            "history_boundary_lost",
                            "graphthrift: the folded message %s is no longer in the history; the summary is kept and the boundary restarts at 0",
                            through,
                        )
            elif b > work.n:
                diagnostics.count(
                    "history_boundary_lost",
                    "graphthrift: the history is shorter (%d) than the folded count (%d); the boundary restarts at 0",
                    work.n,
                    b,
                )
                b = 0
        return b

    def _layout(
        self, work: _Work, b: int, held: Sequence[int]
    ) -> tuple[list[int], list[int], list[int], list[int]]:
        """Positions of pinned systems, the window's leading systems, the human turns behind
        the boundary that are still sent (after the summary), and the rest."""
        pinned = [i for i in range(b) if work.messages[i].role == "system"]
        lead_end = b
        while lead_end < work.n and work.messages[lead_end].role == "system":
            lead_end += 1
        request = sorted({i for i in (*held, *work.request) if i < b})
        return pinned, list(range(b, lead_end)), request, list(range(lead_end, work.n))

    def _summary_tokens(self, sections: Sequence[str]) -> int:
        text = "\n".join(s for s in sections if s)
        if not text:
            return 0
        return message_tokens(
            Message(self.summary_role, f"{self.summary_prefix}\n{text}"), self.model
        )

    def _steps(
        self,
        messages: Iterable[Any],
        state_in: HistoryState | Mapping[str, Any] | None,
        *,
        fold: bool,
        scope: Scope | None = None,
        recall: bool = False,
    ) -> Generator[_Step, Any, PruneResult]:
        state = HistoryState.from_dict(state_in)
        work = self._read(messages)
        n = work.n
        b, held = self._resolve(work, state)
        sys_prefix = [0] * (n + 1)
        suffix = [0] * (n + 1)
        for i in range(n):
            sys_prefix[i + 1] = sys_prefix[i] + (
                work.tokens[i] if work.messages[i].role == "system" else 0
            )
        for i in range(n - 1, -1, -1):
            suffix[i] = suffix[i + 1] + work.tokens[i]
        base = TOKENS_REPLY_PRIMING
        request_tokens = sum(work.tokens[i] for i in work.request)
        if request_tokens + base > self.max_tokens:
            if self.oversized_request == "raise":
                raise HistoryRequestTooLarge(request_tokens + base, self.max_tokens)
            diagnostics.count(
                "history_request_over_budget",
                "graphthrift: the latest user turn alone is %d tokens, over max_tokens=%d; "
                "it is sent whole anyway",
                request_tokens + base,
                self.max_tokens,
            )

        def total(p: int, summary_tokens: int) -> int:
            # A fold to p sends the latest human turn behind p after the summary; earlier
            # held turns are dropped by the fold (the summary has them).
            pinned = sum(work.tokens[i] for i in work.request if i < p)
            return base + sys_prefix[p] + suffix[p] + summary_tokens + pinned

        summary_now = self._summary_tokens(state.sections)
        forced = b < n and not work.cut_ok[b]  # an orphan ToolMessage would open the window
        held_extra = sum(work.tokens[i] for i in held if i not in work.request)
        # With recall the window leaves the recalled turns their room under the budget, once
        # there are folded turns to recall: before the first fold the room would only make
        # the window fold earlier and lose recent turns for nothing.
        reserve = self.recall_tokens if scope is not None and state.folded_total else 0
        over = total(b, summary_now) + held_extra + reserve > self.max_tokens
        new_b, compacted = b, False
        folded_now: tuple[int, ...] = ()
        if fold and n and (forced or over):
            summary_text = count_text(state.summary, self.model)
            new_b = self._choose(work, b, summary_now, summary_text, total, over)
        elif fold and n and self.fold_policy == "cost":
            new_b = self._fold_if_it_pays(work, b, state, summary_now, total, held_extra)
        if new_b > b:
            to_fold = [
                work.messages[i] for i in range(b, new_b) if work.messages[i].role != "system"
            ]
            folded_now = tuple(
                work.origin[i] for i in range(b, new_b) if work.messages[i].role != "system"
            )
            compactions_before = state.compactions
            state = yield from self._fold_steps(to_fold, state, scope)
            compacted = state.compactions > compactions_before
        if new_b > b:
            held = []  # a fold drops the older held turns: its summary has them
        b = new_b
        held = sorted({i for i in (*held, *work.request) if i < b})
        state = replace(
            state,
            folded=b,
            folded_through_id=work.messages[b - 1].id if b else None,
            held=held,
        )
        result = self._render(work, b, state, folded_now, compacted)
        if recall and scope is not None and state.folded_total and not result.over_budget:
            result = yield from self._recall_steps(work, result, scope)
        return result

    def _fold_if_it_pays(
        self,
        work: _Work,
        b: int,
        state: HistoryState,
        summary_now: int,
        total: Callable[[int, int], int],
        held_extra: int,
    ) -> int:
        """An early fold (to the low watermark) when it costs less than carrying the history."""
        now = total(b, summary_now) + held_extra
        pricing = self.cache_pricing
        # Below the low watermark, or below the provider's cache minimum, the budget decides:
        # such prompts cost little, and every fold loses some detail.
        if now <= self.target_tokens or now < pricing.min_cacheable_tokens:
            return b
        summary_text = count_text(state.summary, self.model)
        q = self._choose(work, b, summary_now, summary_text, total, True)
        if q <= b:
            return b
        folded = sum(work.tokens[i] for i in range(b, q) if work.messages[i].role != "system")
        section = min(max(self.section_tokens, self.max_summary_tokens - summary_text), folded)
        after = total(q, (summary_now or self._summary_tokens(["x"])) + section)
        if now - after < self.min_fold_tokens:
            return b
        llm = not isinstance(self.summarizer, ExtractiveSummarizer)
        users = sum(1 for m in work.messages if m.role == "user") + state.folded_total // 2
        if fold_pays(
            pricing,
            prompt_tokens=now,
            folded_prompt_tokens=after,
            horizon_turns=self.horizon_turns or max(users, 1),
            summary_input_tokens=folded + summary_text if llm else 0,
            summary_output_tokens=section if llm else 0,
        ):
            diagnostics.count("history_fold_paid")
            return q
        return b

    def _recall_steps(
        self, work: _Work, result: PruneResult, scope: Scope
    ) -> Generator[_Step, Any, PruneResult]:
        """Recalled folded turns in one message just before the latest human turn, in budget."""
        if not work.request:
            return result
        query = "\n".join(work.messages[i].text for i in work.request).strip()
        header = message_tokens(Message(self.summary_role, self.recall_prefix), self.model)
        room = min(self.recall_tokens, self.max_tokens - result.tokens_out) - header
        if not query or room <= 0:
            return result
        found: list[RecalledSnippet] = yield _Recall(*scope, query, self.recall_k, room)
        shown = {m.text for m in result.messages}
        snippets = [s for s in found if s.text not in shown]
        while snippets:
            message = self.render_recall(snippets)
            size = message_tokens(message, self.model)
            if result.tokens_out + size <= self.max_tokens:
                break
            snippets.remove(min(snippets, key=lambda s: s.score))
        if not snippets:
            return result
        first = work.origin[work.request[0]]
        at = result.origin.index(first) if first in result.origin else len(result.origin)
        diagnostics.count("history_recalled")
        return replace(
            result,
            messages=[*result.messages[:at], message, *result.messages[at:]],
            origin=(*result.origin[:at], None, *result.origin[at:]),
            tokens_out=result.tokens_out + size,
            recalled=tuple(snippets),
        )

    def render_recall(self, snippets: Sequence[RecalledSnippet]) -> Message:
        """The recall message for ``snippets``: the recall header, then ``[role] text`` lines
        (what ``prune`` places before the latest human turn; memory blocks render it too)."""
        lines = [f"[{s.role}] {s.text}" for s in snippets]
        return Message(self.summary_role, "\n".join([self.recall_prefix, *lines]), id=RECALL_ID)

    def _fold_steps(
        self, to_fold: list[Message], state: HistoryState, scope: Scope | None = None
    ) -> Generator[_Step, Any, HistoryState]:
        """Append a section for ``to_fold``; compact the summary once it passes its cap.

        With a recall scope the folded turns are first kept verbatim, numbered by
        ``folded_total`` (so a destructive rewrite never reuses a number).
        """
        sections = list(state.sections)
        if to_fold and scope is not None:
            turns = [
                FoldedTurn(state.folded_total + j, m.role, m.text)
                for j, m in enumerate(to_fold)
                if m.text.strip()
            ]
            if turns:
                yield _Keep(*scope, turns)
        if to_fold:
            # A section may use whatever room the cap has left, and at least section_tokens.
            room = self.max_summary_tokens - count_text(state.summary, self.model)
            budget = max(self.section_tokens, room)
            section = yield _Ask(to_fold, state.summary, budget)
            section = self._bounded(section, budget, "history_section_over_budget")
            if section:
                sections.append(section)
        compacted = False
        if count_text("\n".join(sections), self.model) > self.max_summary_tokens:
            asked = [Message("system", s, name=SECTION_NAME) for s in sections]
            compact = yield _Ask(asked, "", self.compact_tokens)
            sections = [
                self._bounded(compact, self.compact_tokens, "history_compaction_over_budget")
            ]
            compacted = True
        return replace(
            state,
            sections=[s for s in sections if s],
            summarizations=state.summarizations + 1,
            compactions=state.compactions + int(compacted),
            folded_total=state.folded_total + len(to_fold),
        )

    def _choose(
        self,
        work: _Work,
        b: int,
        summary_now: int,
        summary_text_tokens: int,
        total: Callable[[int, int], int],
        over: bool,
    ) -> int:
        """The new boundary: fold whole turns down to the low watermark, keeping the last turns."""
        n = work.n
        if not over:  # only an orphan ToolMessage to move out of the window's first place
            return next(q for q in range(b + 1, n + 1) if work.cut_ok[q])
        conv = [0] * (n + 1)
        for i in range(n):
            conv[i + 1] = conv[i] + (0 if work.messages[i].role == "system" else work.tokens[i])
        # The latest human turn is sent anyway: a boundary inside it or right after it
        # would fold nothing but the request, and save nothing.
        inside = range(work.request[0] + 1, work.request[-1] + 2) if work.request else range(0)
        starts = [
            q
            for q in range(b, n)
            if work.cut_ok[q] and work.messages[q].role == "user" and q not in inside
        ]
        limit = starts[-self.keep_turns] if len(starts) > self.keep_turns else b
        overhead = summary_now or self._summary_tokens(["x"])
        section = max(self.section_tokens, self.max_summary_tokens - summary_text_tokens)

        def predicted(q: int) -> int:  # the worst case: the new section fills its budget
            return total(q, overhead + min(section, conv[q] - conv[b]) + _JOIN_SLACK)

        chosen = b
        for q in starts:
            if q <= b or q > limit:
                continue
            chosen = q
            if predicted(q) <= self.target_tokens:
                break
        if chosen == b and not work.cut_ok[b]:
            chosen = next(q for q in range(b + 1, n + 1) if work.cut_ok[q])
        if chosen > b and predicted(chosen) <= self.max_tokens:
            return chosen
        # The last turns alone break the hard budget: fold further, turn starts first,
        # then any cut point, and never the last message.
        # Like any fold, go down to the low watermark, so the next calls extend this prompt.
        # The latest human turn is never lost: behind the boundary it is sent after the summary.
        later = [q for q in starts if q > chosen] + [
            q
            for q in range(chosen + 1, n)
            if work.cut_ok[q] and q not in starts and q not in inside
        ]
        fits = [q for q in later if predicted(q) <= self.max_tokens]
        low = [q for q in fits if predicted(q) <= self.target_tokens]
        if low or fits:
            return (low or fits)[0]
        return max([chosen, *later])

    def _bounded(self, text: str, limit: int, counter: str) -> str:
        text = (text or "").strip()
        if text and count_text(text, self.model) > limit:
            diagnostics.count(
                counter,
                "graphthrift: the summarizer returned more than %d tokens; truncated",
                limit,
            )
            text = truncate_text(text, limit, self.model)
        return text

    def _render(
        self, work: _Work, b: int, state: HistoryState, folded_now: tuple[int, ...], compacted: bool
    ) -> PruneResult:
        pinned, lead, request, rest = self._layout(work, b, state.held)
        summary = self.summary_message(state)
        order: list[int | None] = [
            *pinned,
            *lead,
            *([None] if summary else []),
            *request,
            *rest,
        ]
        msgs: list[Message] = []
        sizes: list[int] = []
        for p in order:
            if p is None:
                assert summary is not None
                msgs.append(summary)
                sizes.append(self._summary_tokens(state.sections))
            else:
                msgs.append(work.messages[p])
                sizes.append(work.tokens[p])
        truncated = {p for p in order if p is not None and work.truncated[p]}
        tokens_out = sum(sizes) + (TOKENS_REPLY_PRIMING if msgs else 0)
        over = False
        if tokens_out > self.max_tokens:
            msgs, sizes, fitted = self._fit(msgs, sizes, order, set(work.request))
            truncated |= fitted
            tokens_out = sum(sizes) + TOKENS_REPLY_PRIMING
            over = tokens_out > self.max_tokens
            if over:
                diagnostics.count(
                    "history_over_budget",
                    "graphthrift: prompt of %d tokens still exceeds max_tokens=%d after pruning",
                    tokens_out,
                    self.max_tokens,
                )
        sent = {p for p in order if p is not None}
        hidden = sorted([work.origin[i] for i in range(work.n) if i not in sent] + work.stale)
        return PruneResult(
            messages=msgs,
            origin=tuple(None if p is None else work.origin[p] for p in order),
            state=state,
            folded=folded_now,
            hidden=tuple(hidden),
            truncated=tuple(sorted(work.origin[p] for p in truncated)),
            tokens_in=work.tokens_in,
            tokens_out=tokens_out,
            summarized=bool(folded_now) or compacted,
            compacted=compacted,
            over_budget=over,
        )

    def _fit(
        self,
        msgs: list[Message],
        sizes: list[int],
        order: list[int | None],
        request: set[int],
    ) -> tuple[list[Message], list[int], set[int]]:
        """Shrink the largest messages until the prompt fits; rare, and never drops one.

        The summary is left whole: it lives in the state, so a cut made here would differ
        from turn to turn (and from a destructive rewrite of it). The latest human turn is
        left whole: it is the task.
        """
        msgs, sizes = list(msgs), list(sizes)
        fitted: set[int] = set()
        stuck: set[int] = {k for k, p in enumerate(order) if p is None or p in request}
        for _ in range(len(msgs) * 3):
            excess = sum(sizes) + TOKENS_REPLY_PRIMING - self.max_tokens
            candidates = [
                k
                for k in range(len(sizes))
                if k not in stuck and sizes[k] > MIN_TRUNCATED_TOKENS * 2
            ]
            if excess <= 0 or not candidates:
                break
            k = max(candidates, key=sizes.__getitem__)
            cut = truncate_message(
                msgs[k], max(sizes[k] - excess, MIN_TRUNCATED_TOKENS * 2), self.model
            )
            new_size = message_tokens(cut, self.model)
            if new_size >= sizes[k]:
                stuck.add(k)
                continue
            msgs[k], sizes[k] = cut, new_size
            p = order[k]
            if p is not None:
                fitted.add(p)
        return msgs, sizes, fitted


def prune_history(
    messages: Iterable[Any],
    state: HistoryState | Mapping[str, Any] | None = None,
    **settings: Any,
) -> PruneResult:
    """One-shot ``HistoryPruner(**settings).prune(messages, state)``.

    Example:
        >>> prune_history([{"role": "user", "content": "hi"}], max_tokens=100).tokens_out
        7
    """
    return HistoryPruner(**settings).prune(messages, state)


def build_pruner(
    owner: str,
    pruner: HistoryPruner | None = None,
    *,
    summary_model: Any = None,
    **settings: Any,
) -> HistoryPruner:
    """An adapter's pruner: ``pruner`` itself, or one built from ``settings``.

    ``summary_model`` (a chat model) builds a ``ChatModelSummarizer``. ``None`` settings are
    not given. Conflicting arguments raise ``ConfigError`` instead of being ignored:
    ``pruner`` with any setting (or a ``summary_role`` other than the pruner's), and
    ``summarizer`` with ``summary_model``.
    """
    given = {k: v for k, v in settings.items() if v is not None}
    if pruner is not None:
        role = given.pop("summary_role", None)
        clash: dict[str, Any] = {**given, "summary_model": summary_model}
        if role is not None and role != pruner.summary_role:
            clash["summary_role"] = role
        reject_conflicts(owner, "pruner", pruner, **clash)
        return pruner
    reject_conflicts(owner, "summarizer", given.get("summarizer"), summary_model=summary_model)
    if summary_model is not None:
        given["summarizer"] = ChatModelSummarizer(summary_model)
    return HistoryPruner(**given)
