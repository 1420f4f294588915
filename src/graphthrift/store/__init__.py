"""PostgreSQL + pgvector storage: the embedded server, engines, migrations and deadlines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "DeadlinePlugin": ".deadline",
    "Store": ".postgres",
    "apply_migrations": ".postgres",
    "hide_password": ".postgres",
    "prune_dead_pids": ".embedded",
    "start_embedded": ".embedded",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .deadline import DeadlinePlugin as DeadlinePlugin
    from .embedded import prune_dead_pids as prune_dead_pids
    from .embedded import start_embedded as start_embedded
    from .postgres import Store as Store
    from .postgres import apply_migrations as apply_migrations
    from .postgres import hide_password as hide_password
