#!/usr/bin/env bash
# Set up .venv and run the main job: `graphthrift bench` on the embedded PostgreSQL, on the
# data sets in data/. Extra arguments go to `graphthrift bench` (e.g. --quick, --full,
# --traffic FILE, or a benchmark name). Installs graphthrift with the `bench` extra only
# (GRAPHTHRIFT_EXTRAS overrides); scripts/test.sh adds the test and framework extras.
set -euo pipefail
export GRAPHTHRIFT_EXTRAS="${GRAPHTHRIFT_EXTRAS:-bench}"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec .venv/bin/graphthrift bench "$@"
