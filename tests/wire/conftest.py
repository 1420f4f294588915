"""The wire server fixture: one local server per session, its script reset per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wire_server import WireServer


@pytest.fixture(scope="session")
def wire_server() -> Iterator[WireServer]:
    """The server on 127.0.0.1 for the whole session."""
    server = WireServer().start()
    yield server
    server.stop()


@pytest.fixture
def wire(wire_server: WireServer) -> Iterator[WireServer]:
    """The session's server with no queued replies and no captured requests."""
    wire_server.reset()
    yield wire_server
    wire_server.reset()
