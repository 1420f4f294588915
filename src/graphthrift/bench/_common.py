"""Helpers the benchmarks share: percentiles, data discovery, a scratch database, JSON output."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

from graphthrift.store import Store


def percentiles(values: Sequence[float], *qs: float) -> dict[str, float]:
    """``{"p50": ..., "p95": ...}`` of ``values`` (nearest-rank), rounded to 4 decimals."""
    if not values:
        return {f"p{int(q)}": float("nan") for q in qs}
    ordered = sorted(values)
    out: dict[str, float] = {}
    for q in qs:
        index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        out[f"p{int(q)}"] = round(ordered[index], 4)
    return out


def data_dir() -> Path | None:
    """``../shared/data``: from ``GRAPHTHRIFT_DATA_DIR``, the working directory, or the repo."""
    candidates = []
    if os.environ.get("GRAPHTHRIFT_DATA_DIR"):
        candidates.append(Path(os.environ["GRAPHTHRIFT_DATA_DIR"]))
    cwd = Path.cwd()
    candidates += [cwd / ".." / "shared" / "data", cwd / "shared" / "data"]
    candidates.append(Path(__file__).resolve().parents[3] / ".." / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    return None


def machine() -> dict[str, Any]:
    """Where and when figures were measured, stored beside them."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def write_json(figures: dict[str, Any], path: str | os.PathLike[str] | None) -> None:
    """Write ``figures`` as indented JSON, creating parent folders."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")


@contextmanager
def scratch_store(base: Store) -> Iterator[Store]:
    """A throw-away database on ``base``'s server, so benchmarks never touch real rows."""
    name = f"graphthrift_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base.url).set(database=name).render_as_string(hide_password=False)
    home = tempfile.mkdtemp(prefix="graphthrift-bench-")  # its spill files stay apart
    store = Store(url, home=home)
    try:
        yield store
    finally:
        store.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(home, ignore_errors=True)
