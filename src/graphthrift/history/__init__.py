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
    "FoldedTurn": ".recall",
    "FoldedTurnStore": ".recall",
    "RecalledSnippet": ".recall",
    "PromptTurn": ".pricing",
    "SummarizerCall": ".pricing",
    "TurnPrice": ".pricing",
    "effective_cost_usd": ".pricing",
    "effective_costs": ".pricing",
    "effective_saved_fraction": ".pricing",
    "effective_saved_fractions": ".pricing",
    "price_turns": ".pricing",
    "CachePricing": ".fold_cost",
    "fold_pays": ".fold_cost",
    "RECALL_ID": ".state",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from graphthrift.errors import HistoryConfigError as HistoryConfigError
    from graphthrift.errors import HistoryRequestTooLarge as HistoryRequestTooLarge
    from graphthrift.errors import HistoryStateError as HistoryStateError
    from graphthrift.errors import UnsupportedMessage as UnsupportedMessage

    from .fold_cost import CachePricing as CachePricing
    from .fold_cost import fold_pays as fold_pays
    from .pricing import PromptTurn as PromptTurn
    from .pricing import SummarizerCall as SummarizerCall
    from .pricing import TurnPrice as TurnPrice
    from .pricing import effective_cost_usd as effective_cost_usd
    from .pricing import effective_costs as effective_costs
    from .pricing import effective_saved_fraction as effective_saved_fraction
    from .pricing import effective_saved_fractions as effective_saved_fractions
    from .pricing import price_turns as price_turns
    from .pruner import HistoryPruner as HistoryPruner
    from .pruner import build_pruner as build_pruner
    from .pruner import prune_history as prune_history
    from .recall import FoldedTurn as FoldedTurn
    from .recall import FoldedTurnStore as FoldedTurnStore
    from .recall import RecalledSnippet as RecalledSnippet
    from .state import RECALL_ID as RECALL_ID
    from .state import SUMMARY_ID as SUMMARY_ID
    from .state import HistoryState as HistoryState
    from .state import PruneResult as PruneResult
    from .truncate import truncate_text as truncate_text
