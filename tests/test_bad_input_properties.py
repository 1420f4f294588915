"""Property-based bad input for the ledger, its records, the text repair and the embedders.

Every input gives a clear error (naming the field) or a counted repair, and no other record
of the same batch is lost.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphthrift import Ledger, LedgerRecord, diagnostics
from graphthrift.embed import CallableEmbedder, MiniLMEmbedder
from graphthrift.ledger.records import TAG_FIELDS, clean_tag
from graphthrift.text import clean_json, clean_text

# every code point, lone surrogates and NUL included
ANY_CHAR = st.characters(codec=None, exclude_categories=[])
ANY_TEXT = st.text(ANY_CHAR, max_size=60)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    ANY_TEXT,
    st.binary(max_size=10),
    st.just(datetime(2026, 1, 1, tzinfo=UTC)),
    st.just(Decimal("1.25")),
    st.just(uuid.UUID(int=7)),
    st.just(object()),
)
EXTRA = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(ANY_TEXT, st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(ANY_TEXT)
def test_clean_text_always_gives_storable_text(value: str) -> None:
    cleaned = clean_text(value, "field")
    assert _storable_raw(cleaned)
    assert clean_text(cleaned, "field") == cleaned  # idempotent
    if _storable_raw(value):
        assert cleaned == value  # clean text is never changed


def _storable_raw(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


@FAST
@given(EXTRA)
def test_clean_json_gives_what_jsonb_accepts(value: Any) -> None:
    cleaned = clean_json(value, "extra")
    text = json.dumps(cleaned, allow_nan=False)  # raises on NaN, inf or a non-JSON type
    text.encode("utf-8")
    assert "\\u0000" not in text


@FAST
@given(st.sampled_from(TAG_FIELDS), SCALARS)
def test_clean_tag_gives_text_or_none(name: str, value: Any) -> None:
    tag = clean_tag(name, value)
    assert tag is None or (isinstance(tag, str) and _storable_raw(tag) and len(tag) <= 512)


@st.composite
def records(draw: st.DrawFn, tenant: str) -> LedgerRecord | Exception:
    """A record built from hostile values: built (repaired) or refused with a clear error."""
    kwargs: dict[str, Any] = {name: draw(st.one_of(st.none(), ANY_TEXT)) for name in TAG_FIELDS}
    kwargs["tenant_id"] = tenant
    kwargs["kind"] = draw(st.sampled_from(["llm", "cache_hit", "", "x\x00"]))
    kwargs["extra"] = draw(st.one_of(st.none(), EXTRA))
    kwargs["input_tokens"] = draw(st.one_of(st.integers(-5, 10**9), st.floats(), st.just("9")))
    kwargs["cost_usd"] = draw(st.one_of(st.none(), st.floats()))
    try:
        return LedgerRecord(**kwargs)
    except (TypeError, ValueError) as exc:
        named = [n for n in ("kind", "input_tokens", "cost_usd") if n in str(exc)]
        assert named, f"the error names no field: {exc}"
        return exc


@pytest.mark.parametrize("round_", range(2))
def test_hostile_records_are_repaired_or_refused_and_none_is_lost(
    ledger: Ledger, round_: int
) -> None:
    tenant = f"hyp-{uuid.uuid4().hex[:10]}"
    built: list[LedgerRecord] = []

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(records(tenant))
    def collect(record: LedgerRecord | Exception) -> None:
        if isinstance(record, LedgerRecord):
            record.call_id = str(len(built))
            built.append(record)

    collect()
    assert built, "hypothesis produced no valid record"
    quarantined = diagnostics.get("ledger_quarantined")
    ledger.record_many(built)
    ledger.flush(timeout=60)
    rows = ledger.records(tenant_id=tenant)
    written = sorted(int(r["call_id"]) for r in rows)
    assert written == list(range(len(built)))  # every built record, none quarantined
    assert diagnostics.get("ledger_quarantined") == quarantined
    for row in rows:
        for value in row.values():
            if isinstance(value, str):
                assert _storable_raw(value)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder(intra_op_threads=1, max_length=64)


@settings(max_examples=25, deadline=None)
@given(st.lists(ANY_TEXT, min_size=1, max_size=4))
def test_every_text_embeds_to_finite_unit_rows(minilm: MiniLMEmbedder, texts: list[str]) -> None:
    vectors = minilm.embed(texts)
    assert vectors.shape == (len(texts), minilm.dim)
    assert np.isfinite(vectors).all()
    norms = np.linalg.norm(vectors, axis=1)
    assert all(math.isclose(n, 1.0, abs_tol=1e-3) or n == 0.0 for n in norms)


@settings(max_examples=40, deadline=None)
@given(st.lists(ANY_TEXT, max_size=5))
def test_a_wrapped_function_never_sees_unencodable_text(texts: list[str]) -> None:
    def strict(batch: list[str]) -> list[list[float]]:
        return [[1.0, float(len(t.encode("utf-8")))] for t in batch]

    assert CallableEmbedder(strict, model_id="strict", dim=2).embed(texts).shape == (len(texts), 2)
