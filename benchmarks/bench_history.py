"""History pruning benchmark: effective cost with the provider's prompt cache, tokens sent, fact
retention and prefix stability turn by turn, ours against the full history, trim_messages,
langmem's SummarizationNode and LangChain's SummarizationMiddleware under create_agent at the
same budgets, and the long multi-session set. Same as ``graphthrift bench history``; writes
benchmarks/results/history.json.

    python benchmarks/bench_history.py [--quick | --full (the default here)] [--conversations PATH] [--max-tokens 256]
                                       [--budgets 256,512,1024,8192] [--price-model M ...] [--long N] [--json PATH]
"""

from __future__ import annotations

import sys

from graphthrift.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--quick" not in args and "--full" not in args:
        args.append("--full")  # benchmarks/results/ holds the publication-grade figures
    if "--json" not in args:
        args += ["--json", "benchmarks/results/history.json"]
    sys.exit(main(["bench", "history", *args]))
