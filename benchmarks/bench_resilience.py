"""Resilience benchmark: same as ``graphthrift bench resilience``; writes benchmarks/results/resilience.json.

python benchmarks/bench_resilience.py [--quick] [--json PATH]
"""

from __future__ import annotations

import sys

from graphthrift.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--json" not in args:
        args += ["--json", "benchmarks/results/resilience.json"]
    sys.exit(main(["bench", "resilience", *args]))
