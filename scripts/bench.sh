#!/usr/bin/env bash
# Set up .venv and run the main job: `graphthrift bench` on the embedded PostgreSQL.
# Extra arguments go to `graphthrift bench` (e.g. --quick, or a benchmark name).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec .venv/bin/graphthrift bench "$@"
