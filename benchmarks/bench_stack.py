"""The savings stack: each layer's saving on the mixed agent workload, cost from the ledger.
Same as ``graphthrift bench stack``; writes benchmarks/results/stack.json and stack.png.

    python benchmarks/bench_stack.py [--quick | --full (the default here)] [--limit N] [--json PATH]
"""

from __future__ import annotations

import sys

from graphthrift.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--quick" not in args and "--full" not in args:
        args.append("--full")  # benchmarks/results/ holds the publication-grade figures
    if "--json" not in args:
        args += ["--json", "benchmarks/results/stack.json"]
    sys.exit(main(["bench", "stack", *args]))
