"""Route benchmark: same as ``graphthrift bench route``; writes benchmarks/results/route.json.

python benchmarks/bench_route.py [--quick | --full (the default here)] [--json PATH]
"""

from __future__ import annotations

import sys

from graphthrift.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--quick" not in args and "--full" not in args:
        args.append("--full")  # benchmarks/results/ holds the publication-grade figures
    if "--json" not in args:
        args += ["--json", "benchmarks/results/route.json"]
    sys.exit(main(["bench", "route", *args]))
