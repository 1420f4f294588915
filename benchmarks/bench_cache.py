"""Cache benchmark: precision, recall and hit rate of static 0.92 / tuned / adaptive on the
held-out splits of banking77 and stsb (and ``--pairs FILE``), lookup and embedding latency
at 100,000 entries, exact lookup latency, peak memory. Same as ``graphthrift bench cache``;
writes benchmarks/results/cache.json.

    python benchmarks/bench_cache.py [--quick | --full (the default here)] [--pairs FILE] [--json PATH]
"""

from __future__ import annotations

import sys

from graphthrift.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--quick" not in args and "--full" not in args:
        args.append("--full")  # benchmarks/results/ holds the publication-grade figures
    if "--json" not in args:
        args += ["--json", "benchmarks/results/cache.json"]
    sys.exit(main(["bench", "cache", *args]))
