"""Route benchmark: same as ``graphthrift bench route``; writes benchmarks/results/route.json.

python benchmarks/bench_route.py [--quick] [--json PATH]
"""

from __future__ import annotations

import sys

from graphthrift.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--json" not in args:
        args += ["--json", "benchmarks/results/route.json"]
    sys.exit(main(["bench", "route", *args]))
