"""Several replicas on one PostgreSQL URL, each started from its own working directory,
as the README's "Deploying" section describes; and the scale benchmark's figures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from sqlalchemy import text

from cache_helpers import scratch_database
from graphthrift import Store
from graphthrift.bench.ledger_scale import run_scale
from graphthrift.ledger.schema import ROLLUP_TABLE

REPO = Path(__file__).resolve().parents[1]

_REPLICA = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from graphthrift import Budget, Ledger, LedgerRecord, Store
    tenant, name = sys.argv[1], sys.argv[2]
    store = Store()  # GRAPHTHRIFT_DATABASE_URL: no embedded server, no GRAPHTHRIFT_HOME
    ledger = Ledger(store, flush_interval=0.02)
    budget = Budget(store, max_usd={"tenant": 100.0})
    tags = {"tenant_id": tenant, "run_id": name}
    for i in range(40):
        held = budget.reserve("gpt-4o-mini", [{"role": "user", "content": "hi"}], tags=tags)
        budget.settle(held, input_tokens=10, output_tokens=5)
        ledger.record(LedgerRecord(tenant_id=tenant, feature=name, model="gpt-4o-mini",
                                   input_tokens=10, output_tokens=5))
    ledger.close()
    print(store.embedded, store.home, flush=True)
    store.close()
    """
)


def test_replicas_from_different_directories_share_one_url(
    store: Store, tmp_path: Path, tenant: str
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GRAPHTHRIFT_HOME", "GRAPHTHRIFT_DATABASE_URL")
    }
    env["GRAPHTHRIFT_DATABASE_URL"] = store.url
    env["PYTHONPATH"] = str(REPO / "src")
    folders = [tmp_path / f"replica-{i}" / "app" for i in range(3)]
    procs = []
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _REPLICA, tenant, f"r{i}"],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outputs.append(out.split())
    # each replica kept its local files under its own directory and ran no server there
    assert [o[0] for o in outputs] == ["False"] * 3
    assert [Path(o[1]) for o in outputs] == [(f / ".graphthrift").resolve() for f in folders]
    assert not any((f / ".graphthrift" / "pgdata").exists() for f in folders)
    with store.connect() as conn:
        rows = dict(
            conn.execute(
                text(
                    "SELECT feature, count(*) FROM graphthrift_ledger WHERE tenant_id = :t"
                    " AND kind = 'llm' GROUP BY 1"
                ),
                {"t": tenant},
            ).all()
        )
        rolled = conn.execute(
            text(
                f"SELECT sum(rows) FROM {ROLLUP_TABLE} WHERE tenant_id = :t AND kind = 'llm'"
                " AND feature LIKE 'r%'"
            ),
            {"t": tenant},
        ).scalar()
    assert rows == {"r0": 40, "r1": 40, "r2": 40}
    assert rolled == 120


def test_scale_bench_reads_what_it_generated(store: Store, tmp_path: Path) -> None:
    with scratch_database(store.url) as (url, _):
        scratch = Store(url, home=tmp_path)
        figures = run_scale(scratch, 20_000, Console(quiet=True))
        with scratch.connect() as conn:
            rolled = conn.execute(text(f"SELECT sum(rows) FROM {ROLLUP_TABLE}")).scalar()
            newest = conn.execute(text("SELECT max(ts) FROM graphthrift_ledger")).scalar()
        scratch.close()
    assert figures["rows"] == 20_000
    assert rolled == 20_000
    assert 0 < figures["rollup_rows"] < 20_000
    assert newest <= datetime.now(UTC)
    for key in ("report_seconds", "alerts_seconds", "load_s"):
        assert figures[key] >= 0
    assert figures["alerts_seconds_10m_rows"] is None
