"""Shared fixtures: one embedded PostgreSQL for the whole session, isolation by tenant."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# onnxruntime and tiktoken write caches under HOME; keep the real one clean.
_HOME = Path(tempfile.mkdtemp(prefix="graphthrift-test-home-"))
# Registered before any Store starts its server, so it runs after the server has stopped.
atexit.register(shutil.rmtree, _HOME, True)
os.environ.setdefault("GRAPHTHRIFT_TEST_HOME", str(_HOME))
os.environ["HOME"] = str(_HOME)
os.environ.setdefault("MPLBACKEND", "Agg")
# A cache lookup past its deadline is a miss (fail open). On a loaded 2-core CI machine the
# 0.1 s default turns hits into misses, and a test would measure the machine, not the cache;
# the deadline tests pass timeout= themselves.
os.environ.setdefault("GRAPHTHRIFT_CACHE_TIMEOUT", "2")
os.environ.setdefault("GRAPHTHRIFT_RECALL_TIMEOUT", "5")  # recall's deadline, likewise
# One embedded server for the session; notebooks run by nbmake inherit it through this.
# Never the user's own home or database: GRAPHTHRIFT_TEST_DATABASE_URL selects a server.
os.environ["GRAPHTHRIFT_HOME"] = str(_HOME / "graphthrift")
os.environ.pop("GRAPHTHRIFT_DATABASE_URL", None)
if os.environ.get("GRAPHTHRIFT_TEST_DATABASE_URL"):
    os.environ["GRAPHTHRIFT_DATABASE_URL"] = os.environ["GRAPHTHRIFT_TEST_DATABASE_URL"]

REPO = Path(__file__).resolve().parents[1]
# The benchmark sets ship in the repo's data/ folder: tests (and the notebooks nbmake runs,
# through the environment) read them there, never from a folder beside the checkout.
os.environ["GRAPHTHRIFT_DATA_DIR"] = str(REPO / "data")
BENCH_DATA = Path(os.environ["GRAPHTHRIFT_DATA_DIR"])


@pytest.fixture(scope="session")
def store_home() -> Path:
    """The directory of the session's embedded server (``GRAPHTHRIFT_HOME``)."""
    home = Path(os.environ["GRAPHTHRIFT_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture(scope="session")
def store(store_home: Path) -> Iterator[object]:
    """The session's ``Store``: embedded PostgreSQL + pgvector, or the URL in
    ``GRAPHTHRIFT_TEST_DATABASE_URL`` when CI provides a server."""
    from graphthrift import Store

    s = Store(os.environ.get("GRAPHTHRIFT_TEST_DATABASE_URL"), home=store_home)
    yield s
    s.close()


@pytest.fixture
def ledger(store: object) -> Iterator[object]:
    """A ``Ledger`` on the session store; closed (and flushed) after the test."""
    from graphthrift import Ledger

    led = Ledger(store, flush_interval=0.05)  # type: ignore[arg-type]
    yield led
    led.close()


@pytest.fixture
def tenant() -> str:
    """A tenant id no other test uses, so tests share one database without interfering."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def bench_data() -> Path:
    """The benchmark data folder: the repo's ``data/`` (or ``GRAPHTHRIFT_DATA_DIR``)."""
    assert (BENCH_DATA / "banking77").is_dir(), f"benchmark data missing at {BENCH_DATA}"
    return BENCH_DATA


@pytest.fixture(scope="session")
def shared_data(bench_data: Path) -> Path:
    """The old name of ``bench_data``, kept for tests written against it."""
    return bench_data
