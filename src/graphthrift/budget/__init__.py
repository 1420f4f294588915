"""Token, tool and dollar budgets: reserved before a call, settled after it.

Modules: ``limits`` (scopes, tags, ladder rungs, checked settings), ``reservation`` (a
call's estimate and what is held for it), ``ladder`` (shortfalls and the degradation
ladder), ``settlement`` (actual cost, charges kept while the store is down), ``budget``
(``Budget``), ``store`` (the SQL), ``schema`` (the tables).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "Budget": ".budget",
    "BudgetExceeded": ".budget",
    "BudgetScopeMissing": ".budget",
    "BudgetTags": ".limits",
    "DEFAULT_LADDER": ".limits",
    "Estimate": ".reservation",
    "LADDER_STEPS": ".limits",
    "PendingCharges": ".settlement",
    "Preflight": ".ladder",
    "Reservation": ".reservation",
    "ReserveOptions": ".budget",
    "SCOPE_KINDS": ".limits",
    "ScopeUsage": ".store",
    "Shortfall": ".ladder",
    "Step": ".limits",
    "tags_from_metadata": ".limits",
    "utc_day": ".limits",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .budget import Budget as Budget
    from .budget import BudgetExceeded as BudgetExceeded
    from .budget import BudgetScopeMissing as BudgetScopeMissing
    from .budget import ReserveOptions as ReserveOptions
    from .ladder import Preflight as Preflight
    from .ladder import Shortfall as Shortfall
    from .limits import DEFAULT_LADDER as DEFAULT_LADDER
    from .limits import LADDER_STEPS as LADDER_STEPS
    from .limits import SCOPE_KINDS as SCOPE_KINDS
    from .limits import BudgetTags as BudgetTags
    from .limits import Step as Step
    from .limits import tags_from_metadata as tags_from_metadata
    from .limits import utc_day as utc_day
    from .reservation import Estimate as Estimate
    from .reservation import Reservation as Reservation
    from .settlement import PendingCharges as PendingCharges
    from .store import ScopeUsage as ScopeUsage
