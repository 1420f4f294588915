"""History pruning that keeps tool pairs whole and the latest request verbatim."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "HistoryConfigError": "graphthrift.errors",
    "HistoryPruner": ".pruner",
    "HistoryRequestTooLarge": "graphthrift.errors",
    "HistoryState": ".state",
    "HistoryStateError": "graphthrift.errors",
    "PruneResult": ".state",
    "SUMMARY_ID": ".state",
    "UnsupportedMessage": "graphthrift.errors",
    "build_pruner": ".pruner",
    "prune_history": ".pruner",
    "truncate_text": ".truncate",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from graphthrift.errors import HistoryConfigError as HistoryConfigError
    from graphthrift.errors import HistoryRequestTooLarge as HistoryRequestTooLarge
    from graphthrift.errors import HistoryStateError as HistoryStateError
    from graphthrift.errors import UnsupportedMessage as UnsupportedMessage

    from .pruner import HistoryPruner as HistoryPruner
    from .pruner import build_pruner as build_pruner
    from .pruner import prune_history as prune_history
    from .state import SUMMARY_ID as SUMMARY_ID
    from .state import HistoryState as HistoryState
    from .state import PruneResult as PruneResult
    from .truncate import truncate_text as truncate_text
