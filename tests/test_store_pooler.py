"""PgBouncer in transaction mode: nothing that coordinates processes keeps session state.

Runs a real ``pgbouncer`` (``apt-get install pgbouncer``) in front of the session's server.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url, text

from graphthrift import Budget, Ledger, LedgerRecord, Store
from graphthrift.errors import ConfigError
from graphthrift.ops.alerts import check_alerts
from graphthrift.resilience.ratelimit import RateLimit, SharedRateLimiter
from graphthrift.store.postgres import apply_migrations

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
)
needs_pgbouncer = pytest.mark.skipif(
    PGBOUNCER is None, reason="the pgbouncer binary is absent (apt-get install pgbouncer)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bouncer(store: Store) -> Iterator[str]:
    """A ``postgresql://`` URL through PgBouncer in transaction mode, one server connection
    per database, so every client shares it and session state would leak between them."""
    assert PGBOUNCER is not None
    server = make_url(store.url)
    folder = Path(tempfile.mkdtemp(prefix="gt-pgbouncer-"))
    folder.chmod(0o777)  # pgbouncer refuses to run as root: it runs as another user then
    port = _free_port()
    socket_dir = server.query.get("host")  # the embedded server listens on a socket only
    host = str(socket_dir) if socket_dir else server.host or "127.0.0.1"
    forced = f"host={host} port={server.port or 5432} user={server.username}"
    if server.password:
        forced += f" password={server.password}"
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = {forced}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 1
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
"""
    )
    for path in folder.iterdir():
        path.chmod(0o666)
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # the owner of the server's socket folder may reach the socket; nobody else need
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if socket_dir else "nobody"
        command = ["runuser", "-u", owner, "--", *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"pgbouncer did not start: {out}")
            time.sleep(0.1)
    try:
        yield (
            server.set(
                drivername="postgresql", port=port, host="127.0.0.1", query={}
            ).render_as_string(hide_password=False)
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _repeat(url: str, prepare_threshold: int | None) -> None:
    """Two clients taking turns with one statement: psycopg prepares it after a few runs."""
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    a = psycopg.connect(conninfo, autocommit=True, prepare_threshold=prepare_threshold)
    b = psycopg.connect(conninfo, autocommit=True, prepare_threshold=prepare_threshold)
    try:
        for i in range(8):
            for conn in (a, b):
                conn.execute("SELECT %s::int + 1", (i,)).fetchone()
    finally:
        a.close()
        b.close()


@needs_pgbouncer
def test_prepared_statements_break_through_the_pooler_unless_turned_off(bouncer: str) -> None:
    with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
        _repeat(bouncer, 0)  # what psycopg does by default, sooner: the pooler shares them
    _repeat(bouncer, None)


@needs_pgbouncer
def test_store_works_through_pgbouncer_transaction_mode(
    bouncer: str, tmp_path: Path, tenant: str
) -> None:
    store = Store(f"{bouncer}?pgbouncer=true", home=tmp_path)
    assert store.transaction_pooler and store.session_url is None
    assert "pgbouncer" not in store.url
    ledger = Ledger(store, flush_interval=0.02, batch_size=7)
    try:
        with store.connect() as conn:
            assert apply_migrations(conn) == []  # migrations: one transaction, xact lock
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        for round_ in range(4):  # many COPYs and reads of the same statements
            ledger.record_many(
                LedgerRecord(
                    ts=hour - timedelta(minutes=1 + i),
                    tenant_id=tenant,
                    feature=f"f{i % 2}",
                    model="gpt-4o-mini",
                    input_tokens=10,
                    output_tokens=round_,
                )
                for i in range(20)
            )
            ledger.flush()
            rows = ledger.report(["feature"], tenant_id=tenant)
            assert sum(r["requests"] for r in rows) == 20 * (round_ + 1)
        # several pooled client connections repeating the same statements at once
        with ThreadPoolExecutor(4) as pool:
            totals = list(
                pool.map(
                    lambda _: [
                        sum(r["requests"] for r in ledger.report(["feature"], tenant_id=tenant))
                        for _ in range(8)
                    ],
                    range(8),
                )
            )
        assert totals == [[80] * 8] * 8
        check_alerts(store, since=hour - timedelta(hours=3), until=hour, tenant_id=tenant)
        budget = Budget(store, max_usd={"tenant": 5.0})
        tags = {"tenant_id": tenant, "run_id": "r1"}
        for _ in range(8):
            held = budget.reserve("gpt-4o-mini", [{"role": "user", "content": "hi"}], tags=tags)
            budget.settle(held, input_tokens=5, output_tokens=5)
        assert budget.usage(tags)["tenant"]["spent_usd"] > 0
        limiter = SharedRateLimiter(store, {"gpt-4o-mini": RateLimit(rpm=1000)}, max_wait_s=0)
        for _ in range(8):
            limiter.acquire("gpt-4o-mini", tokens=10, tenant_id=tenant)
        with store.connect() as conn:
            # nothing above left a session-level lock behind on a pooled server connection
            held_locks = conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            ).scalar()
        assert held_locks == 0
    finally:
        ledger.close()
        store.close()


def test_session_url_is_the_direct_one_unless_pooled(store: Store, tmp_path: Path) -> None:
    direct = Store(store.url, home=tmp_path)
    assert not direct.transaction_pooler and direct.session_url == direct.url
    direct.close()
    pooled = Store(store.url, home=tmp_path, transaction_pooler=True, session_url=store.url)
    assert pooled.transaction_pooler and pooled.session_url is not None
    pooled.close()
    with pytest.raises(ConfigError, match="pgbouncer"):
        Store(f"{store.url}&pgbouncer=maybe", home=tmp_path)


@needs_pgbouncer
def test_single_flight_through_the_pooler_uses_the_session_url(
    bouncer: str, store: Store, tmp_path: Path, tenant: str
) -> None:
    from graphthrift import diagnostics
    from graphthrift.resilience import SingleFlight

    pooled = Store(f"{bouncer}?pgbouncer=true", home=tmp_path)
    before = diagnostics.get("single_flight_store_failure")
    flight = SingleFlight(pooled)
    # no session connection: within this process only, counted, and the call goes through
    assert flight.call("k", lambda: "direct", scope={"tenant_id": tenant}) == "direct"
    assert diagnostics.get("single_flight_store_failure") == before + 1
    pooled.close()
    with_session = Store(f"{bouncer}?pgbouncer=true", home=tmp_path, session_url=store.url)
    flight = SingleFlight(with_session)
    for _ in range(3):
        assert flight.call("k2", lambda: "led", scope={"tenant_id": tenant}) == "led"
    assert diagnostics.get("single_flight_store_failure") == before + 1
    with with_session.connect() as conn:
        held = conn.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        ).scalar()
    assert held == 0  # each leader let go of its session lock
    with_session.close()
