"""The store: embedded PostgreSQL + pgvector, shared between processes, migrated in place."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from graphthrift import Store, StoreUnavailable
from graphthrift.store import apply_migrations, hide_password
from graphthrift.store.migrations import MIGRATIONS


def test_embedded_store_has_pgvector_and_schema(store: Store) -> None:
    with store.connect() as conn:
        assert conn.execute(
            text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar()
        versions = {r[0] for r in conn.execute(text("SELECT version FROM graphthrift_migrations"))}
        assert versions == {m.version for m in MIGRATIONS}
        assert conn.execute(
            text("SELECT '[1,0,0]'::vector <=> '[0,1,0]'::vector")
        ).scalar() == pytest.approx(1.0)


@pytest.fixture
def scratch_db(store: Store) -> Iterator[str]:
    """An empty database on the session server, dropped afterwards."""
    name = f"gt_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(store.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(store.url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_opening_migrates_an_old_schema_and_keeps_rows(scratch_db: str, tmp_path: Path) -> None:
    engine = create_engine(scratch_db)
    with engine.begin() as conn:
        assert apply_migrations(conn, MIGRATIONS[:1]) == [1]
        conn.execute(
            text(
                "INSERT INTO graphthrift_ledger (kind, tenant_id, model, input_tokens, cost_usd) VALUES ('llm', 'old', 'gpt-4o', 10, 0.5)"
            )
        )
    engine.dispose()
    store = Store(scratch_db, home=tmp_path)
    try:
        with store.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT tenant_id, input_tokens, cost_usd, saved_tokens, layer FROM graphthrift_ledger"
                )
            ).all()
            versions = [
                r[0]
                for r in conn.execute(
                    text("SELECT version FROM graphthrift_migrations ORDER BY version")
                )
            ]
        assert rows == [("old", 10, 0.5, 0, None)]
        assert versions == [m.version for m in MIGRATIONS]
    finally:
        store.close()
    again = Store(scratch_db, home=tmp_path)  # reopening is a no-op
    with again.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM graphthrift_ledger")).scalar() == 1
    again.close()


def test_unreachable_database_names_the_url_without_password(tmp_path: Path) -> None:
    url = "postgresql://admin:hunter2@127.0.0.1:1/ledger"
    with pytest.raises(StoreUnavailable) as info:
        Store(url, home=tmp_path, connect_timeout=2)
    message = str(info.value)
    assert "127.0.0.1:1/ledger" in message and "admin:***@" in message
    assert "hunter2" not in message
    assert info.value.url == hide_password(url)


def test_non_postgres_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        Store("mysql://u:secret@localhost/db", home=tmp_path)


def test_bad_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="connect_timeout"):
        Store("postgresql://localhost/db", home=tmp_path, connect_timeout=0)


def test_processes_share_one_embedded_server(tmp_path: Path) -> None:
    """Two processes opening the same directory talk to the same postmaster."""
    home = tmp_path / "shared-home"
    release = tmp_path / "release"
    script = textwrap.dedent(
        f"""
        import sys, time, pathlib
        from sqlalchemy import text
        from graphthrift import Store
        store = Store(home={str(home)!r})
        with store.connect() as conn:
            started = conn.execute(text("SELECT pg_postmaster_start_time()")).scalar()
            conn.execute(text("INSERT INTO graphthrift_ledger (kind, tenant_id) VALUES ('llm', :t)"), {{"t": sys.argv[1]}})
        print(started.isoformat(), flush=True)
        deadline = time.time() + 120
        while not pathlib.Path({str(release)!r}).exists() and time.time() < deadline:
            time.sleep(0.05)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        starts = [p.stdout.readline().strip() for p in procs]  # type: ignore[union-attr]
    finally:
        release.touch()
        for p in procs:
            p.wait(timeout=120)
    assert all(starts), [p.stderr.read() for p in procs]  # type: ignore[union-attr]
    assert starts[0] == starts[1]
    assert len(list(home.glob("pgdata"))) == 1
    time.sleep(0.5)
    store = Store(home=home)  # both rows landed in the one database
    with store.connect() as conn:
        tenants = sorted(
            r[0] for r in conn.execute(text("SELECT tenant_id FROM graphthrift_ledger"))
        )
    store.close()
    assert tenants == ["p0", "p1"]
