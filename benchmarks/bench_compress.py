"""Compression benchmark: answer retention vs ratio on SQuAD-format data, ours against head
truncation, random sentence drop and BM25, plus speed on long contexts. Same as
``graphthrift bench compress``; writes benchmarks/results/compress.json.

    python benchmarks/bench_compress.py [--quick | --full (the default here)] [--squad PATH] [--ratio 3] [--json PATH]
"""

from __future__ import annotations

import sys

from graphthrift.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--quick" not in args and "--full" not in args:
        args.append("--full")  # benchmarks/results/ holds the publication-grade figures
    if "--json" not in args:
        args += ["--json", "benchmarks/results/compress.json"]
    sys.exit(main(["bench", "compress", *args]))
