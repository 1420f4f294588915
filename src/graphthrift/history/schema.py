"""Table of the recall store (migration versions 50-59).

``graphthrift_folded_turns``: one row per turn that history folding took out of the prompt,
kept verbatim so that recall can bring it back. Every row carries what it may be recalled
into (tenant_id, thread_id); a lookup filters on both with indexed equality before anything
else. ``embedding`` is an untyped ``vector`` so that embedders of any size share the table
(``embedding_model`` keeps vectors of different models apart); ``terms`` holds the text's
lower-cased words, for the exact match of identifiers and numbers in hybrid retrieval, and
its content words (``own_terms`` counts those of its own text).

``graphthrift_folded_terms`` (migration 51) inverts ``terms`` per thread: one row per
(tenant, thread, embedding model, term) with the turns that hold it, written in the same
statement as the turns. Recall reads only the rows of the query's terms, so the thread's
document frequencies and each turn's matches come without reading any turn's terms or text
(the few chosen turns' texts are read after scoring). Every row carries its tenant and
thread like the turns it indexes.

Migration 52 keeps ``embedding`` in the row (storage ``MAIN``). pgvector declares its type
with ``EXTERNAL`` storage, so a row over PostgreSQL's 2 kB toast threshold (a 384-dimension
vector is 1.5 kB of it, and a long turn's text and terms the rest) had its embedding, the
largest value, moved out of line: on the bench's SGD turns one row in four, and each of them
cost recall a TOAST index lookup and fetch for its distance. Now the text and terms, which
recall's scan never reads, are compressed or moved out first; the embedding goes out of line
only when the row cannot fit a page at all (vectors of some 2,000 dimensions). Rows written
before it keep their out-of-line embeddings until the table is rewritten (``VACUUM FULL``).

There is no HNSW index by default: every recall is filtered to one thread, whose few hundred
to few thousand turns the (tenant, thread) index finds and an exact scan scores faster than
a filtered graph walk would (``graphthrift.bench.recall`` measures both at 100,000 turns).
``folded_hnsw_index_sql`` builds one for deployments with very long threads.
"""

from __future__ import annotations

from graphthrift.store.migration import Migration

FOLDED_TURNS_TABLE = "graphthrift_folded_turns"
#: Per thread, each stored term's posting list: the turns (``turn_index``) that hold it.
FOLDED_TERMS_TABLE = "graphthrift_folded_terms"


def folded_hnsw_index_sql(dim: int) -> str:
    """The partial HNSW (cosine) index over folded turns embedded in ``dim`` dimensions."""
    if not 1 <= dim <= 2000:
        raise ValueError(f"pgvector HNSW indexes vectors of 1..2000 dimensions, got {dim}")
    return (
        f"CREATE INDEX IF NOT EXISTS {FOLDED_TURNS_TABLE}_hnsw_{dim} ON {FOLDED_TURNS_TABLE} "
        f"USING hnsw ((embedding::vector({dim})) vector_cosine_ops) "
        f"WITH (m = 16, ef_construction = 64) WHERE dim = {dim}"
    )


HISTORY_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        50,
        "folded turns for recall",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {FOLDED_TURNS_TABLE} (
                id bigserial PRIMARY KEY,
                tenant_id text NOT NULL,
                thread_id text NOT NULL,
                turn_index integer NOT NULL,
                role text NOT NULL,
                content text NOT NULL,
                tokens integer NOT NULL,
                terms text[] NOT NULL DEFAULT '{{}}',
                embedding_model text NOT NULL,
                dim smallint NOT NULL,
                embedding vector NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            # one row per turn of a thread: folding a turn twice keeps the first copy, and
            # the (tenant, thread) prefix serves every recall's filter
            f"CREATE UNIQUE INDEX IF NOT EXISTS {FOLDED_TURNS_TABLE}_turn ON {FOLDED_TURNS_TABLE}"
            " (tenant_id, thread_id, embedding_model, turn_index)",
        ),
    ),
    Migration(
        51,
        "folded turns: posting lists per thread, own content-word counts",
        (
            f"ALTER TABLE {FOLDED_TURNS_TABLE} ADD COLUMN IF NOT EXISTS own_terms integer"
            " NOT NULL DEFAULT 0",
            # backfill: the turn's content words of its own text (marked '~')
            f"UPDATE {FOLDED_TURNS_TABLE} SET own_terms ="
            " (SELECT count(*) FROM unnest(terms) AS t WHERE left(t, 1) = '~')",
            f"""
            CREATE TABLE IF NOT EXISTS {FOLDED_TERMS_TABLE} (
                tenant_id text NOT NULL,
                thread_id text NOT NULL,
                embedding_model text NOT NULL,
                term text NOT NULL,
                turns integer[] NOT NULL,
                PRIMARY KEY (tenant_id, thread_id, embedding_model, term)
            )
            """,
            # backfill: the posting lists of the turns already kept
            f"INSERT INTO {FOLDED_TERMS_TABLE} (tenant_id, thread_id, embedding_model, term, turns)"
            " SELECT tenant_id, thread_id, embedding_model, t, array_agg(turn_index ORDER BY turn_index)"
            f" FROM {FOLDED_TURNS_TABLE}, unnest(terms) AS t"
            " GROUP BY tenant_id, thread_id, embedding_model, t"
            " ON CONFLICT (tenant_id, thread_id, embedding_model, term) DO NOTHING",
        ),
    ),
    Migration(
        52,
        "folded turns: embeddings kept in the row",
        # catalog only: rows already written keep their storage; new rows keep the vector
        # in line, and recall's scan of a thread reads no TOAST for its distances
        (f"ALTER TABLE {FOLDED_TURNS_TABLE} ALTER COLUMN embedding SET STORAGE MAIN",),
    ),
)
