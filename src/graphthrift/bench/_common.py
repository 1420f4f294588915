"""Helpers the benchmarks share: percentiles, data discovery, a scratch database, JSON output."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy import create_engine, make_url, text

from graphthrift.bench._data import data_dir
from graphthrift.store import Store

__all__ = [
    "MODES",
    "data_dir",
    "machine",
    "mode",
    "percentiles",
    "progress",
    "progress_columns",
    "scratch_store",
    "tick",
    "write_json",
]

MODES = ("quick", "default", "full")


def mode(args: object) -> str:
    """The run's size: ``full`` (``--full``, publication grade), ``quick`` (``--quick``, CI)
    or ``default`` (what ``graphthrift bench`` runs: every layer on real data, in minutes)."""
    if getattr(args, "full", False):
        return "full"
    return "quick" if getattr(args, "quick", False) else "default"


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


_current: ContextVar[tuple[Progress, TaskID] | None] = ContextVar("bench_progress", default=None)


def progress_columns() -> tuple[Any, ...]:
    """Columns of every bench's bar: what runs, the bar, done/total, elapsed, time left."""
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


@contextmanager
def progress(console: Console, label: str, total: float) -> Iterator[Callable[..., None]]:
    """A rich progress bar with a time estimate for one bench; yields ``advance(n=1)``.

    Code deeper in the bench calls ``tick()`` instead of passing the callable around.
    """
    with Progress(*progress_columns(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        token = _current.set((bar, task))
        try:
            yield lambda n=1, **fields: bar.update(task, advance=n, **fields)
        finally:
            _current.reset(token)


def tick(n: float = 1, description: str | None = None) -> None:
    """Advance the bar of the running bench (nothing when none is shown)."""
    current = _current.get()
    if current is None:
        return
    bar, task = current
    if description is None:
        bar.advance(task, n)
    else:
        bar.update(task, advance=n, description=description)
