"""Writers killed or stopped at random points lose nothing that was recorded.

Real subprocesses write ledger rows; they are killed with SIGKILL (after which nothing that
``flush()`` returned for may be missing), stopped with SIGTERM or SIGINT (after which every
recorded row is in the database or in a spill file the next ledger replays), and the
previous signal handler still runs. Seeded, so a failure can be replayed.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fault_helpers import HANG_GUARD, fresh_home, python
from sqlalchemy import create_engine, text

from cache_helpers import scratch_database
from graphthrift import Ledger, Store

WRITER = """
import os, signal, sys, time
from pathlib import Path
from graphthrift import Ledger, LedgerRecord, Store

url, home, tenant, mode = sys.argv[1:5]
recorded = 0

def previous_handler(signum, frame):
    Path(home, "previous-handler-ran").write_text(str(recorded))
    raise SystemExit(7)

if mode == "chained":
    signal.signal(signal.SIGTERM, previous_handler)
store = Store(url, home=home)
ledger = Ledger(store, flush_interval=0.02, retry_interval=0.05, batch_size=25)
print("ready", flush=True)
for i in range(100_000):
    ledger.record(LedgerRecord(tenant_id=tenant, call_id=str(i), model="gpt-4o-mini",
                               input_tokens=i, output_tokens=1))
    recorded += 1
    if mode == "flushing" and recorded % 25 == 0:
        ledger.flush(timeout=30)
        print(f"flushed {recorded}", flush=True)
    if recorded == int(os.environ.get("STOP_AFTER", "0")):
        print(f"recorded {recorded}", flush=True)
        while True:
            time.sleep(0.05)
    time.sleep(0.001)
"""


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """The writer's home, outside pytest's numbered temp directories (see ``fresh_home``)."""
    with fresh_home() as home:
        yield home


@pytest.fixture
def outage_url(store: Store) -> Iterator[tuple[str, Callable[[bool], None]]]:
    with scratch_database(store.url) as db:
        yield db


def _call_ids(url: str, tenant: str) -> list[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT call_id FROM graphthrift_ledger WHERE tenant_id = :t"), {"t": tenant}
            )
            return sorted(int(r[0]) for r in rows)
    finally:
        engine.dispose()


def _replay(url: str, home: Path) -> None:
    """Open a ledger where the writer was, so its spill files are replayed and written."""
    replay_store = Store(url, home=home)
    replay = Ledger(replay_store)
    replay.flush(timeout=HANG_GUARD)
    replay.close()
    replay_store.close()


def _wait_for(proc: object, prefix: str) -> str:
    line = ""
    while not line.startswith(prefix):
        line = proc.stdout.readline()  # type: ignore[attr-defined]
        if not line:
            raise AssertionError(f"writer ended early: {proc.stderr.read()}")  # type: ignore[attr-defined]
    return line


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_kill_9_loses_nothing_that_flush_returned_for(
    outage_url: tuple[str, Callable[[bool], None]], tmp_path: Path, seed: int
) -> None:
    url, _ = outage_url
    tenant = f"kill9-{seed}"
    rng = random.Random(seed)
    proc = python(WRITER, url, str(tmp_path), tenant, "flushing")
    try:
        _wait_for(proc, "ready")
        target = rng.randint(2, 8) * 25
        flushed = 0
        while flushed < target:
            flushed = int(_wait_for(proc, "flushed").split()[1])
        time.sleep(rng.random() * 0.05)  # a random point after that flush
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ids = _call_ids(url, tenant)
    assert ids[:flushed] == list(range(flushed))  # everything flushed is there
    assert len(ids) == len(set(ids))  # nothing twice


@pytest.mark.parametrize(("seed", "down"), [(5, False), (17, True), (23, True)])
def test_sigterm_spills_every_recorded_row_and_chains_to_the_previous_handler(
    outage_url: tuple[str, Callable[[bool], None]], tmp_path: Path, seed: int, down: bool
) -> None:
    url, set_down = outage_url
    tenant = f"term-{seed}"
    rng = random.Random(seed)
    proc = python(WRITER, url, str(tmp_path), tenant, "chained")
    try:
        _wait_for(proc, "ready")
        if down:
            set_down(True)  # the writer's rows can only be queued now
        time.sleep(0.2 + rng.random() * 0.6)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=HANG_GUARD)
    finally:
        if down:
            set_down(False)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 7, proc.stderr.read()  # type: ignore[union-attr]
    recorded = int((tmp_path / "previous-handler-ran").read_text())
    assert recorded > 0
    _replay(url, tmp_path)
    ids = _call_ids(url, tenant)
    assert len(ids) == len(set(ids))
    # a signal inside record() may land after the append but before the count
    assert ids in (list(range(recorded)), list(range(recorded + 1)))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_default_handlers_still_end_the_process_after_the_spill(
    outage_url: tuple[str, Callable[[bool], None]], tmp_path: Path, signum: int
) -> None:
    url, set_down = outage_url
    tenant = f"default-{signum}"
    proc = python(WRITER, url, str(tmp_path), tenant, "plain", env={"STOP_AFTER": "300"})
    try:
        _wait_for(proc, "ready")
        set_down(True)
        _wait_for(proc, "recorded 300")
        proc.send_signal(signum)
        code = proc.wait(timeout=HANG_GUARD)
    finally:
        set_down(False)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # SIGTERM: killed by the signal again; SIGINT: KeyboardInterrupt, as without us
    assert code in (-signum, 1), proc.stderr.read()  # type: ignore[union-attr]
    _replay(url, tmp_path)
    assert _call_ids(url, tenant) == list(range(300))
