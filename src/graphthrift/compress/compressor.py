"""Query-aware compression of retrieved chunks before the expensive call.

Retrieved chunks often carry one relevant sentence in three paragraphs of noise. The
`ExtractiveCompressor` keeps the sentences most likely to answer the question, in their
original order and verbatim, up to a token budget. It needs no torch and no LLM: every
sentence is scored lexically (BM25 over the request's own sentences, exact matches of the
question's numbers and identifiers, the answer type the question asks for, and how
much of the question the sentence's chunk covers). An embedder is consulted only for the
question and a short list of sentences, and by default only when the lexical evidence is
weak, because embedding every sentence costs more than the 15 ms per 1,000 tokens we aim for.

Two ways to size the output, both measured in tokens of the downstream ``model``:

- ``target_ratio``: the *kept fraction*, in (0, 1]: kept tokens / original tokens.
  (``CompressionResult.ratio`` and the benchmark report the inverse, original / kept.)
- ``max_tokens``: an absolute budget. With both, the smaller budget wins.

The output never exceeds the budget: sentences are kept whole or not at all, and a
sentence longer than ``max_sentence_tokens`` is first cut into pieces at clause or word
boundaries (never inside a number, an identifier or a URL).

Example:
    >>> c = ExtractiveCompressor(target_ratio=0.4, embedder=False)
    >>> r = c.compress("When was the bridge opened?", [
    ...     "The bridge opened in 1932. It is painted red. Tourists like it.",
    ...     "Bananas are yellow. They grow in bunches.",
    ... ])
    >>> r.texts[0]
    'The bridge opened in 1932.'
"""

from __future__ import annotations

import atexit
import math
import os
import re
import threading
import time
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from graphthrift import diagnostics
from graphthrift.errors import GraphthriftError
from graphthrift.ledger.records import TAG_FIELDS, LedgerRecord, clean_tag
from graphthrift.text.tokens import encoding_name_for, get_encoding

__all__ = [
    "BaseCompressor",
    "CompressionResult",
    "Compressor",
    "ExtractiveCompressor",
    "InvalidCompressionTarget",
    "book_savings",
    "compression_record",
    "defer_saving",
    "drop_savings",
    "flush_savings",
    "normalise_answer_text",
    "resolve_budget",
    "split_sentences",
]

DEFAULT_TARGET_RATIO = 1 / 3
Scope = Literal["global", "chunk"]
Semantic = Literal["auto", "always", "never"]


# -- errors and results ----------------------------------------------------------------------


class InvalidCompressionTarget(GraphthriftError, ValueError):
    """A budget that cannot be honoured: a kept fraction outside (0, 1] or a negative size."""

    def __init__(self, name: str, value: object, allowed: str) -> None:
        self.name, self.value, self.allowed = name, value, allowed
        hint = ""
        if name == "target_ratio" and isinstance(value, int | float) and value > 1:
            hint = f" (to compress {value}x, pass target_ratio={1 / value:.3g})"
        super().__init__(f"{name} must be {allowed}, got {value!r}{hint}")


@dataclass(frozen=True, slots=True)
class CompressionResult:
    """What a compressor kept, chunk by chunk, and what it saved.

    Attributes:
        texts: the kept text of each input chunk, in input order; ``""`` when the chunk was
            dropped entirely.
        original_tokens: tokens of all input chunks (each counted on its own).
        kept_tokens: tokens of all non-empty ``texts``; never more than ``budget``.
        budget: the token budget the compressor worked to.
        chunk_original_tokens / chunk_kept_tokens: the same counts per chunk.
        kept_sentences: per chunk, the indices (into ``split_sentences`` of that chunk)
            of the kept sentences; empty for backends that do not select sentences.
        compressor: the backend's name, e.g. ``"extractive"``.
        model: the model whose tokenizer counted the tokens, if given.
        elapsed_ms: wall time of the compression.
        details: backend specifics (e.g. whether the embedder was used).
    """

    texts: tuple[str, ...]
    original_tokens: int
    kept_tokens: int
    budget: int
    chunk_original_tokens: tuple[int, ...] = ()
    chunk_kept_tokens: tuple[int, ...] = ()
    kept_sentences: tuple[tuple[int, ...], ...] = ()
    compressor: str = "extractive"
    model: str | None = None
    elapsed_ms: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def indices(self) -> tuple[int, ...]:
        """Indices of the input chunks that kept any text, in input order."""
        return tuple(i for i, t in enumerate(self.texts) if t)

    @property
    def removed_tokens(self) -> int:
        """Tokens the compression saved: ``original_tokens - kept_tokens``."""
        return max(self.original_tokens - self.kept_tokens, 0)

    @property
    def ratio(self) -> float:
        """Compression ratio, original ÷ kept (3.0 means a third was kept).

        1.0 for empty input, ``math.inf`` when everything was dropped.
        """
        if self.kept_tokens:
            return self.original_tokens / self.kept_tokens
        return 1.0 if self.original_tokens == 0 else math.inf

    @property
    def kept_fraction(self) -> float:
        """kept ÷ original, the quantity ``target_ratio`` sets (1.0 for empty input)."""
        return self.kept_tokens / self.original_tokens if self.original_tokens else 1.0

    def text(self, separator: str = "\n\n") -> str:
        """The kept chunks joined into one context string."""
        return separator.join(t for t in self.texts if t)


# -- the protocol and the shared plumbing ------------------------------------------------------


@runtime_checkable
class Compressor(Protocol):
    """Anything that shortens retrieved chunks for a question, within a token budget.

    ``ledger`` and ``tags`` let an adapter route the saving to the cost ledger with the
    caller's tags (tenant_id, node, thread_id, ...); ``max_tokens`` / ``target_ratio``
    override the compressor's own budget for one call.
    """

    name: str

    def compress(
        self,
        question: str,
        chunks: Sequence[str],
        *,
        max_tokens: int | None = None,
        target_ratio: float | None = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> CompressionResult: ...

    async def acompress(
        self,
        question: str,
        chunks: Sequence[str],
        *,
        max_tokens: int | None = None,
        target_ratio: float | None = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> CompressionResult: ...


def resolve_budget(original_tokens: int, target_ratio: float | None, max_tokens: int | None) -> int:
    """The token budget: the smaller of ``floor(target_ratio * original)`` and ``max_tokens``."""
    budget = original_tokens
    if target_ratio is not None:
        budget = min(budget, math.floor(target_ratio * original_tokens + 1e-9))
    if max_tokens is not None:
        budget = min(budget, max_tokens)
    return max(budget, 0)


def _check_target_ratio(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidCompressionTarget("target_ratio", value, "a number in (0, 1]")
    if not (0 < value <= 1) or math.isnan(value):
        raise InvalidCompressionTarget("target_ratio", value, "in (0, 1] (kept / original)")
    return float(value)


def _check_max_tokens(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidCompressionTarget("max_tokens", value, "an int >= 0")
    return value


def _env_number(env: str, kind: type[float] | type[int]) -> Any:
    raw = os.environ.get(env)
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise InvalidCompressionTarget(env, raw, f"a {kind.__name__}") from None


def _check_chunks(question: object, chunks: object) -> list[str]:
    """Reject a bare string (it would be read character by character) and non-text items."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if isinstance(chunks, str | bytes):
        raise TypeError("chunks must be a sequence of strings, not one str; wrap it: [text]")
    if not isinstance(chunks, Iterable):
        raise TypeError(f"chunks must be a sequence of strings, got {type(chunks).__name__}")
    items = list(chunks)
    for i, chunk in enumerate(items):
        if not isinstance(chunk, str):
            raise TypeError(
                f"chunks[{i}] is {type(chunk).__name__}, not str; pass the text of each "
                "chunk (the adapters pass non-text nodes through untouched)"
            )
    return items


def compression_record(
    result: CompressionResult,
    *,
    model: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> LedgerRecord:
    """The ledger row for one compression: ``saved_tokens`` is what it removed.

    ``model`` is the downstream model the saving is priced at (the ledger prices it);
    ``tags`` may hold any ledger tag (tenant_id, feature, node, thread_id, ...).
    """
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {
        "compressor": result.compressor,
        "kept_tokens": result.kept_tokens,
        "budget": result.budget,
        "chunks": len(result.texts),
        "kept_chunks": len(result.indices),
    }
    for key, value in (tags or {}).items():
        if key in TAG_FIELDS:
            values[key] = clean_tag(key, value)
        elif value is not None:
            extra.setdefault("tags", {})[key] = str(value)[:200]
    values["model"] = model or values.get("model") or result.model
    return LedgerRecord(
        kind="compression",
        layer="compression",
        input_tokens=result.original_tokens,
        saved_tokens=result.removed_tokens,
        latency_ms=round(result.elapsed_ms, 3),
        usage_source="estimated",
        extra=extra,
        **values,
    )


# -- savings that wait for the model call --------------------------------------------------------
#
# A compression saves input tokens of the call that follows it: priced at that call's model, and
# only if that call happens. When the answer comes from a cache instead, the cache books the
# whole call, and the compression saving must not be booked as well (each saving once). So an
# adapter may hold the saving here until it knows: ``book_savings`` prices it at the model
# actually called, ``drop_savings`` forgets it. A saving nobody resolves within
# ``_PENDING_TTL_S`` (or pushed out by ``_PENDING_MAX``) is booked at the compressor's model.

_PENDING_MAX = 10_000
_PENDING_TTL_S = 3600.0
_PENDING: OrderedDict[str, tuple[Any, LedgerRecord, float]] = OrderedDict()
_PENDING_LOCK = threading.Lock()
_AT_EXIT: list[bool] = []


def _write_saving(ledger: Any, record: LedgerRecord) -> None:
    try:
        ledger.record(record)
    except Exception as exc:  # a closed ledger must not fail the user's request
        diagnostics.count(
            "compression_ledger_error", "graphthrift: compression not recorded: %s", exc
        )


def _expire(now: float) -> list[tuple[Any, LedgerRecord]]:
    out = []
    while _PENDING:
        key, (ledger, record, born) = next(iter(_PENDING.items()))
        if len(_PENDING) <= _PENDING_MAX and now - born < _PENDING_TTL_S:
            break
        del _PENDING[key]
        out.append((ledger, record))
    return out


def defer_saving(record: LedgerRecord, ledger: Any) -> str:
    """Hold a compression's ledger row until the call it shrank is known; return its key."""
    key = f"cs-{id(record):x}-{time.monotonic_ns():x}"
    now = time.monotonic()
    if not _AT_EXIT:  # registered after the ledger's own hook, so it runs before it closes
        _AT_EXIT.append(True)
        atexit.register(flush_savings)
    with _PENDING_LOCK:
        _PENDING[key] = (ledger, record, now)
        stale = _expire(now)
    for target, old in stale:
        _write_saving(target, old)
    return key


def book_savings(keys: Iterable[str], model: str | None) -> int:
    """Book the held savings, priced at ``model`` (the model actually called); return how many."""
    found = []
    with _PENDING_LOCK:
        for key in keys:
            item = _PENDING.pop(str(key), None)
            if item is not None:
                found.append(item)
    for ledger, record, _ in found:
        if model:
            record.model = clean_tag("model", model)
            record.saved_usd = None  # the ledger prices it at this model
        _write_saving(ledger, record)
    return len(found)


def flush_savings() -> int:
    """Book every held saving at its compressor's model (no call was seen for it); at exit
    too, so a graph without a booking node loses nothing."""
    with _PENDING_LOCK:
        items = list(_PENDING.values())
        _PENDING.clear()
    for ledger, record, _ in items:
        _write_saving(ledger, record)
    return len(items)


def drop_savings(keys: Iterable[str]) -> int:
    """Forget held savings whose call never ran (a cache served the answer); return how many."""
    dropped = 0
    with _PENDING_LOCK:
        for key in keys:
            dropped += _PENDING.pop(str(key), None) is not None
    if dropped:
        diagnostics.count("compression_saving_superseded")
    return dropped


class BaseCompressor:
    """Budget handling, validation and ledger writes shared by every backend.

    Subclasses implement ``_run`` (sync) and ``_arun`` (async) on validated input.
    """

    name = "base"

    def __init__(
        self,
        *,
        target_ratio: float | None = None,
        max_tokens: int | None = None,
        model: str | None = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        target_ratio = _check_target_ratio(target_ratio)
        max_tokens = _check_max_tokens(max_tokens)
        if target_ratio is None and max_tokens is None:
            target_ratio = _check_target_ratio(
                _env_number("GRAPHTHRIFT_COMPRESS_TARGET_RATIO", float)
            )
            max_tokens = _check_max_tokens(_env_number("GRAPHTHRIFT_COMPRESS_MAX_TOKENS", int))
        if target_ratio is None and max_tokens is None:
            target_ratio = DEFAULT_TARGET_RATIO
        self.target_ratio = target_ratio
        self.max_tokens = max_tokens
        self.model = model
        self.ledger = ledger
        self.tags = dict(tags or {})

    # Public API: one implementation, two entry points.

    def compress(
        self,
        question: str,
        chunks: Sequence[str],
        *,
        max_tokens: int | None = None,
        target_ratio: float | None = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> CompressionResult:
        """Keep what answers ``question`` from ``chunks``, within the budget.

        Args:
            question: the user's question ("" compresses without a query).
            chunks: the retrieved texts, best first if the retriever ranks them.
            max_tokens / target_ratio: override the budget for this call (target_ratio is
                the kept fraction, in (0, 1]).
            ledger: write the saving to this ledger instead of the compressor's own.
            tags: ledger tags for this call, merged over the compressor's ``tags``.

        Returns:
            A ``CompressionResult`` aligned with ``chunks``.
        """
        items, ratio, cap = self._prepare(question, chunks, target_ratio, max_tokens)
        start = time.perf_counter()
        result = self._run(question, items, ratio, cap)
        return self._finish(result, start, ledger, tags)

    async def acompress(
        self,
        question: str,
        chunks: Sequence[str],
        *,
        max_tokens: int | None = None,
        target_ratio: float | None = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> CompressionResult:
        """``compress`` for async code: the embedder is awaited, the rest is the same."""
        items, ratio, cap = self._prepare(question, chunks, target_ratio, max_tokens)
        start = time.perf_counter()
        result = await self._arun(question, items, ratio, cap)
        return self._finish(result, start, ledger, tags)

    def _prepare(
        self,
        question: str,
        chunks: Sequence[str],
        target_ratio: float | None,
        max_tokens: int | None,
    ) -> tuple[list[str], float | None, int | None]:
        items = _check_chunks(question, chunks)
        ratio = _check_target_ratio(target_ratio)
        cap = _check_max_tokens(max_tokens)
        if ratio is None and cap is None:
            ratio, cap = self.target_ratio, self.max_tokens
        return items, ratio, cap

    def _finish(
        self,
        result: CompressionResult,
        start: float,
        ledger: Any,
        tags: Mapping[str, Any] | None,
    ) -> CompressionResult:
        result = replace(result, elapsed_ms=(time.perf_counter() - start) * 1000)
        target = ledger if ledger is not None else self.ledger
        if target is not None:
            record = compression_record(
                result, model=self.model, tags={**self.tags, **(tags or {})}
            )
            try:
                target.record(record)
            except Exception as exc:  # a closed ledger must not fail the user's request
                diagnostics.count(
                    "compression_ledger_error", "graphthrift: compression not recorded: %s", exc
                )
        return result

    def _run(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> CompressionResult:
        raise NotImplementedError

    async def _arun(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> CompressionResult:
        raise NotImplementedError


# -- sentence splitting --------------------------------------------------------------------------

# Abbreviations after which a full stop does not end the sentence: titles and Latin forms
# ("Dr. Watson", "e.g. The"), and those that do only when no number follows ("No. 5",
# "Fig. 3", "Jan. 5", "approx. 20", but "I said no. Then ...").
_TITLES = frozenset(
    """mr mrs ms dr prof sr jr st mt ft rev hon gen col lt sgt capt cpt maj adm gov pres
    sen rep vs v cf e.g i.e eg ie viz dept univ ph.d""".split()  # noqa: SIM905
)
_BEFORE_NUMBERS = frozenset(
    """no nos vol vols fig figs eq eqs p pp ch sec art op approx ca est al etc jan feb
    mar apr jun jul aug sep sept oct nov dec a.m p.m u.s u.k u.n""".split()  # noqa: SIM905
)
_CJK_END = "。！？｡．"
_OTHER_END = "।॥؟۔։።"
_CLOSERS = "\"'”’»)]}」』）】"
_BOUNDARY = re.compile(
    rf"(?:[.!?…]+[{re.escape(_CLOSERS)}]*(?=\s)|[{_CJK_END}{_OTHER_END}]+[{re.escape(_CLOSERS)}]*)"
)
_LINE_BREAK = re.compile(r"\n")
_PREV_WORD = re.compile(r"([^\s(\[\"'“‘]+)$")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans ``(start, end)`` of ``text``, stripped of surrounding whitespace.

    Splits at line breaks, at ``.``/``!``/``?`` followed by whitespace, and at CJK and
    other scripts' full stops (no whitespace needed). Never splits inside a number
    (``3.14``), a version or identifier (``v2.1.0``), a URL or a domain, and not after
    common abbreviations (``Dr.``, ``e.g.``, ``No. 5``) or initials (``J. R. R.``).

    Example:
        >>> t = "Dr. Smith paid $3.14 for v2.1.0 at example.com. It worked! 東京は大きい。本当だ。"
        >>> [t[a:b] for a, b in split_sentences(t)]
        ['Dr. Smith paid $3.14 for v2.1.0 at example.com.', 'It worked!', '東京は大きい。', '本当だ。']
    """
    spans: list[tuple[int, int]] = []
    line_start = 0
    for brk in [*(m.start() for m in _LINE_BREAK.finditer(text)), len(text)]:
        _split_line(text, line_start, brk, spans)
        line_start = brk + 1
    return spans


def _split_line(text: str, start: int, end: int, out: list[tuple[int, int]]) -> None:
    line = text[start:end]
    cut = 0
    for m in _BOUNDARY.finditer(line):
        stop = m.end()
        if line[m.start()] in ".!?…" and not _ends_sentence(line, m.start(), stop):
            continue
        _emit(text, start + cut, start + stop, out)
        cut = stop
    _emit(text, start + cut, end, out)


def _emit(text: str, a: int, b: int, out: list[tuple[int, int]]) -> None:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    if a < b:
        out.append((a, b))


def _ends_sentence(line: str, dot: int, stop: int) -> bool:
    """Whether the Latin terminator at ``line[dot:stop]`` ends a sentence."""
    rest = line[stop:].lstrip()
    if not rest:
        return True
    nxt = rest[0]
    if nxt.islower():
        return False  # "approx. five", "e.g. the", "... and then"
    if line[dot] != "." or line[dot:stop].startswith(".."):
        return True
    m = _PREV_WORD.search(line, 0, dot)
    if m is None:
        return True
    word = m.group(1).lower()
    if len(word) == 1 and word.isalpha():
        return False  # an initial: "J. R. R. Tolkien", "Franklin D. Roosevelt"
    if word in _TITLES:
        return False
    return not (word in _BEFORE_NUMBERS and nxt.isdigit())


# -- lexical features ---------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_HAN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_DIGIT = re.compile(r"\d")
_NAME = re.compile(r"(?<=[\s(\"“'‘])[A-ZÀ-ÖØ-Þ][\w'’-]*")
_RAW_TOKEN = re.compile(r"\S+")
_STRIP = "\"'“”‘’()[]{}<>.,;:!?«»"
_STOPWORDS = frozenset(
    """a an the of in on at to for by with from as and or but nor that this these those it
    its be is are was were been being am has have had do does did done not no yes so than
    then there their they them he she his her him we our us you your i me my mine what
    which who whom whose when where why how whatever whichever much many name named
    called type kind one ones if into onto about also can could would should will shall
    may might must other some any all each most more such only own same too very s
    t just over under again further once here up down out off""".split()  # noqa: SIM905
)
_NUMBER_WORDS = frozenset(
    """zero one two three four five six seven eight nine ten eleven twelve thirteen
    fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty
    seventy eighty ninety hundred thousand million billion trillion dozen half quarter
    first second third fourth fifth sixth seventh eighth ninth tenth percent""".split()  # noqa: SIM905
)
_WANTS_NUMBER = re.compile(
    r"\b(how (many|much|long|old|far|large|big|high|tall|deep|wide|often|fast|heavy)|"
    r"what (year|years|date|day|month|time|age|percentage|percent|number|amount|size|"
    r"proportion|fraction|decade|century|period)|which (year|decade|century)|when)\b",
    re.IGNORECASE,
)
_WANTS_NAME = re.compile(
    r"\b(who|whom|whose|where)\b|^\s*(which|what) [A-Z]?\w+ (was|is)\b", re.IGNORECASE
)


_SUFFIXES = (
    ("ies", "y"),
    ("sses", "ss"),
    ("xes", "x"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("edly", ""),
    ("ing", ""),
    ("ed", ""),
    ("ly", ""),
    ("s", ""),
)


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    """A light suffix stripper, the same on both sides, so 'founded' meets 'founding'.

    One suffix goes, then a final 'e' (so 'based', 'bases' and 'base' all meet).
    """
    w = word.lower()
    if len(w) <= 3 or not w.isascii():
        return w
    for suffix, repl in _SUFFIXES:
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            if suffix == "s" and w.endswith(("ss", "us", "is")):
                break
            w = w[: len(w) - len(suffix)] + repl
            break
    return w[:-1] if len(w) > 3 and w.endswith("e") else w


def _terms(text: str) -> list[str]:
    """Index terms: stemmed words without stopwords; Han/Kana runs as character bigrams."""
    out: list[str] = []
    for word in _WORD.findall(text):
        if _HAN.search(word):
            for run in _HAN.findall(word):
                out.extend(run[i : i + 2] for i in range(max(len(run) - 1, 1)))
            rest = _HAN.sub(" ", word).split()
            out.extend(_stem(r) for r in rest if r.lower() not in _STOPWORDS)
            continue
        if word.lower() in _STOPWORDS:
            continue
        out.append(_stem(word))
    return out


def _question_entities(question: str) -> list[str]:
    """Numbers and identifiers in the question, matched verbatim (case-sensitive)."""
    exact: list[str] = []
    for raw in _RAW_TOKEN.findall(question):
        tok = raw.strip(_STRIP)
        if _DIGIT.search(tok) or (len(tok) > 2 and any(c in tok[1:-1] for c in "._/-:")):
            exact.append(tok)
    return exact


# -- the extractive compressor ----------------------------------------------------------------


@dataclass(slots=True)
class _Unit:
    """One scorable piece: a sentence, or part of an over-long sentence."""

    chunk: int
    index: int  # position among the chunk's units
    start: int
    end: int
    tokens: int
    score: float = 0.0


@dataclass(slots=True)
class _Plan:
    """Everything ``compress`` computes before (optionally) asking the embedder."""

    chunks: list[str]
    units: list[_Unit]
    chunk_tokens: list[int]
    budget: int
    lexical: np.ndarray
    embed_rows: list[int]
    question: str
    details: dict[str, Any]
    encoding: Any


class ExtractiveCompressor(BaseCompressor):
    """The default compressor: keeps the sentences that answer the question, verbatim.

    Sentences are scored by BM25 against the question (IDF over this request's
    sentences), exact matches of the question's numbers and identifiers, whether
    they hold what the question asks for (a number for "how many", a name for "who"),
    their neighbours' scores and their chunk's coverage of the question. The best are
    kept in original order until the budget is full, so a chunk with nothing relevant is
    dropped whole (``scope="global"``) or trimmed on its own (``scope="chunk"``).

    Args:
        target_ratio: kept fraction in (0, 1] (kept tokens / original tokens); env
            ``GRAPHTHRIFT_COMPRESS_TARGET_RATIO``; default 1/3 when neither this nor
            ``max_tokens`` is given.
        max_tokens: absolute budget in tokens; env ``GRAPHTHRIFT_COMPRESS_MAX_TOKENS``.
        embedder: ``None`` uses ``graphthrift.embed.embedders.default_embedder()`` (loaded on first
            need); ``False`` disables the semantic feature (pure lexical, fastest); or any
            object ``graphthrift.embed.embedders.as_embedder`` accepts (LangChain / LlamaIndex
            embeddings, a callable).
        semantic: when to consult the embedder: ``"auto"`` (only when the lexical evidence
            is weak, see ``semantic_below``: a paraphrased question or one in another
            wording), ``"always"`` (re-rank the lexical shortlist on every call: the question
            plus ``shortlist`` sentences through the embedder, far above the 15 ms per 1,000
            tokens the lexical path takes), or ``"never"``.
        semantic_below: in ``"auto"`` mode, consult the embedder when the best sentence
            holds less than this share of the question's IDF weight (0.1: almost no overlap;
            on xquad_en, 0.3% to 2.7% of questions depending on the setting).
        shortlist: sentences re-ranked by the embedder; with no lexical overlap at all,
            up to ``max_embed`` sentences are embedded instead.
        scope: ``"global"`` shares one budget across chunks (irrelevant chunks vanish);
            ``"chunk"`` gives each chunk its share of the budget.
        model: the downstream model: its tokenizer counts tokens and the ledger prices
            the saving at its input price.
        max_sentence_tokens: longer sentences are cut at clause/word boundaries first.
        ledger / tags: write each compression to this ledger with these tags.

    Example:
        >>> c = ExtractiveCompressor(max_tokens=16, embedder=False)
        >>> c.compress("In which year was Hamlet written?", ["Hamlet is a tragedy. It was "
        ...     "written around 1600. It is long.", "Paris is in France."]).texts
        ('Hamlet is a tragedy. It was written around 1600.', '')
    """

    name = "extractive"

    def __init__(
        self,
        target_ratio: float | None = None,
        max_tokens: int | None = None,
        embedder: Any = None,
        model: str | None = None,
        *,
        semantic: Semantic = "auto",
        semantic_below: float = 0.1,
        shortlist: int = 8,
        max_embed: int = 64,
        scope: Scope = "global",
        max_sentence_tokens: int = 96,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            target_ratio=target_ratio,
            max_tokens=max_tokens,
            model=model,
            ledger=ledger,
            tags=tags,
        )
        if semantic not in ("auto", "always", "never"):
            raise ValueError(f"semantic must be 'auto', 'always' or 'never', got {semantic!r}")
        if scope not in ("global", "chunk"):
            raise ValueError(f"scope must be 'global' or 'chunk', got {scope!r}")
        for key, value in (
            ("shortlist", shortlist),
            ("max_embed", max_embed),
            ("max_sentence_tokens", max_sentence_tokens),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        self.semantic: Semantic = "never" if embedder is False else semantic
        if not 0 <= semantic_below <= 1:
            raise ValueError(f"semantic_below must be in [0, 1], got {semantic_below!r}")
        self.semantic_below = float(semantic_below)
        self.shortlist = shortlist
        self.max_embed = max_embed
        self.scope: Scope = scope
        self.max_sentence_tokens = max_sentence_tokens
        self._embedder_arg = None if embedder is False else embedder
        self._embedder: Any = None
        self._lock = threading.Lock()
        self._qcache: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def embedder(self) -> Any:
        """The embedder in use (resolved on first need), or None when disabled."""
        if self.semantic == "never":
            return None
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    from graphthrift.embed.embedders import as_embedder, default_embedder

                    arg = self._embedder_arg
                    self._embedder = default_embedder() if arg is None else as_embedder(arg)
        return self._embedder

    # -- sync / async share everything but the embedder call --------------------------------

    def _run(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> CompressionResult:
        plan = self._plan(question, chunks, target_ratio, max_tokens)
        vectors = None
        if plan.embed_rows:
            vectors = self._vectors(plan, self.embedder.embed([*self._embed_texts(plan)]))
        return self._select(plan, vectors)

    async def _arun(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> CompressionResult:
        plan = self._plan(question, chunks, target_ratio, max_tokens)
        vectors = None
        if plan.embed_rows:
            embedded = await self.embedder.aembed([*self._embed_texts(plan)])
            vectors = self._vectors(plan, embedded)
        return self._select(plan, vectors)

    # -- planning: split, count, score lexically ---------------------------------------------

    def _plan(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> _Plan:
        encoding = get_encoding(encoding_name_for(self.model)[0])
        chunk_tokens = [len(encoding.encode_ordinary(c)) if c.strip() else 0 for c in chunks]
        original = sum(chunk_tokens)
        budget = resolve_budget(original, target_ratio, max_tokens)
        units: list[_Unit] = []
        texts: list[str] = []
        for ci, chunk in enumerate(chunks):
            if not chunk_tokens[ci]:
                continue
            spans = self._pieces(chunk, split_sentences(chunk), encoding)
            for k, (a, b) in enumerate(spans):
                units.append(_Unit(ci, k, a, b, 0))
                texts.append(chunk[a:b])
        for unit, n in zip(units, _count_many(encoding, texts), strict=True):
            unit.tokens = n
        details: dict[str, Any] = {"sentences": len(units), "semantic": False}
        lexical, coverage = _lexical_scores(question, units, texts)
        details["coverage"] = round(coverage, 4)
        plan = _Plan(chunks, units, chunk_tokens, budget, lexical, [], question, details, encoding)
        if budget >= original or not units:
            return plan  # nothing to choose: everything fits, or nothing is there
        plan.embed_rows = self._rows_to_embed(plan)
        return plan

    def _pieces(
        self, chunk: str, spans: list[tuple[int, int]], encoding: Any
    ) -> list[tuple[int, int]]:
        """Cut sentences over ``max_sentence_tokens`` into pieces at clause or word breaks."""
        limit = self.max_sentence_tokens
        out: list[tuple[int, int]] = []
        for a, b in spans:
            if b - a <= limit * 2 or len(encoding.encode_ordinary(chunk[a:b])) <= limit:
                out.append((a, b))
                continue
            out.extend(_cut_long(chunk, a, b, limit, encoding))
        return out

    def _rows_to_embed(self, plan: _Plan) -> list[int]:
        """Which units the embedder should see; empty when lexical evidence suffices."""
        if self.semantic == "never" or not plan.question.strip():
            return []
        top = float(plan.lexical.max()) if len(plan.lexical) else 0.0
        weak = top <= 0 or plan.details.get("coverage", 0.0) < self.semantic_below
        if self.semantic == "auto" and not weak:
            return []
        if top <= 0:
            order = range(min(len(plan.units), self.max_embed))
            return list(order)
        order_arr = np.argsort(-plan.lexical, kind="stable")
        return [int(i) for i in order_arr[: self.shortlist]]

    def _embed_texts(self, plan: _Plan) -> list[str]:
        texts = [
            plan.chunks[plan.units[i].chunk][plan.units[i].start : plan.units[i].end]
            for i in plan.embed_rows
        ]
        cached = self._qcache.get(plan.question)
        if cached is None:
            texts.append(plan.question)
        return texts

    def _vectors(self, plan: _Plan, embedded: Any) -> np.ndarray:
        """Cosine similarity of each embedded unit to the question (unit vectors)."""
        rows = np.asarray(embedded, dtype=np.float32)
        n = len(plan.embed_rows)
        if rows.shape[0] > n:
            qvec = rows[n]
            with self._lock:
                self._qcache[plan.question] = qvec
                while len(self._qcache) > 256:
                    self._qcache.popitem(last=False)
        else:
            qvec = self._qcache[plan.question]
        plan.details["semantic"] = True
        plan.details["embedded"] = n
        sims: np.ndarray = rows[:n] @ qvec
        return sims

    # -- selection ------------------------------------------------------------------------

    def _select(self, plan: _Plan, sims: np.ndarray | None) -> CompressionResult:
        units = plan.units
        original = sum(plan.chunk_tokens)
        if plan.budget >= original:
            chosen = set(range(len(units)))
        else:
            scores = _normalise(plan.lexical)
            if sims is not None and len(plan.embed_rows):
                scores = _blend(scores, plan.embed_rows, sims)
            if float(scores.max(initial=0.0)) <= 0:
                scores = _lead_scores(units)  # no signal at all: keep each chunk's lead
            for unit, s in zip(units, scores, strict=True):
                unit.score = float(s)
            chosen = self._choose(plan)
        texts, counts, kept = _assemble(plan, chosen)
        # The joins between kept sentences may shift a token or two: drop the weakest
        # sentences until the exact count fits.
        while sum(counts) > plan.budget and chosen:
            worst = min(chosen, key=lambda i: (units[i].score, -i))
            chosen.discard(worst)
            texts, counts, kept = _assemble(plan, chosen)
        return CompressionResult(
            texts=tuple(texts),
            original_tokens=original,
            kept_tokens=sum(counts),
            budget=plan.budget,
            chunk_original_tokens=tuple(plan.chunk_tokens),
            chunk_kept_tokens=tuple(counts),
            kept_sentences=tuple(kept),
            compressor=self.name,
            model=self.model,
            details=plan.details,
        )

    def _choose(self, plan: _Plan) -> set[int]:
        """Greedy by score: take each unit that still fits (smaller ones fill the gaps).

        Units scoring 0 (nothing from the question, in a chunk with nothing from it either)
        are never taken, so irrelevant chunks vanish even when budget is left over; in
        ``scope="chunk"`` such a chunk keeps its opening sentences instead.
        """
        units = plan.units
        if self.scope == "global":
            groups = [(list(range(len(units))), plan.budget)]
        else:
            groups = _chunk_groups(plan)
        chosen: set[int] = set()
        for members, budget in groups:
            left = budget
            # In chunk scope every chunk keeps something: one without evidence keeps its lead.
            lead = self.scope == "chunk" and max(units[i].score for i in members) <= 0
            for i in sorted(members, key=lambda i: (-units[i].score, i)):
                if units[i].score <= 0 and not lead:
                    break  # no evidence at all: leave the budget unspent, not filled with noise
                cost = units[i].tokens + (1 if chosen else 0)
                if cost <= left:
                    chosen.add(i)
                    left -= cost
        return chosen


def _count_many(encoding: Any, texts: list[str]) -> list[int]:
    return [len(encoding.encode_ordinary(t)) for t in texts]


def _cut_long(chunk: str, a: int, b: int, limit: int, encoding: Any) -> list[tuple[int, int]]:
    """Pack the words of ``chunk[a:b]`` into pieces of at most ``limit`` tokens.

    Cuts only at whitespace, preferring just after a clause mark (, ; : — ，、；：);
    unspaced scripts (CJK, Thai) are cut between characters.
    """
    words: list[tuple[int, int]] = []
    for m in _RAW_TOKEN.finditer(chunk, a, b):
        s, e = m.start(), m.end()
        if e - s > 8 and (_HAN.search(chunk, s, e) or not chunk[s:e].isascii()):
            words.extend(_cut_unspaced(chunk, s, e, max(limit // 2, 1)))
        else:
            words.append((s, e))
    counts = [len(encoding.encode_ordinary(" " + chunk[s:e])) for s, e in words]
    pieces: list[tuple[int, int]] = []
    cur_start, cur_tokens, last_clause = words[0][0], 0, -1
    i = 0
    while i < len(words):
        s, e = words[i]
        if cur_tokens and cur_tokens + counts[i] > limit:
            cut = last_clause if last_clause > 0 else i
            pieces.append((cur_start, words[cut - 1][1]))
            cur_start, cur_tokens, last_clause = words[cut][0], 0, -1
            i = cut
            continue
        cur_tokens += counts[i]
        if chunk[e - 1] in ",;:—，、；：" and cur_tokens >= limit // 2:
            last_clause = i + 1
        i += 1
    pieces.append((cur_start, words[-1][1]))
    return [(s, e) for s, e in pieces if e > s]


# Feature weights, chosen on the first half of xquad_en's articles (see bench/compress.py)
# and checked on the second half.
_W_ENTITY = 0.5  # per exact number or identifier from the question ("ERR-42", "v2.1.0")
_W_NEIGHBOUR = 0.25  # share of the best neighbour's score a sentence inherits
_W_NUMBER_FIT = 0.3  # boost when the question asks for a number and the sentence has one
_W_NAME_FIT = 0.2  # boost when the question asks "who/where" and the sentence names someone
_W_COVERAGE = 0.35  # weight of the chunk's coverage of the question
_W_SEMANTIC = 0.5  # weight of cosine similarity (above the shortlist's lowest) in re-ranking


def _cut_unspaced(chunk: str, s: int, e: int, step: int) -> list[tuple[int, int]]:
    """Cut an unspaced run (about one token per CJK character) every ``step`` characters,
    moving each cut forward so it never falls inside a run of ASCII letters and digits."""
    out: list[tuple[int, int]] = []
    start = s
    while start < e:
        cut = min(start + step, e)
        while (
            cut < e
            and chunk[cut - 1].isascii()
            and chunk[cut - 1].isalnum()
            and chunk[cut].isascii()
            and (chunk[cut].isalnum() or chunk[cut] in ".,")
        ):
            cut += 1
        out.append((start, cut))
        start = cut
    return out


def _lexical_scores(
    question: str, units: list[_Unit], texts: list[str]
) -> tuple[np.ndarray, float]:
    """BM25 + exact entity matches + answer type + neighbours + chunk coverage, per unit.

    Also returns the strongest evidence: the share of the question's IDF mass that the
    best single sentence contains (the semantic fallback fires when it is low).
    """
    n = len(units)
    scores = np.zeros(n, dtype=np.float64)
    q_terms = list(dict.fromkeys(_terms(question)))
    exact = _question_entities(question)
    if not n or (not q_terms and not exact):
        return scores, 0.0
    bags = [Counter(_terms(t)) for t in texts]
    df: Counter[str] = Counter()
    for bag in bags:
        df.update(bag.keys())
    lengths = np.array([max(sum(b.values()), 1) for b in bags], dtype=np.float64)
    avg = float(lengths.mean())
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in q_terms}
    k1, b = 1.2, 0.75
    norm = k1 * (1 - b + b * lengths / avg)
    for i, bag in enumerate(bags):
        total = 0.0
        for t in q_terms:
            tf = bag.get(t)
            if tf:
                total += idf[t] * tf * (k1 + 1) / (tf + norm[i])
        scores[i] = total
    max_idf = max(idf.values(), default=1.0)
    # Exact numbers and identifiers from the question are strong evidence, and BM25 alone
    # would see "ERR-42" only as the two weak terms "err" and "42".
    for i, text in enumerate(texts):
        scores[i] += sum(_W_ENTITY for e in exact if e in text) * max_idf
    # Chunk coverage: the share of the question's IDF mass that the chunk contains.
    q_mass = sum(idf.values()) or 1.0
    chunk_terms: dict[int, set[str]] = {}
    for unit, bag in zip(units, bags, strict=True):
        chunk_terms.setdefault(unit.chunk, set()).update(t for t in q_terms if t in bag)
    coverage = {c: sum(idf[t] for t in ts) / q_mass for c, ts in chunk_terms.items()}
    best_unit_cov = max(
        (sum(idf[t] for t in q_terms if t in bag) / q_mass for bag in bags), default=0.0
    )
    # Neighbours: an answer often sits next to the sentence that repeats the question.
    smoothed = scores.copy()
    for i in range(n):
        near = [
            scores[j] for j in (i - 1, i + 1) if 0 <= j < n and units[j].chunk == units[i].chunk
        ]
        if near:
            smoothed[i] += _W_NEIGHBOUR * max(near)
    top = float(smoothed.max()) or 1.0
    wants_number = bool(_WANTS_NUMBER.search(question))
    wants_name = bool(_WANTS_NAME.search(question)) and not wants_number
    for i, text in enumerate(texts):
        rel = smoothed[i] / top
        if rel <= 0:
            # No word of the question, but the answer type it asks for ("How long do I have
            # to return an item?" -> "The refund window is 14 days") in a chunk that is about
            # the question: weak evidence, kept when the budget has room for it.
            cover = coverage.get(units[i].chunk, 0.0)
            if wants_number and cover > 0 and (_DIGIT.search(text) or _has_number_word(text)):
                smoothed[i] = _W_NUMBER_FIT * _W_COVERAGE * cover
            continue
        fit = 0.0
        if wants_number and (_DIGIT.search(text) or _has_number_word(text)):
            fit = _W_NUMBER_FIT
        elif wants_name and _has_name(text):
            fit = _W_NAME_FIT
        smoothed[i] = rel * (1 + fit) + _W_COVERAGE * coverage.get(units[i].chunk, 0.0)
    return smoothed, best_unit_cov


def _has_name(text: str) -> bool:
    """A capitalised word that is not just the sentence's first word ("The", "It")."""
    if _NAME.search(text):
        return True
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    return first[:1].isupper() and first.lower().strip(_STRIP) not in _STOPWORDS


def _has_number_word(text: str) -> bool:
    return any(w in _NUMBER_WORDS for w in text.lower().split())


def _normalise(scores: np.ndarray) -> np.ndarray:
    top = float(scores.max(initial=0.0))
    return scores / top if top > 0 else scores.copy()


def _blend(scores: np.ndarray, rows: list[int], sims: np.ndarray) -> np.ndarray:
    """Mix cosine similarity into the shortlist; others keep their lexical score."""
    out = scores.copy()
    if float(scores.max(initial=0.0)) <= 0:
        out[rows] = sims + 1.0  # cosine in [-1, 1]; the unembedded rest stays at 0
        return out
    floor = float(sims.min())
    out[rows] = scores[rows] + _W_SEMANTIC * (sims - floor)
    return out


def _lead_scores(units: list[_Unit]) -> np.ndarray:
    """Without any signal, prefer each chunk's opening sentences, earlier chunks first."""
    return np.array([1.0 / (1 + u.index) + 1e-3 / (1 + u.chunk) for u in units])


def _chunk_groups(plan: _Plan) -> list[tuple[list[int], int]]:
    """Split the budget across chunks in proportion to their size (``scope="chunk"``)."""
    original = sum(plan.chunk_tokens) or 1
    members: dict[int, list[int]] = {}
    for i, unit in enumerate(plan.units):
        members.setdefault(unit.chunk, []).append(i)
    return [(m, plan.budget * plan.chunk_tokens[c] // original) for c, m in members.items()]


def _assemble(plan: _Plan, chosen: set[int]) -> tuple[list[str], list[int], list[tuple[int, ...]]]:
    """Kept text per chunk: adjacent sentences verbatim, gaps joined by a space or newline."""
    per_chunk: dict[int, list[_Unit]] = {}
    for i in sorted(chosen):
        per_chunk.setdefault(plan.units[i].chunk, []).append(plan.units[i])
    encoding = plan.encoding
    texts: list[str] = []
    counts: list[int] = []
    kept: list[tuple[int, ...]] = []
    for ci, chunk in enumerate(plan.chunks):
        chosen_units = per_chunk.get(ci, [])
        parts: list[str] = []
        prev: _Unit | None = None
        for unit in chosen_units:
            if prev is not None and unit.index == prev.index + 1:
                parts.append(chunk[prev.end : unit.start])
            elif prev is not None:
                parts.append("\n" if "\n" in chunk[prev.end : unit.start] else " ")
            parts.append(chunk[unit.start : unit.end])
            prev = unit
        text = "".join(parts)
        texts.append(text)
        counts.append(len(encoding.encode_ordinary(text)) if text else 0)
        kept.append(tuple(u.index for u in chosen_units))
    return texts, counts, kept


def normalise_answer_text(text: str) -> str:
    """NFKC + collapsed whitespace, for checking that an answer survived compression."""
    return " ".join(unicodedata.normalize("NFKC", text).split())
