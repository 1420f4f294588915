"""History pruning that keeps tool pairs whole and the latest request verbatim."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "HistoryConfigError": ".pruner",
    "HistoryPruner": ".pruner",
    "HistoryRequestTooLarge": ".pruner",
    "HistoryState": ".pruner",
    "HistoryStateError": ".pruner",
    "PruneResult": ".pruner",
    "SUMMARY_ID": ".pruner",
    "UnsupportedMessage": ".pruner",
    "prune_history": ".pruner",
    "truncate_text": ".pruner",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .pruner import SUMMARY_ID as SUMMARY_ID
    from .pruner import HistoryConfigError as HistoryConfigError
    from .pruner import HistoryPruner as HistoryPruner
    from .pruner import HistoryRequestTooLarge as HistoryRequestTooLarge
    from .pruner import HistoryState as HistoryState
    from .pruner import HistoryStateError as HistoryStateError
    from .pruner import PruneResult as PruneResult
    from .pruner import UnsupportedMessage as UnsupportedMessage
    from .pruner import prune_history as prune_history
    from .pruner import truncate_text as truncate_text
