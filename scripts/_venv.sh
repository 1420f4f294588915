#!/usr/bin/env bash
# Create or reuse .venv at the repo root and install graphthrift with the extras the
# tests and benchmarks use. Re-installs only when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
EXTRAS="${GRAPHTHRIFT_EXTRAS:-dev,bench,agents,llamaindex,lingua,otel,providers}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
STAMP=".venv/.graphthrift-installed"
HASH="$(sha256sum pyproject.toml | cut -d' ' -f1)"
WANT="$HASH $EXTRAS"
# Up to date when pyproject.toml is unchanged and every wanted extra is already installed
# (so bench.sh after test.sh installs nothing).
up_to_date() {
  [ -f "$STAMP" ] || return 1
  read -r have_hash have_extras < "$STAMP" || return 1
  [ "$have_hash" = "$HASH" ] || return 1
  local extra
  for extra in ${EXTRAS//,/ }; do
    [[ ",$have_extras," == *",$extra,"* ]] || return 1
  done
}
if ! up_to_date; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned in the lingua extra; installing it first keeps pip on the CPU build.
  if [[ ",$EXTRAS," == *",lingua,"* ]]; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
  fi
  .venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
  echo "$WANT" > "$STAMP"
fi
