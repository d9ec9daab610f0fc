#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with the pinned,
# CPU-only dependency set from constraints.txt. Idempotent: safe to run every time.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
# constraints.txt pins torch==2.13.0 (the CPU wheel); an unpinned torch could pull a
# multi-GB CUDA build. The stamp skips pip when nothing it depends on has changed.
stamp=.venv/.bnlab-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing bnlab and its pinned dependencies into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
