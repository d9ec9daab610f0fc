#!/usr/bin/env bash
# The main job: set up .venv, fetch the data offline-first, re-run every seed experiment
# and write the HTML report. Extra arguments go to `bnlab reproduce`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/bootstrap.sh
exec .venv/bin/bnlab reproduce "$@"
