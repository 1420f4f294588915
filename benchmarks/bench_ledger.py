"""Ledger benchmark: CostTagger overhead vs UsageMetadataCallbackHandler, write throughput,
report speed. Same as ``graphthrift bench ledger``; writes benchmarks/results/ledger.json.

    python benchmarks/bench_ledger.py [--quick | --full (the default here)] [--json PATH]
"""

from __future__ import annotations

import sys

from graphthrift.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--quick" not in args and "--full" not in args:
        args.append("--full")  # benchmarks/results/ holds the publication-grade figures
    if "--json" not in args:
        args += ["--json", "benchmarks/results/ledger.json"]
    sys.exit(main(["bench", "ledger", *args]))
