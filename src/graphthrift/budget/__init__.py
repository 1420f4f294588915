"""Token, tool and dollar budgets: reserved before a call, settled after it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "Budget": ".budget",
    "BudgetExceeded": ".budget",
    "BudgetScopeMissing": ".budget",
    "DEFAULT_LADDER": ".budget",
    "Estimate": ".budget",
    "LADDER_STEPS": ".budget",
    "Preflight": ".budget",
    "Reservation": ".budget",
    "SCOPE_KINDS": ".budget",
    "ScopeUsage": ".budget",
    "Shortfall": ".budget",
    "Step": ".budget",
    "tags_from_metadata": ".budget",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .budget import DEFAULT_LADDER as DEFAULT_LADDER
    from .budget import LADDER_STEPS as LADDER_STEPS
    from .budget import SCOPE_KINDS as SCOPE_KINDS
    from .budget import Budget as Budget
    from .budget import BudgetExceeded as BudgetExceeded
    from .budget import BudgetScopeMissing as BudgetScopeMissing
    from .budget import Estimate as Estimate
    from .budget import Preflight as Preflight
    from .budget import Reservation as Reservation
    from .budget import ScopeUsage as ScopeUsage
    from .budget import Shortfall as Shortfall
    from .budget import Step as Step
    from .budget import tags_from_metadata as tags_from_metadata
