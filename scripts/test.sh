#!/usr/bin/env bash
# The test command: set up .venv, then lint, format check, type check, the import contract
# (pyproject.toml [tool.importlinter]) and the fast suite (with every docstring example).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow` for the slow suite).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/bootstrap.sh
. .venv/bin/activate
echo "[test] ruff check";        ruff check src tests scripts
echo "[test] ruff format --check"; ruff format --check src tests scripts
echo "[test] mypy";              mypy; mypy scripts  # two commands: set -e skips a failure left of &&
echo "[test] import contract";   lint-imports --no-cache
echo "[test] pytest"
if [ "$#" -gt 0 ]; then
  exec python -m pytest "$@"
else
  exec python -m pytest -m "not slow" -q
fi
