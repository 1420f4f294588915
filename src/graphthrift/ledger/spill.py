"""Where the ledger keeps what it cannot write yet: spill files, and quarantined records.

- a batch the database refuses is split until the refused record is alone; that record goes
  to ``<spill dir>/quarantine`` with the error, and the rest are written;
- the queue is capped in bytes; beyond it records go to a spill file, which the ledger
  reads back once the database accepts writes again;
- at exit (or on SIGTERM/SIGINT) what is still queued is spilled, and the next ledger on the
  same store replays it;
- a spill file being replayed is locked (``flock``), so one left by a crash is claimed by
  the next ledger, and a torn or unreadable line is quarantined instead of failing the rest.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

from graphthrift import diagnostics
from graphthrift.ledger.items import _materialise, _size
from graphthrift.ledger.records import LedgerRecord

logger = logging.getLogger("graphthrift.ledger")


class LedgerSpill:
    """The spill and quarantine side of ``Ledger``; it shares the writer's queue and lock."""

    spill_dir: Path
    quarantine_dir: Path
    max_queue_bytes: int
    _queue: deque[LedgerRecord | Callable[[], LedgerRecord | None]]
    _cond: threading.Condition
    _enqueued: int
    _written: int
    _queued_bytes: int
    _overflow: dict[Path, int]
    _inflight_batch: list[Any] | None
    _inflight_spill: Path | None
    _claims: dict[Path, tuple[int, int]]

    def _quarantine(self, records: Sequence[LedgerRecord], exc: BaseException | str) -> None:
        """Keep refused records on disk with the reason, counted; they never block the rest."""
        reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}".strip()
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        path = self.quarantine_dir / f"ledger-{time.time_ns()}-{threading.get_native_id()}.jsonl"
        with path.open("a", encoding="utf-8") as fh:
            for record in records:
                error = reason.splitlines()[0] if reason else ""
                content: Any
                try:
                    content = _jsonable(record)
                except Exception as dump_exc:  # pragma: no cover - _jsonable repairs values
                    content = repr(record)
                    error += f"; not serialisable: {dump_exc!r}"
                line = {"error": error, "record": content}
                fh.write(json.dumps(line, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        diagnostics.count(
            "ledger_quarantined",
            "graphthrift: the database refused %d ledger record(s) (%s); kept in %s",
            len(records),
            reason.splitlines()[0] if reason else "",
            path,
        )

    def _quarantine_lines(self, lines: Sequence[str], source: Path, why: str) -> None:
        """Keep unreadable spill lines verbatim, so nothing on disk is silently dropped."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        path = self.quarantine_dir / f"{source.stem}-unreadable-{time.time_ns()}.txt"
        with path.open("w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.writelines(line + "\n" for line in lines)
        diagnostics.count(
            "ledger_spill_bad_line",
            "graphthrift: %d unreadable line(s) in spill file %s (%s); kept in %s",
            len(lines),
            source,
            why,
            path,
        )

    def _spill(self, *, include_inflight: bool = False, keep: bool = False) -> None:
        """Move the queue (and the batch being written, if asked) to disk, then drop claims.

        Claimed replay files are released only after their unwritten records are safe in
        the new spill file, so a crash in between may duplicate rows but never loses one.
        With ``keep`` (the ledger stays open), the new files stay locked by this ledger and
        are read back once the database accepts writes; otherwise they are left for the
        next ledger.
        """
        with self._cond:
            leftover = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            inflight = self._inflight_batch if include_inflight else None
            if inflight is not None:
                self._inflight_batch = None  # the writer must not requeue it now
        built = _materialise(leftover)
        records = [r for r in built if isinstance(r, LedgerRecord)]
        if keep:
            with self._cond:
                self._written += len(built) - len(records)  # builders that produced nothing
        if records:
            path, fd = self._write_spill(records, locked=keep)
            if keep:
                with self._cond:
                    self._overflow[path] = fd
        if inflight is not None:
            kept = [r for r in _materialise(inflight) if isinstance(r, LedgerRecord)]
            if kept:
                path, fd = self._write_spill(kept, locked=keep)
                if keep:
                    with self._cond:
                        self._overflow[path] = fd
                        self._inflight_spill = path
            diagnostics.count(
                "ledger_spilled_inflight",
                "graphthrift: a ledger write was still running; its %d records were spilled"
                " too (if that write commits, they may be written twice)",
                len(kept),
            )
        with self._cond:
            claims = list(self._claims.items())
            self._claims.clear()
            overflow = [] if keep else list(self._overflow.items())
            if not keep:
                self._overflow.clear()
        for path, (fd, _) in claims:
            path.unlink(missing_ok=True)
            os.close(fd)
        for _, fd in overflow:  # still on disk, unlocked: the next ledger replays them
            os.close(fd)

    def _write_spill(self, records: Sequence[LedgerRecord], *, locked: bool) -> tuple[Path, int]:
        """Write records durably to a new spill file; return its path and (locked) fd.

        Every line is written whole and fsynced before the file gets its final name, so a
        crash leaves either no file or a complete one. ``locked`` files are ``.replaying``
        files this ledger holds (its queue overflow); others are plain ``.jsonl``.
        """
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        stem = f"ledger-{time.time_ns()}-{os.getpid()}-{threading.get_native_id()}"
        tmp = self.spill_dir / f"{stem}.tmp"
        final = self.spill_dir / f"{stem}.{'replaying' if locked else 'jsonl'}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if locked:
                _try_lock(fd)
            lines = []
            for record in records:
                record.repair()
                lines.append(json.dumps(_jsonable(record), default=str) + "\n")
            os.write(fd, "".join(lines).encode("utf-8"))
            os.fsync(fd)
            os.rename(tmp, final)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        if not locked:
            os.close(fd)
            fd = -1
        diagnostics.count(
            "ledger_spilled",
            "graphthrift: %d ledger records could not be written yet; kept in %s",
            len(records),
            final,
        )
        return final, fd

    def _cap_queue(self) -> None:
        """Spill the newest records while the queue holds more than ``max_queue_bytes``."""
        with self._cond:
            if self._queued_bytes <= self.max_queue_bytes:
                return
            moved: list[Any] = []
            while self._queue and self._queued_bytes > self.max_queue_bytes // 2:
                item = self._queue.pop()
                self._queued_bytes -= _size(item)
                moved.append(item)
        moved.reverse()
        records = [r for r in _materialise(moved) if isinstance(r, LedgerRecord)]
        with self._cond:
            self._written += len(moved) - len(records)  # builders that produced nothing
        if not records:
            return
        path, fd = self._write_spill(records, locked=True)
        with self._cond:
            self._overflow[path] = fd

    def _reload_overflow(self) -> None:
        """Read back one overflow file once the queue has room and writes succeed again."""
        with self._cond:
            if not self._overflow or self._queued_bytes > self.max_queue_bytes // 4:
                return
            path = next(iter(self._overflow))
            fd = self._overflow.pop(path)
        records, bad = _read_spill(fd)
        if bad:
            self._quarantine_lines(bad, path, "unreadable line")
        with self._cond:
            # these records were counted in _enqueued when first recorded
            self._queue.extend(records)
            self._queued_bytes += sum(_size(r) for r in records)
            self._claims[path] = (fd, self._written + self._inflight_count() + len(self._queue))
            self._cond.notify_all()

    def _inflight_count(self) -> int:
        return len(self._inflight_batch) if self._inflight_batch is not None else 0

    def _load_spill(self) -> None:
        """Claim and queue every spill file no live ledger holds.

        A ``.jsonl`` file is renamed to ``.replaying`` and locked; a ``.replaying`` file whose
        lock is free was left by a ledger that crashed while replaying it, so it is claimed
        again. Unreadable lines (a torn last line, a poisoned record) are quarantined and the
        rest replayed.
        """
        if not self.spill_dir.is_dir():
            return
        candidates = sorted(self.spill_dir.glob("ledger-*.jsonl")) + sorted(
            self.spill_dir.glob("ledger-*.replaying")
        )
        for path in candidates:
            claimed = path.with_suffix(".replaying")
            if path.suffix == ".jsonl":
                try:
                    path.rename(claimed)  # one ledger per file, even across processes
                except OSError:
                    continue
            fd = _claim(claimed)
            if fd is None:
                continue
            records, bad = _read_spill(fd)
            if bad:
                self._quarantine_lines(bad, claimed, "torn or invalid line")
            self._queue.extend(records)
            self._enqueued += len(records)
            self._queued_bytes += sum(_size(r) for r in records)
            self._claims[claimed] = (fd, self._written + len(self._queue))
            logger.info(
                "graphthrift: replaying %d spilled ledger records from %s", len(records), path
            )

    def _forget_replayed_spills(self) -> None:
        with self._cond:
            done = [(p, fd) for p, (fd, target) in self._claims.items() if self._written >= target]
            for path, _ in done:
                del self._claims[path]
        for path, fd in done:
            path.unlink(missing_ok=True)
            os.close(fd)


def _jsonable(record: LedgerRecord) -> dict[str, Any]:
    row = record.as_row()
    row["ts"] = record.ts.isoformat() if isinstance(record.ts, datetime) else str(record.ts)
    return row


def _from_jsonable(row: dict[str, Any]) -> LedgerRecord:
    row = dict(row)
    row["ts"] = datetime.fromisoformat(row["ts"])
    known = {f.name for f in fields(LedgerRecord)}
    return LedgerRecord(**{k: v for k, v in row.items() if k in known})


def _try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting (always True without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rename alone claims a file
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _claim(path: Path) -> int | None:
    """Open and lock a ``.replaying`` file; None if a live ledger holds it or it is gone."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    if not _try_lock(fd):
        os.close(fd)
        return None
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino  # not replayed and removed meanwhile
    except OSError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


def _read_spill(fd: int) -> tuple[list[LedgerRecord], list[str]]:
    """The records of a spill file, and the lines that are not a valid record."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    text = b"".join(chunks).decode("utf-8", errors="surrogateescape")
    records: list[LedgerRecord] = []
    bad: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a spill line must be a JSON object, got {type(row).__name__}")
            records.append(_from_jsonable(row))
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("graphthrift: unreadable spill line (%s)", exc)
            bad.append(line)
    return records, bad
