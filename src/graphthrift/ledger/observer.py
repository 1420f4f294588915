"""The base of what watches the ledger's committed batches: metrics, trace exporters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Self

from graphthrift.ledger.records import LedgerRecord

if TYPE_CHECKING:
    from graphthrift.ledger.ledger import Ledger


class LedgerObserver:
    """Base for what watches committed ledger batches: metrics, trace exporters.

    Subclasses implement ``observe(records)``; it runs on the ledger's writer thread after each
    committed batch, so the user's call never pays for it. ``attach`` is idempotent.
    """

    _ledgers: list[Ledger]

    def observe(self, records: Sequence[LedgerRecord]) -> None:
        raise NotImplementedError

    def _attached(self) -> list[Ledger]:
        if "_ledgers" not in self.__dict__:
            self._ledgers = []
        return self._ledgers

    def attach(self, ledger: Ledger) -> Self:
        """Start observing ``ledger``'s committed batches; returns ``self``."""
        attached = self._attached()
        if not any(existing is ledger for existing in attached):
            ledger.add_listener(self.observe)
            attached.append(ledger)
        return self

    def detach(self, ledger: Ledger | None = None) -> None:
        """Stop observing ``ledger`` (every attached ledger when None)."""
        attached = self._attached()
        targets = list(attached) if ledger is None else [ledger]
        for target in targets:
            target.remove_listener(self.observe)
        self._ledgers = [led for led in attached if not any(led is t for t in targets)]
