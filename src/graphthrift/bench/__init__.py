"""Benchmarks behind ``graphthrift bench <name>``; ``benchmarks/`` holds thin scripts over them.

Each module exposes ``add_arguments(parser)`` and ``run(args, console) -> dict`` returning the
JSON figures that docs/benchmarks.md fixes for it; ``command`` runs them (``graphthrift bench``).
"""

from __future__ import annotations

BENCHMARKS: dict[str, str] = {
    "ledger": "graphthrift.bench.ledger",
    "history": "graphthrift.bench.history",
    "compress": "graphthrift.bench.compress",
    "cache": "graphthrift.bench.cache",
    "route": "graphthrift.bench.route",
    "budget": "graphthrift.bench.budget",
    "resilience": "graphthrift.bench.resilience",
    "stack": "graphthrift.bench.stack",
    "ops": "graphthrift.bench.ops",
}
