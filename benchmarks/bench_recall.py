"""Recall micro benchmark: writes benchmarks/results/recall.json.

python benchmarks/bench_recall.py [--snippets N] [--json PATH]
"""

from __future__ import annotations

import sys

from graphthrift.bench.recall import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
