"""The one-read recall that ``FoldedTurnStore`` replaced, kept as the reference its two
reads must agree with: one statement returned every turn of the thread sharing a content
word with the query (with its terms and text) besides the nearest and the identifier
matches, and scoring ran over those rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import text

from graphthrift.history.recall import (
    ANSWER_ECHO,
    KIND_WITHOUT_EVIDENCE,
    VALUE_TERM,
    FoldedTurnStore,
    RecalledSnippet,
    _embedded,
    _need_vector,
    _vector_literal,
    focused,
)
from graphthrift.history.recall_lexical import (
    CONTEXT_MARK,
    LEXICAL_MARK,
    as_own,
    lexical_scores,
    match_turns,
    phrasing_words,
    repeated_in_query,
)
from graphthrift.history.schema import FOLDED_TURNS_TABLE
from graphthrift.text.tokens import count_text

_SEARCH = (
    "WITH c AS MATERIALIZED (SELECT turn_index, role, content, tokens, terms,"
    " embedding <=> CAST(:v AS vector) AS d, terms && CAST(:q AS text[]) AS hit,"
    " terms && CAST(:lq AS text[]) AS lexhit"
    f" FROM {FOLDED_TURNS_TABLE}"
    " WHERE tenant_id = :tenant AND thread_id = :thread AND embedding_model = :model),"
    " near AS (SELECT turn_index FROM c ORDER BY d LIMIT :n),"
    " ids AS (SELECT turn_index FROM c WHERE hit ORDER BY d LIMIT :n)"
    " SELECT turn_index, role, content, tokens, terms, d, lexhit,"
    " turn_index IN (SELECT turn_index FROM near)"
    " OR turn_index IN (SELECT turn_index FROM ids) AS picked,"
    " (SELECT count(*) FROM c) AS total, (SELECT max(turn_index) FROM c) AS newest"
    " FROM c WHERE lexhit OR turn_index IN (SELECT turn_index FROM near)"
    " OR turn_index IN (SELECT turn_index FROM ids)"
)


def one_read_recall(
    turns: FoldedTurnStore, tenant: str, thread: str, query: str, *, k: int, token_budget: int
) -> list[RecalledSnippet]:
    """What the one-read recall returned for ``query`` with ``turns``' settings."""
    vectors = turns.embedder.embed(_embedded(query, turns.need_vector))
    asked = turns._query_params(query, vectors[0], list(vectors[1:]))
    params = turns._scoped(tenant, thread, k, asked)
    params["v"] = _vector_literal(vectors[0])
    with turns.store.connect() as conn:
        lexhit = {**params, "lq": [*params["lq"], *params["cq"]]}
        rows = [dict(r._mapping) for r in conn.execute(text(_SEARCH), lexhit)]
        phrasing = _phrasing(rows, params["lq"], params["lq_counts"])
        need = _need_vector(params["words"], phrasing) if turns.need_vector else None
        if need is not None:  # nearness (and the nearest) by the query's need
            lexhit["v"] = _vector_literal(need)
            rows = [dict(r._mapping) for r in conn.execute(text(_SEARCH), lexhit)]
    return _pack(
        _candidates(rows, params["lq"], params["n"], params["lq_counts"]),
        params["q"],
        (
            turns.term_boost,
            turns.lexical_weight,
            turns.echo_penalty,
            turns.value_boost,
            turns.kind_boost,
        ),
        turns.recency,
        k,
        token_budget,
        turns.focus,
        turns.token_model,
        frozenset(t[1:] for t in params["lq"] if t.startswith(LEXICAL_MARK)),
        frozenset(params["kinds"]),
        frozenset(phrasing),
        turns.need_vector,
    )


def _phrasing(
    rows: list[dict[str, Any]], query_lexical: Sequence[str], query_counts: Mapping[str, int]
) -> set[str]:
    """The query's phrasing words in this thread, as ``lexical_scores`` finds them."""
    asked = set(query_lexical)
    hits = {int(r["turn_index"]): r for r in rows if r["lexhit"]}
    held = {i: frozenset(asked.intersection(as_own(r["terms"] or ()))) for i, r in hits.items()}
    own = {i: sum(1 for t in r["terms"] or () if t[0] == LEXICAL_MARK) for i, r in hits.items()}
    matches = match_turns(held, own)
    phrasing = phrasing_words(matches)
    if phrasing:
        texts = [str(hits[i].get("content") or "") for i in matches.echo]
        phrasing -= repeated_in_query(texts, phrasing, query_counts)
    return phrasing


def _candidates(
    rows: list[dict[str, Any]],
    query_lexical: Sequence[str],
    n: int,
    query_counts: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """The turns to score: the nearest and the identifier matches the store picked, and the
    ``n`` best by BM25 (``recall_lexical``), each with its BM25 score and echo flag."""
    hits = [r for r in rows if r["lexhit"]]
    total = int(rows[0]["total"]) if rows else 0
    lexical = lexical_scores(hits, query_lexical, total, n, query_counts)
    keep = set(lexical.top)
    answers = {i + 1 for i in lexical.echo if i + 1 not in lexical.echo and lexical.share[i] < 1.0}
    return [
        {
            **row,
            "lex": lexical.score.get(int(row["turn_index"]), 0.0),
            "echo": int(row["turn_index"]) in lexical.echo,
            "answer": int(row["turn_index"]) in answers,
            "share": lexical.share.get(int(row["turn_index"]), 0.0),
            "lex_max": lexical.best_possible,
        }
        for row in rows
        if row["picked"] or int(row["turn_index"]) in keep
    ]


def _pack(
    rows: list[dict[str, Any]],
    terms: Sequence[str],
    weights: tuple[float, float, float, float, float],
    recency: tuple[float, float],
    k: int,
    token_budget: int,
    focus: bool = False,
    token_model: str | None = None,
    query_words: frozenset[str] = frozenset(),
    kinds: frozenset[str] = frozenset(),
    phrasing: frozenset[str] = frozenset(),
    need: bool = False,
) -> list[RecalledSnippet]:
    """Score the candidates (similarity, plus ``term_boost`` times the share of the query's
    identifiers they hold, plus ``lexical_weight`` times their BM25 score over the query's
    content words as a share of the most any turn could get) and keep the best that fit
    the budget together (one too large is skipped)."""
    boost, lexical, redundant, value, kind = weights
    recent, half_life = recency
    wanted = set(terms)
    row_terms = {int(row["turn_index"]): row["terms"] or () for row in rows}
    scored: list[RecalledSnippet] = []
    for row in rows:
        distance = float(row["d"])
        # a text without tokens embeds as a zero vector, whose cosine distance is NaN
        similarity = 0.0 if math.isnan(distance) else 1.0 - distance
        matched = len(wanted.intersection(row["terms"] or ()))
        lex_max = float(row.get("lex_max") or 0.0)
        lex = float(row.get("lex") or 0.0) / lex_max if lex_max > 0 else 0.0
        # a turn whose content words the query already holds (an earlier question asked
        # the same way) tells the model nothing the query does not: an echo loses all, any
        # other turn by how far more than half of its words the query holds (sharing a few
        # is what relevant turns do)
        share = float(row.get("share") or 0.0)
        echo = 1.0 if row.get("echo") else max(0.0, share - 0.5) * 2.0
        if row.get("answer"):
            echo = max(echo, ANSWER_ECHO)
        scored.append(
            RecalledSnippet(
                int(row["turn_index"]),
                str(row["role"]),
                str(row["content"]),
                int(row["tokens"]),
                similarity,
                matched,
                similarity
                + boost * matched / max(1, len(wanted))
                + lexical * lex
                + value * (VALUE_TERM in (row["terms"] or ()))
                + kind
                * bool(kinds.intersection(row["terms"] or ()))
                * (1.0 if lex > 0 or matched else KIND_WITHOUT_EVIDENCE)
                + recent
                * 0.5 ** ((int(row.get("newest") or 0) - int(row["turn_index"])) / half_life)
                - redundant * echo,
            )
        )
    scored.sort(key=lambda s: (-s.score, -s.index))
    chosen: list[RecalledSnippet] = []
    left = token_budget
    for snippet in scored:
        if len(chosen) >= k:
            break
        held = as_own(row_terms[snippet.index])
        guided = not need or any(
            w not in phrasing and (LEXICAL_MARK + w in held or CONTEXT_MARK + w in held)
            for w in query_words
        )
        if focus and guided:
            # a query word the turn holds only from the turns around it: keep its reply
            replies = any(
                CONTEXT_MARK + w in held and LEXICAL_MARK + w not in held for w in query_words
            )
            text_ = focused(snippet.text, query_words, keep_first=replies)
            if text_ != snippet.text:
                snippet = replace(snippet, text=text_, tokens=count_text(text_, token_model))
        if snippet.tokens <= left:
            left -= snippet.tokens
            chosen.append(snippet)
    return sorted(chosen, key=lambda s: s.index)
