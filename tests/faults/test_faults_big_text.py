"""Ten megabytes of hostile text through the ledger and the embedder: stored or embedded,
repaired and counted, and the records around it still written."""

from __future__ import annotations

import numpy as np

from graphthrift import Ledger, LedgerRecord, diagnostics
from graphthrift.embed import default_embedder

HOSTILE = "prompt \x00 with \udce9 bad \ud83d\ude00 text "
TEN_MB = (HOSTILE * (10_000_000 // len(HOSTILE) + 1))[:10_000_000]


def test_ten_megabytes_of_bad_text_in_a_record_are_stored_and_the_batch_too(
    ledger: Ledger, tenant: str
) -> None:
    before = diagnostics.get("text_repaired")
    ledger.record(LedgerRecord(tenant_id=tenant, call_id="small-1"))
    ledger.record(
        LedgerRecord(tenant_id=tenant, call_id="huge", feature=TEN_MB, extra={"prompt": TEN_MB})
    )
    ledger.record(LedgerRecord(tenant_id=tenant, call_id="small-2"))
    ledger.flush(timeout=120)
    rows = {r["call_id"]: r for r in ledger.records(tenant_id=tenant)}
    assert set(rows) == {"small-1", "huge", "small-2"}
    stored = rows["huge"]["feature"]
    assert "\x00" not in stored and "\U0001f600" in stored and "\ufffd" in stored
    assert len(stored) > 9_000_000
    assert rows["huge"]["extra"]["prompt"] == stored
    assert diagnostics.get("text_repaired") >= before + 2


def test_ten_megabytes_of_bad_text_embed_like_their_head() -> None:
    embedder = default_embedder()
    vector = embedder.embed([TEN_MB])
    head = embedder.embed([TEN_MB[:20_000]])
    assert vector.shape == (1, embedder.dim) and np.isfinite(vector).all()
    assert np.allclose(vector, head, atol=1e-5)
