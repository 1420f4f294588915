#!/usr/bin/env bash
# Set up .venv and run the whole suite: lint, format check, types, tests and notebooks.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
# Tests never write into the user's home: caches of tiktoken and onnxruntime go here.
export HOME="${GRAPHTHRIFT_TEST_HOME:-$(mktemp -d)}"
export MPLBACKEND=Agg
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -q --nbmake tests notebooks "$@"
