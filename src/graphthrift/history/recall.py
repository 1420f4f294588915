"""Recall: folded turns kept verbatim in pgvector, brought back when a later message needs them.

Long because: the store, its hybrid scoring (vector, identifiers, BM25 over content words) and
their sync and async paths are one idea, the recall of folded turns.

Folding bounds the prompt, but a bounded summary cannot hold hundreds of turns' facts. So
the turns a fold takes out go, word for word and scoped by tenant and thread, into a table
on the same ``Store``; on each turn the few most relevant to the latest user message are
recalled and placed after the cached prefix, inside the token budget.

Retrieval is hybrid. Vector similarity finds turns that talk about the same thing; the
identifiers and numbers in the message (an order id, a date, a name, an amount) must match
exactly, so a turn containing them gets a boost (``term_boost`` times the share of them it
contains); the query's content words (service, slot and entity words, stemmed, stopwords
out, also met by a turn's word pairs written as one: "rentalcars" and "rental car") score
each turn by BM25 with the thread's own word frequencies (``lexical_weight``), a turn also
indexed by the content words of the two turns before and after it, since an answer ("On
the 12th.") rarely repeats its question ("When do you return?"); a turn whose content words
the query already holds (an earlier question asked the same way) is marked down
(``echo_penalty``), and so is half as far the turn right after such an echo that asked for
something else (its answer: another fact), and the words echoes share with the query score
nothing (``recall_lexical``); a turn that states a value gets ``value_boost``, and one more
(``kind_boost``) if the value is of a kind the query asks for ("what time ..." and a turn
stating 11:30; ``recall_lexical.asked_kinds``). In a thread with phrasing, nearness is
measured to the query's need, the mean of its other content words' vectors
(``_need_vector``), not to the whole query, whose static embedding the phrasing and
stopwords dominate. Every lookup filters on tenant and thread
first, by indexed equality, and scores only that thread's turns: recall is exact within a
thread, and a thread's turns never reach another thread or tenant.

Recall reads narrow rows first and texts last. One statement returns the thread's turns,
nearest first, as arrays of index, embedding distance and own content-word count, with the
posting lists of the query's terms (``graphthrift_folded_terms``, written in the same
statement as the turns): enough to score every turn. A second returns the texts of the few
turns the scores put first. The one read it replaced returned every turn sharing a content
word with the query, with its terms and text (about 270 of a 500-turn thread), and took
most of recall's time.

A store outage never breaks the caller: ``recall`` then returns no snippets and ``add``
keeps nothing, each counted (``recall_failure``, ``recall_add_failure`` in
``graphthrift.diagnostics``) and logged.

Example (needs a database)::

    turns = FoldedTurnStore(store)
    turns.add("acme", "thread-7", [FoldedTurn(3, "user", "My order is A-1042.")])
    turns.recall("acme", "thread-7", "Where is order A-1042?", k=2, token_budget=200)
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from graphthrift import diagnostics
from graphthrift.cache.db import (
    CacheEngines,
    Plan,
    Settings,
    Sql,
    awith_deadline,
    run_async,
    run_sync,
    with_deadline,
)
from graphthrift.config import setting
from graphthrift.embed.embedders import Embedder, as_embedder, default_embedder
from graphthrift.embed.static import StaticEmbedder
from graphthrift.errors import ConfigError, StoreUnavailable
from graphthrift.history.recall_lexical import (
    COMPOUND_MARK,
    CONTEXT_MARK,
    LEXICAL_MARK,
    answers_to_echoes,
    asked_kinds,
    bm25,
    compound_terms,
    content_stems,
    match_turns,
    nan_last,
    phrasing_words,
    repeated_in_query,
    undecided_phrasing,
    value_kinds,
)
from graphthrift.history.schema import FOLDED_TERMS_TABLE, FOLDED_TURNS_TABLE
from graphthrift.store.postgres import Store
from graphthrift.summarize.facts import fact_spans
from graphthrift.text.lexical import STOPWORDS, WORD
from graphthrift.text.sentences import split_sentences
from graphthrift.text.tokens import count_text

__all__ = [
    "FoldedTurn",
    "FoldedTurnStore",
    "RecalledSnippet",
    "default_recall_embedder",
    "lexical_terms",
    "need_words",
    "query_terms",
    "text_terms",
]

# Unlike ``text.lexical.WORD`` (content words, split at every punctuation mark), this keeps
# an identifier whole: ``A-1042``, ``7:30``, ``ana@example.com``, ``$12.50``.
_IDENTIFIER_WORD = re.compile(r"[\w][\w@.:/'$,+-]*[\w]|[\w]", re.UNICODE)
# Capitalised words that are no name: the stopwords, and courtesy words.
_NOT_IDENTIFIERS = STOPWORDS | frozenset(
    ["please", "thanks", "thank", "hi", "hello", "hey", "ok", "okay"]
)


#: How many recent queries' vectors and terms each ``FoldedTurnStore`` keeps (they depend on
#: the query's text alone, never on a tenant's or thread's turns).
QUERY_CACHE_SIZE = 64
_EF_SEARCH = 40  # pgvector's default; recall itself scans its thread exactly
_static: StaticEmbedder | None = None
_static_lock = threading.Lock()


def default_recall_embedder() -> StaticEmbedder:
    """The process-wide static embedder distilled from the default MiniLM (one token table
    for every recall store, filled as texts bring new tokens)."""
    global _static
    if _static is None:
        with _static_lock:
            if _static is None:
                _static = StaticEmbedder(default_embedder())
    return _static


def text_terms(text_: str) -> list[str]:
    """The lower-cased words of a stored turn, the side an identifier must match exactly."""
    return sorted({w.lower().strip(".,:'") for w in _IDENTIFIER_WORD.findall(text_)} - {""})


def query_terms(query: str) -> list[str]:
    """The identifiers and numbers in ``query``: words with a digit, an ``_``, an ``@``, or a
    capital letter past their first (``A-1042``, ``7:30``, ``ana@example.com``, ``McKinley``),
    and capitalised words not at the start of a sentence (names: ``Corte Madera``)."""
    found: list[str] = []
    sentence_start = True
    for match in _IDENTIFIER_WORD.finditer(query):
        word = match.group(0).strip(".,:'")
        before = query[: match.start()].rstrip()
        sentence_start = not before or before[-1] in ".?!"
        if not word:
            continue
        special = (
            any(c.isdigit() for c in word)
            or "_" in word
            or "@" in word
            or any(c.isupper() for c in word[1:])
        )
        name = word[0].isupper() and not sentence_start and len(word) > 1
        if (special or name) and word.lower() not in _NOT_IDENTIFIERS:
            found.append(word.lower())
    return sorted(set(found))


#: The term of a turn that states a value (a name, number, date, amount: ``fact_spans``):
#: recall exists to bring back facts, and a turn without one ("Is smoking allowed?") rarely
#: answers a later question about what was said.
VALUE_TERM = "#value"


def lexical_terms(text_: str) -> list[str]:
    """The content words of ``text_`` for the lexical (BM25) side of recall: stemmed, no
    stopwords (``recall_lexical.content_stems``), marked with ``LEXICAL_MARK``.
    The query's service, slot and entity words meet the turns that use them, in any
    inflection ("restaurants" meets "restaurant")."""
    return sorted({LEXICAL_MARK + t for t in content_stems(text_) if len(t) > 1})


#: A turn is also indexed by the content words of this many turns before and after it in
#: its fold (one ``add`` call: the first turns of a fold get no words from the fold before,
#: the last none from the next, and turns stored before this window existed keep the one
#: turn before): an answer ("On the 12th.") rarely repeats its question ("When do you
#: return?"), and the request it belongs to ("a rental car in NY") is often a turn or two
#: away. On the long set (3 seeds x 6 threads) the window of 2 and 2 kept 0.825 of the
#: facts where the turn before alone kept 0.792.
CONTEXT_BEFORE, CONTEXT_AFTER = 2, 2
#: How far the answer to an earlier question asked like the query, for something else,
#: counts as an echo (``answers_to_echoes``): it states a value, but of another fact. On
#: the long set (3 seeds) 0.5 kept 0.860 of the facts where 0 kept 0.852 (1.0: 0.859).
ANSWER_ECHO = 0.5
#: The share of ``kind_boost`` a turn gets that holds no word or identifier of the query: a
#: value of the asked kind in a turn about something else is weaker evidence (recall's
#: candidates include the nearest turns by embedding alone). On the long set (3 seeds)
#: 0.5 kept 0.877 of the facts where 1 kept 0.867 (0 kept 0.871, losing 2 on one seed).
KIND_WITHOUT_EVIDENCE = 0.5


def _stored_terms(turns: Sequence[FoldedTurn]) -> tuple[list[str], list[int]]:
    """Each turn's exact words and content words (with its compounds written as one word,
    ``compound_terms``), with the content words of the turns around it in the batch
    (``CONTEXT_BEFORE``, ``CONTEXT_AFTER``, marked ``CONTEXT_MARK``); and how many content
    words of its own text each is indexed by (the ``own_terms`` column: a turn's share of
    the query's words is counted against it; its compounds are not counted, as they repeat
    its words)."""
    own = [lexical_terms(turn.text) for turn in turns]
    joined = [
        sorted(t for t in compound_terms(turn.text) if LEXICAL_MARK + t[1:] not in mine)
        for turn, mine in zip(turns, own, strict=True)
    ]
    out: list[str] = []
    for i, turn in enumerate(turns):
        value = [VALUE_TERM, *value_kinds(turn.text)] if fact_spans(turn.text) else []
        near = [
            CONTEXT_MARK + t[len(LEXICAL_MARK) :]
            for j in range(max(0, i - CONTEXT_BEFORE), min(len(turns), i + CONTEXT_AFTER + 1))
            if j != i
            for t in (*own[j], *joined[j])
        ]
        out.append(" ".join(sorted({*text_terms(turn.text), *own[i], *joined[i], *near, *value})))
    return out, [len(mine) for mine in own]


def need_words(query: str) -> list[tuple[str, str]]:
    """The query's content words, once per stem, each with its stem: the words whose
    vectors make the query's need once its phrasing is known (``_need_vector``)."""
    out: dict[str, str] = {}
    for word in WORD.findall(query):
        stems = content_stems(word)
        if len(stems) == 1 and len(stems[0]) > 1:
            out.setdefault(stems[0], word)
    return [(stem, word) for stem, word in out.items()]


def _need_vector(words: Sequence[tuple[str, Any]], phrasing: set[str]) -> Any | None:
    """The vector of the query's need: the mean of its content words' vectors without the
    thread's phrasing words, unit length; None when phrasing takes none or all of them.

    A static embedding is the mean of its tokens, so in a thread that asks one way again
    and again ("Quick check before we go on: what was the ... I gave for the ...
    request?") the phrasing and stopwords outweigh the two words that say what is asked,
    and every turn about anything is about as near as the fact. On the long set (seed 19)
    the fact's turn was among the 10 nearest by the whole query for 0.11 of questions 10+
    turns back, by the query's need for 0.52."""
    need = [vector for stem, vector in words if stem not in phrasing]
    if not phrasing or not need or len(need) == len(words):
        return None
    total = np.sum(np.asarray(need, dtype=np.float64), axis=0)
    norm = float(np.linalg.norm(total))
    return None if norm == 0 else total / norm


def _with_context(terms: list[str]) -> list[str]:
    """The query's content words in both marks: a turn's own words and its context's."""
    return [*terms, *(CONTEXT_MARK + t[len(LEXICAL_MARK) :] for t in terms)]


@dataclass(frozen=True, slots=True)
class FoldedTurn:
    """One turn a fold took out of the prompt: its position in the thread, role and text."""

    index: int
    role: str
    text: str

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ConfigError("index", self.index, "a turn's index must be an int >= 0")
        if not isinstance(self.text, str):
            raise ConfigError("text", type(self.text).__name__, "a turn's text must be a str")


@dataclass(frozen=True, slots=True)
class RecalledSnippet:
    """A folded turn brought back, with why: its similarity, exact matches and score."""

    index: int
    role: str
    text: str
    tokens: int
    similarity: float
    matched_terms: int
    score: float


def _scope(tenant: str, thread: str) -> None:
    if not isinstance(tenant, str):
        raise ConfigError("tenant", tenant, "must be a str (use '' for the default tenant)")
    if not isinstance(thread, str) or not thread:
        raise ConfigError("thread", thread, "must be a non-empty str")


# The turns and their posting lists in one statement: a turn already kept (same index) is
# left as it was and adds nothing to the lists; the lists are upserted in term order, so two
# writers of one thread lock them in the same order.
_INSERT = (
    "WITH ins AS ("
    f"INSERT INTO {FOLDED_TURNS_TABLE}"
    " (tenant_id, thread_id, turn_index, role, content, tokens, terms, own_terms,"
    " embedding_model, dim, embedding)"
    " SELECT :tenant, :thread, u.i, u.r, u.c, u.t, string_to_array(u.w, ' '), u.o, :model,"
    " :dim, CAST(u.e AS vector)"
    " FROM unnest(CAST(:idx AS integer[]), CAST(:roles AS text[]), CAST(:texts AS text[]),"
    " CAST(:tokens AS integer[]), CAST(:words AS text[]), CAST(:own AS integer[]),"
    " CAST(:vectors AS text[]))"
    " AS u(i, r, c, t, w, o, e)"
    " ON CONFLICT (tenant_id, thread_id, embedding_model, turn_index) DO NOTHING"
    " RETURNING turn_index, terms),"
    f" post AS (INSERT INTO {FOLDED_TERMS_TABLE}"
    " (tenant_id, thread_id, embedding_model, term, turns)"
    " SELECT :tenant, :thread, :model, w.term, array_agg(ins.turn_index ORDER BY ins.turn_index)"
    " FROM ins, unnest(ins.terms) AS w(term) GROUP BY w.term ORDER BY w.term"
    " ON CONFLICT (tenant_id, thread_id, embedding_model, term)"
    f" DO UPDATE SET turns = {FOLDED_TERMS_TABLE}.turns || EXCLUDED.turns"
    " RETURNING 1)"
    " SELECT turn_index FROM ins"
)

# Recall reads in two or more indexed steps, each filtered on tenant and thread first.
# 1. One statement: a first row (``term`` NULL) with every turn of the thread by its index,
#    nearest first, as arrays of turn index, embedding distance to the query and own
#    content-word count (nothing of its text or terms), then one row per query term
#    (identifiers, content words, the value mark) with its posting list: which turns hold
#    it, and so the thread's document frequencies. Both in one snapshot. The distances are
#    computed once into narrow rows (``MATERIALIZED``) and sorted there, not sorted with
#    each turn's embedding; posting lists come as integer arrays, where a JSON object of
#    them cost the server its numeric conversion and the client a JSON parse. PostgreSQL
#    orders NaN (a text without tokens) last.
_THREAD = (
    "WITH t AS MATERIALIZED (SELECT turn_index, own_terms, embedding <=> CAST(:v AS vector) AS d"
    f" FROM {FOLDED_TURNS_TABLE}"
    " WHERE tenant_id = :tenant AND thread_id = :thread AND embedding_model = :model)"
    " SELECT NULL AS term, array_agg(turn_index ORDER BY d, turn_index) AS idx,"
    " array_agg(d ORDER BY d, turn_index) AS d,"
    " array_agg(own_terms ORDER BY d, turn_index) AS own"
    " FROM t"
    " UNION ALL SELECT term, turns, NULL, NULL"
    f" FROM {FOLDED_TERMS_TABLE}"
    " WHERE tenant_id = :tenant AND thread_id = :thread AND embedding_model = :model"
    " AND term = ANY(CAST(:terms AS text[]))"
)
# 2. The texts of the few turns scoring puts first (and of the query's echoes, when their
#    wording decides what is phrasing).
_TEXTS = (
    f"SELECT turn_index, role, content, tokens FROM {FOLDED_TURNS_TABLE}"
    " WHERE tenant_id = :tenant AND thread_id = :thread AND embedding_model = :model"
    " AND turn_index = ANY(CAST(:idx AS integer[]))"
)

# 3. Every turn's distance to the query's need (its content words without the thread's
#    phrasing), when the thread has phrasing (``_need_vector``), in a first row; then, in
#    the same statement, the texts of the turns likely to rank first: the ``m`` nearest to
#    the need and the ones given (``idx``: the lexical and identifier candidates), so that
#    packing seldom needs another read.
_NEED = (
    "WITH t AS MATERIALIZED (SELECT turn_index, embedding <=> CAST(:v AS vector) AS d"
    f" FROM {FOLDED_TURNS_TABLE}"
    " WHERE tenant_id = :tenant AND thread_id = :thread AND embedding_model = :model)"
    " SELECT NULL::integer AS turn_index, array_agg(turn_index) AS idx, array_agg(d) AS d,"
    " NULL::text AS role, NULL::text AS content, NULL::integer AS tokens FROM t"
    " UNION ALL SELECT f.turn_index, NULL, NULL, f.role, f.content, f.tokens"
    f" FROM {FOLDED_TURNS_TABLE} AS f"
    " WHERE f.tenant_id = :tenant AND f.thread_id = :thread AND f.embedding_model = :model"
    " AND f.turn_index = ANY(ARRAY(SELECT turn_index FROM t ORDER BY d, turn_index LIMIT :m)"
    " || CAST(:idx AS integer[]))"
)

# A transaction-scoped lock per (tenant, thread, embedder) that serialises its writers.
_THREAD_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtextextended("
    "CAST(:tenant AS text) || chr(31) || CAST(:thread AS text) || chr(31) || CAST(:model AS text),"
    " 0))"
)

# Before a write: the first index at which the thread's kept turns stop being this
# conversation's. The pruner numbers folded turns by its state (``folded_total``), so a
# thread id used again with a fresh state (a restart that lost the checkpoint) or a run
# resumed from an earlier checkpoint (LangGraph time travel) writes indices already kept:
# a kept turn there with another role or text, or any kept turn at or after the batch's
# first index that the batch does not hold (a longer abandoned branch, a blank turn's
# index), is stale. NULL: nothing is.
_DIVERGED = (
    "SELECT LEAST("
    f"(SELECT min(f.turn_index) FROM {FOLDED_TURNS_TABLE} AS f"
    " JOIN unnest(CAST(:idx AS integer[]), CAST(:roles AS text[]), CAST(:texts AS text[]))"
    " AS u(i, r, c) ON f.turn_index = u.i"
    " WHERE f.tenant_id = :tenant AND f.thread_id = :thread AND f.embedding_model = :model"
    " AND (f.role <> u.r OR f.content <> u.c)),"
    f" (SELECT min(f.turn_index) FROM {FOLDED_TURNS_TABLE} AS f"
    " WHERE f.tenant_id = :tenant AND f.thread_id = :thread AND f.embedding_model = :model"
    " AND f.turn_index >= :first AND f.turn_index <> ALL(CAST(:idx AS integer[])))"
    ") AS d"
)

# The stale turns go, from index ``d`` on, and so do they from the posting lists: a term
# held only by them loses its row, the others keep the turns before ``d`` (the two sets of
# rows are disjoint, as one statement must touch a row once).
_TRUNCATE = (
    f"WITH emptied AS (DELETE FROM {FOLDED_TERMS_TABLE}"
    " WHERE tenant_id = :tenant AND thread_id = :thread AND embedding_model = :model"
    " AND NOT EXISTS (SELECT 1 FROM unnest(turns) AS x WHERE x < :d)),"
    f" trimmed AS (UPDATE {FOLDED_TERMS_TABLE}"
    " SET turns = ARRAY(SELECT x FROM unnest(turns) AS x WHERE x < :d ORDER BY x)"
    " WHERE tenant_id = :tenant AND thread_id = :thread AND embedding_model = :model"
    " AND EXISTS (SELECT 1 FROM unnest(turns) AS x WHERE x < :d)"
    " AND EXISTS (SELECT 1 FROM unnest(turns) AS x WHERE x >= :d))"
    f" DELETE FROM {FOLDED_TURNS_TABLE}"
    " WHERE tenant_id = :tenant AND thread_id = :thread AND embedding_model = :model"
    " AND turn_index >= :d RETURNING turn_index"
)

# The index after the last kept turn of a thread (0 for none).
_NEXT_INDEX = (
    f"SELECT COALESCE(max(turn_index) + 1, 0) AS n FROM {FOLDED_TURNS_TABLE}"
    " WHERE tenant_id = :tenant AND thread_id = :thread AND embedding_model = :model"
)

_FORGET = (
    f"WITH gone AS (DELETE FROM {FOLDED_TERMS_TABLE}"
    " WHERE tenant_id = :tenant AND thread_id = :thread)"
    f" DELETE FROM {FOLDED_TURNS_TABLE} WHERE tenant_id = :tenant AND thread_id = :thread"
    " RETURNING turn_index"
)


class FoldedTurnStore:
    """Folded turns of every thread, on the shared store, recalled by hybrid retrieval.

    Args:
        store: the shared ``Store``.
        embedder: any embedder ``as_embedder`` accepts (default: ``default_recall_embedder``,
            a static embedder: a query in well under a millisecond, where a MiniLM pass
            takes several, and recall runs on every turn).
        term_boost: score added to a turn that contains every identifier and number of the
            query (a share of it for some); similarity is in [-1, 1].
        lexical_weight: score added to the turn with the best BM25 score over the query's
            content words (stemmed, stopwords out; each turn also indexed with the content
            words of the turns around it), in proportion for the others.
        value_boost: score added to a turn that states a value (``VALUE_TERM``).
        kind_boost: score added to a turn that states a value of a kind the query asks
            for (``recall_lexical.asked_kinds``: a time for "what time ...", a name for
            "which city ..."), on top of ``value_boost``; half of it
            (``KIND_WITHOUT_EVIDENCE``) to a turn holding no word or identifier of the query.
        echo_penalty: score taken from a turn in proportion to the share of its content
            words the query already holds past half of them (an earlier question phrased
            like this one): a turn all of whose content words are in the query loses it all.
        token_model: the model whose tokenizer counts snippet tokens for the budget.
        timeout: seconds one store operation may take before it fails open (else
            ``GRAPHTHRIFT_RECALL_TIMEOUT``, else 0.5).
        candidates: how many top-scored turns are read before packing into the budget.
        focus: recall only the sentences of a turn that state a value or use a content
            word of the query (``focused``), so that more turns fit the budget; with
            ``need_vector``, a turn that holds none of the query's words but its phrasing
            is recalled whole.
        need_vector: in a thread whose echoes show how it asks (phrasing), measure nearness
            to the query's need, its content words without the phrasing
            (``_need_vector``). Off by default: it keeps more facts in threads that ask in
            one template (docs/history.md: 0.790 to 0.863 on a held-out long set), but its
            read of the thread costs about 2-3 ms more at p95, past the 10 ms target.
    """

    def __init__(
        self,
        store: Store,
        *,
        embedder: object | None = None,
        term_boost: float = 0.3,
        lexical_weight: float = 1.0,
        echo_penalty: float = 1.0,
        value_boost: float = 0.6,
        kind_boost: float = 0.3,
        recency_weight: float = 0.0,
        recency_half_life: float = 50.0,
        token_model: str | None = None,
        timeout: float | None = None,
        candidates: int = 32,
        focus: bool = True,
        need_vector: bool = False,
    ) -> None:
        if not term_boost >= 0:
            raise ConfigError("term_boost", term_boost, "must be >= 0")
        if not lexical_weight >= 0:
            raise ConfigError("lexical_weight", lexical_weight, "must be >= 0")
        if not echo_penalty >= 0:
            raise ConfigError("echo_penalty", echo_penalty, "must be >= 0")
        if not value_boost >= 0:
            raise ConfigError("value_boost", value_boost, "must be >= 0")
        if not kind_boost >= 0:
            raise ConfigError("kind_boost", kind_boost, "must be >= 0")
        if not recency_weight >= 0:
            raise ConfigError("recency_weight", recency_weight, "must be >= 0")
        if not recency_half_life > 0:
            raise ConfigError("recency_half_life", recency_half_life, "must be > 0 turns")
        timeout = setting("GRAPHTHRIFT_RECALL_TIMEOUT", timeout, 0.5)
        if not timeout > 0:
            raise ConfigError("timeout", timeout, "must be > 0 seconds")
        if candidates < 1:
            raise ConfigError("candidates", candidates, "must be >= 1")
        self.store = store
        self.embedder: Embedder = (
            default_recall_embedder() if embedder is None else as_embedder(embedder)
        )
        self.term_boost = float(term_boost)
        self.lexical_weight = float(lexical_weight)
        self.echo_penalty = float(echo_penalty)
        self.value_boost = float(value_boost)
        self.kind_boost = float(kind_boost)
        self.recency = (float(recency_weight), float(recency_half_life))
        self.token_model = token_model
        self.timeout = float(timeout)
        self.candidates = candidates
        self.focus = bool(focus)
        self.need_vector = bool(need_vector)
        # the caches' pools: no pre-ping and autocommit reads (no BEGIN/COMMIT round trips),
        # statement_timeout set at connect time
        self._engines = CacheEngines.for_store(store, Settings(self.timeout, _EF_SEARCH))
        # the last queries' vectors and terms: an agent that calls its model several times
        # for one user message (tool calls) recalls the same message each time
        self._asked: OrderedDict[tuple[str, str, str], Mapping[str, Any]] = OrderedDict()
        self._asked_lock = threading.Lock()

    # -- writing ------------------------------------------------------------------------

    def _rows(self, turns: Iterable[FoldedTurn]) -> list[FoldedTurn]:
        rows = list(turns)
        for turn in rows:
            if not isinstance(turn, FoldedTurn):
                raise ConfigError("turns", type(turn).__name__, "must be FoldedTurn items")
        return rows

    def _insert_params(
        self, tenant: str, thread: str, rows: Sequence[FoldedTurn], vectors: Any
    ) -> dict[str, Any]:
        words, own = _stored_terms(rows)
        return {
            "tenant": tenant,
            "thread": thread,
            "model": self.embedder.model_id,
            "dim": int(vectors.shape[1]),
            "idx": [t.index for t in rows],
            "roles": [t.role for t in rows],
            # PostgreSQL text cannot hold U+0000; the turn is kept without it
            "texts": [t.text.replace("\x00", "") for t in rows],
            "tokens": [count_text(t.text, self.token_model) for t in rows],
            "words": words,
            "own": own,
            "vectors": [_vector_literal(v) for v in vectors],
        }

    def add(self, tenant: str, thread: str, turns: Iterable[FoldedTurn]) -> int:
        """Keep ``turns`` for recall in this tenant's thread; returns how many were new.

        A turn already kept (same index, role and text) is left as it was. Where the kept
        turns stop being this conversation's (``_DIVERGED``: the thread id used again with
        a fresh state, or a run resumed from an earlier checkpoint), they are dropped from
        there on before the batch is kept, in the same transaction, and
        ``recall_thread_rewritten`` is counted. Fails open: 0 on a store outage.
        """
        _scope(tenant, thread)
        rows = self._rows(turns)
        if not rows:
            return 0
        try:
            params = self._insert_params(
                tenant, thread, rows, self.embedder.embed([t.text for t in rows])
            )
            added, rewritten = run_sync(self._engines.engine, _add_plan(params))
        except Exception as exc:
            _fail_open("add", exc)
            return 0
        _count_rewrite(rewritten)
        return added

    async def aadd(self, tenant: str, thread: str, turns: Iterable[FoldedTurn]) -> int:
        """Async twin of ``add``."""
        _scope(tenant, thread)
        rows = self._rows(turns)
        if not rows:
            return 0
        try:
            vectors = await self.embedder.aembed([t.text for t in rows])
            params = self._insert_params(tenant, thread, rows, vectors)
            added, rewritten = await run_async(self._engines.async_engine, _add_plan(params))
        except Exception as exc:
            _fail_open("add", exc)
            return 0
        _count_rewrite(rewritten)
        return added

    # -- reading ------------------------------------------------------------------------

    def _query_params(
        self, query: str, vector: Any, word_vectors: Sequence[Any] = ()
    ) -> dict[str, Any]:
        """What a recall of ``query`` asks whatever the thread: its vector as pgvector text,
        identifiers, content words (both marks), all its terms, its word counts, and its
        content words' stems with their vectors (``word_vectors``, in ``need_words``
        order; none: the query's need is never used)."""
        lexical = _with_context(lexical_terms(query))
        identifiers = query_terms(query)
        kinds = asked_kinds(query)
        # the query's content words as the compounds of a turn ("rentalcar": "rental car")
        compounds = [COMPOUND_MARK + t[1:] for t in lexical if t[0] == LEXICAL_MARK]
        return {
            "v": _vector_literal(vector),
            "q": identifiers,
            "lq": lexical,
            "cq": compounds,
            "terms": sorted({*identifiers, *lexical, *compounds, *kinds, VALUE_TERM}),
            "kinds": sorted(kinds),
            "lq_counts": Counter(t for t in content_stems(query) if len(t) > 1),
            "words": [
                (stem, vec) for (stem, _), vec in zip(need_words(query), word_vectors, strict=False)
            ],
        }

    def _scoped(self, tenant: str, thread: str, k: int, asked: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "tenant": tenant,
            "thread": thread,
            "model": self.embedder.model_id,
            **asked,
            "n": max(self.candidates, k),
        }

    def _remembered(self, tenant: str, query: str) -> Mapping[str, Any] | None:
        key = (tenant, self.embedder.model_id, query)  # an embedder swapped later: a miss
        with self._asked_lock:
            asked = self._asked.get(key)
            if asked is not None:
                self._asked.move_to_end(key)
            return asked

    def _remember(self, tenant: str, query: str, vectors: Any) -> Mapping[str, Any]:
        """Keep the query's params; ``vectors``: the query's, then its ``need_words``'."""
        asked = self._query_params(query, vectors[0], list(vectors[1:]))
        with self._asked_lock:
            self._asked[(tenant, self.embedder.model_id, query)] = asked
            while len(self._asked) > QUERY_CACHE_SIZE:
                self._asked.popitem(last=False)
        return asked

    def recall(
        self, tenant: str, thread: str, query: str, *, k: int = 4, token_budget: int = 512
    ) -> list[RecalledSnippet]:
        """The up to ``k`` folded turns most relevant to ``query`` that fit ``token_budget``
        together, in thread order. Fails open: [] on a store outage."""
        _scope(tenant, thread)
        _check_limits(k, token_budget)
        if not query.strip() or k == 0 or token_budget == 0:
            return []
        try:
            asked = self._remembered(tenant, query)
            if asked is None:
                texts = _embedded(query, self.need_vector)
                asked = self._remember(tenant, query, self.embedder.embed(texts))
            plan = self._recall_plan(self._scoped(tenant, thread, k, asked))
            return with_deadline(self._engines, plan(k, token_budget), self.timeout)
        except Exception as exc:
            _fail_open("recall", exc)
            return []

    async def arecall(
        self, tenant: str, thread: str, query: str, *, k: int = 4, token_budget: int = 512
    ) -> list[RecalledSnippet]:
        """Async twin of ``recall``."""
        _scope(tenant, thread)
        _check_limits(k, token_budget)
        if not query.strip() or k == 0 or token_budget == 0:
            return []
        try:
            asked = self._remembered(tenant, query)
            if asked is None:
                vectors = await self.embedder.aembed(_embedded(query, self.need_vector))
                asked = self._remember(tenant, query, vectors)
            plan = self._recall_plan(self._scoped(tenant, thread, k, asked))
            return await awith_deadline(self._engines, plan(k, token_budget), self.timeout)
        except Exception as exc:
            _fail_open("recall", exc)
            return []

    def _recall_plan(
        self, params: dict[str, Any]
    ) -> Callable[[int, int], Plan[list[RecalledSnippet]]]:
        """``_recall`` with this store's weights, for ``params``."""
        weights = (
            self.term_boost,
            self.lexical_weight,
            self.echo_penalty,
            self.value_boost,
            self.kind_boost,
        )

        def plan(k: int, token_budget: int) -> Plan[list[RecalledSnippet]]:
            return _recall(
                params, weights, self.recency, k, token_budget, self.focus, self.token_model
            )

        return plan

    async def anext_index(self, tenant: str, thread: str) -> int:
        """The index after the thread's last kept turn (0 when it has none): where a memory
        that keeps no state of its own across processes (``HistoryMemoryBlock``) goes on
        numbering, so that its next batch extends the thread rather than rewrite it.
        Fails open: 0 on a store outage."""
        _scope(tenant, thread)
        params = {"tenant": tenant, "thread": thread, "model": self.embedder.model_id}
        try:
            return await run_async(self._engines.async_engine, _first_int(_NEXT_INDEX, params))
        except Exception as exc:
            _fail_open("next_index", exc)
            return 0

    def forget(self, tenant: str, thread: str) -> int:
        """Delete a thread's folded turns (for example when the user deletes the thread).

        Raises ``StoreUnavailable`` on an outage: a deletion must not fail silently.
        """
        _scope(tenant, thread)
        plan = _count_plan(_FORGET, {"tenant": tenant, "thread": thread})
        try:
            return run_sync(self._engines.engine, plan)
        except Exception as exc:
            raise StoreUnavailable(self.store.display_url, f"forget failed: {exc}") from exc


def _embedded(query: str, need: bool) -> list[str]:
    """The texts one recall embeds, in one call: the query, then (``need``) its
    ``need_words``."""
    return [query, *(word for _, word in need_words(query))] if need else [query]


def _add_plan(params: dict[str, Any]) -> Plan[tuple[int, int | None]]:
    """Drop the thread's stale turns (``_DIVERGED``, ``_TRUNCATE``), then keep the batch;
    returns how many turns were new and the index the thread was rewritten from.

    Writers of one thread take its lock first (``_THREAD_LOCK``), in a statement of its own
    so that the check reads what the writer before committed: a rewrite then never mixes
    with a concurrent append, and its posting-list updates, which cannot follow the upsert's
    term order, never meet another writer of the thread's."""
    yield Sql(_THREAD_LOCK, params)
    found = yield Sql(_DIVERGED, {**params, "first": min(params["idx"])})
    stale: int | None = found[0]["d"]
    if stale is not None:
        yield Sql(_TRUNCATE, {**params, "d": stale})
    kept = yield Sql(_INSERT, params)
    return len(kept), stale


def _count_rewrite(stale: int | None) -> None:
    if stale is not None:
        diagnostics.count("recall_thread_rewritten")


def _first_int(sql: str, params: dict[str, Any]) -> Plan[int]:
    rows = yield Sql(sql, params)
    return int(rows[0]["n"])


def _count_plan(sql: str, params: dict[str, Any]) -> Plan[int]:
    rows = yield Sql(sql, params)
    return len(rows)


def _check_limits(k: int, token_budget: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError("k", k, "must be an int >= 0 snippets")
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 0:
        raise ConfigError("token_budget", token_budget, "must be an int >= 0 tokens")


def focused(text_: str, query_words: frozenset[str], *, keep_first: bool = False) -> str:
    """The sentences of a recalled turn that state a value or use a content word of the
    query, in order, with ``…`` where sentences were left out; the whole turn when it has
    one sentence or none qualifies. A long turn's answer is usually one sentence of it, and
    each sentence left out makes room for another turn. ``keep_first`` keeps the first
    sentence too: a turn found by the words of the turn before it answers that turn first
    ("No thanks. I do need parking though." to "Breakfast?"). A sentence that holds a query
    word as a compound ("rental car" for "rentalcars") uses it too."""
    spans = split_sentences(text_)
    if len(spans) < 2:
        return text_
    keep = {
        (a, b)
        for n, (a, b) in enumerate(spans)
        if (keep_first and n == 0)
        or fact_spans(text_[a:b])
        or query_words.intersection(content_stems(text_[a:b]))
        or query_words.intersection(c[1:] for c in compound_terms(text_[a:b]))
    }
    if not keep or len(keep) == len(spans):
        return text_
    parts: list[str] = []
    for a, b in spans:
        if (a, b) in keep:
            parts.append(text_[a:b])
        elif not parts or parts[-1] != "…":
            parts.append("…")
    return " ".join(parts)


def _recall(
    params: Mapping[str, Any],
    weights: tuple[float, float, float, float, float],
    recency: tuple[float, float],
    k: int,
    token_budget: int,
    focus: bool,
    token_model: str | None,
) -> Plan[list[RecalledSnippet]]:
    """Read, score and pack one recall (``_THREAD``, then ``_TEXTS`` of the turns scoring
    puts first).

    The turns to score are the ``n`` nearest, the ``n`` nearest holding an identifier of the
    query, and the ``n`` best by BM25 (``recall_lexical``). Each scores its similarity, plus
    ``term_boost`` times the share of the query's identifiers it holds, plus
    ``lexical_weight`` times its BM25 score over the query's content words as a share of the
    most any turn could get, plus ``value_boost`` if it states a value, less
    ``echo_penalty`` times how far it echoes the query; the best that fit the budget
    together are kept (one too large is skipped)."""
    scope = {"tenant": params["tenant"], "thread": params["thread"], "model": params["model"]}
    head = yield Sql(_THREAD, {**scope, "v": params["v"], "terms": params["terms"]}, rows="tuples")
    # read in the same snapshot as the turns; a turn not among them is never scored
    postings: dict[str, list[int]] = {}
    nearest: list[int] = []
    distance: dict[int, float] = {}
    own: dict[int, int] = {}
    for term, idx, d, counts in head:
        if term is not None:
            postings[term] = idx
        elif idx:
            nearest = idx
            distance = dict(zip(idx, d, strict=True))
            own = dict(zip(idx, counts, strict=True))
    if not nearest:
        return []
    lexical_query = set(params["lq"])
    compound_query = set(params["cq"])
    held: dict[int, set[str]] = {}
    for term, turns in postings.items():
        if term in compound_query:  # a compound of the turn's words counts as its own word
            term = LEXICAL_MARK + term[1:]
        elif term not in lexical_query:
            continue
        for i in turns:
            mine = held.get(i)
            if mine is not None:
                mine.add(term)
            elif i in distance:
                held[i] = {term}
    matches = match_turns({i: frozenset(h) for i, h in held.items()}, own)
    phrasing = phrasing_words(matches)
    texts: dict[int, Mapping[str, Any] | None] = {}
    undecided = undecided_phrasing(matches, phrasing, params["lq_counts"])
    if undecided:  # only the echoes' texts can tell
        rows = yield Sql(_TEXTS, {**scope, "idx": sorted(matches.echo)})
        texts.update((int(r["turn_index"]), r) for r in rows)
        echoes = [str(r["content"]) for r in rows]
        phrasing -= repeated_in_query(echoes, undecided, params["lq_counts"])
    n = int(params["n"])
    identifiers = Counter(i for t in params["q"] for i in postings.get(t, ()) if i in distance)
    # words only when need_vector is on: the query's words are embedded only then
    need = _need_vector(params.get("words", ()), phrasing)
    if need is not None:  # rank by what the query asks, not how this thread asks it
        likely = bm25(matches, phrasing, len(distance), distance, n).top  # before the need
        likely_ids = [i for i in nearest if i in identifiers][:n]
        rows = yield Sql(
            _NEED,
            {
                **scope,
                "v": _vector_literal(need),
                "m": 2 * k,
                "idx": sorted({*likely, *likely_ids}),
            },
            rows="tuples",
        )
        needed: dict[int, float] = {}
        for index, idx, far, role, content, tokens in rows:
            if index is None:
                needed = {i: d for i, d in zip(idx or (), far or (), strict=True) if i in distance}
            elif int(index) not in texts:
                texts[int(index)] = {"role": role, "content": content, "tokens": tokens}
        if len(needed) == len(distance):  # the same turns: ``identifiers`` still holds
            distance = needed
            nearest = sorted(distance, key=lambda i: (nan_last(distance[i]), i))
    answers = answers_to_echoes(matches)
    lexical = bm25(matches, phrasing, len(distance), distance, n)
    near = nearest[:n]
    with_ids = [i for i in nearest if i in identifiers][:n]
    values = set(postings.get(VALUE_TERM, ())).intersection(distance)
    typed = {i for kind in params["kinds"] for i in postings.get(kind, ()) if i in distance}
    boost, lexical_weight, redundant, value, kind = weights
    recent, half_life = recency
    newest = max(distance)
    wanted = max(1, len(params["q"]))
    best = lexical.best_possible
    ranked: list[tuple[float, int, float]] = []
    for i in {*near, *with_ids, *lexical.top}:
        similarity = 0.0 if math.isnan(distance[i]) else 1.0 - distance[i]
        lex = lexical.score.get(i, 0.0) / best if best > 0 else 0.0
        # a turn whose content words the query already holds (an earlier question asked
        # the same way) tells the model nothing the query does not: an echo loses all, any
        # other turn by how far more than half of its words the query holds (sharing a few
        # is what relevant turns do)
        echo = 1.0 if i in lexical.echo else max(0.0, lexical.share.get(i, 0.0) - 0.5) * 2.0
        if i in answers:  # the answer to an earlier question asked like this one
            echo = max(echo, ANSWER_ECHO)
        score = (
            similarity
            + boost * identifiers[i] / wanted
            + lexical_weight * lex
            + value * (i in values)
            + kind * (i in typed) * (1.0 if lex > 0 or identifiers[i] else KIND_WITHOUT_EVIDENCE)
            + recent * 0.5 ** ((newest - i) / half_life)
            - redundant * echo
        )
        ranked.append((score, i, similarity))
    ranked.sort(key=lambda r: (-r[0], -r[1]))
    query_words = frozenset(t[1:] for t in params["lq"] if t.startswith(LEXICAL_MARK))
    chosen: list[RecalledSnippet] = []
    left = token_budget
    for place, (score, i, similarity) in enumerate(ranked):
        if len(chosen) >= k:
            break
        if i not in texts:  # the texts of the next few turns in score order, in one read
            batch = [r[1] for r in ranked[place : place + 2 * k] if r[1] not in texts]
            rows = yield Sql(_TEXTS, {**scope, "idx": batch})
            texts.update({j: None for j in batch})  # a turn forgotten since is skipped
            texts.update((int(r["turn_index"]), r) for r in rows)
        row = texts[i]
        if row is None:
            continue
        snippet = RecalledSnippet(
            i,
            str(row["role"]),
            str(row["content"]),
            int(row["tokens"]),
            similarity,
            identifiers[i],
            score,
        )
        mine = held.get(i, set())
        # with the query's need, a turn that holds none of its needed words (found by its
        # meaning or its value alone) gives focus nothing to choose its sentences by: it is
        # kept whole. Without it, nearness to a templated query is weak evidence, and whole
        # turns crowd out others (long set, need off: seeds 17-19 lost 0.005 to 0.010)
        guided = not params.get("words") or any(
            w not in phrasing and (LEXICAL_MARK + w in mine or CONTEXT_MARK + w in mine)
            for w in query_words
        )
        if focus and guided:
            # a query word the turn holds only from the turns around it: keep its reply
            replies = any(
                CONTEXT_MARK + w in mine and LEXICAL_MARK + w not in mine for w in query_words
            )
            text_ = focused(snippet.text, query_words, keep_first=replies)
            if text_ != snippet.text:
                snippet = replace(snippet, text=text_, tokens=count_text(text_, token_model))
        if snippet.tokens <= left:
            left -= snippet.tokens
            chosen.append(snippet)
    return sorted(chosen, key=lambda s: s.index)


def _vector_literal(vector: Any) -> str:
    """``vector`` as pgvector text, each component to 6 significant digits."""
    values = vector.tolist() if hasattr(vector, "tolist") else [float(x) for x in vector]
    return "[" + ",".join([f"{x:.6g}" for x in values]) + "]"


def _fail_open(operation: str, exc: BaseException) -> None:
    diagnostics.count(
        f"recall_{operation}_failure" if operation != "recall" else "recall_failure",
        "graphthrift: recall store %s failed open (%s: %s)",
        operation,
        type(exc).__name__,
        str(exc).splitlines()[0] if str(exc) else "",
    )
