#!/usr/bin/env bash
# Set up the project's environment: install uv if missing, then sync .venv with
# the exact versions pinned in pyproject.toml ([tool.uv] constraint-dependencies).
# Safe to run again: a synced environment makes this a no-op of a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -m uv --version >/dev/null 2>&1; then
  echo "bootstrap: installing uv with pip" >&2
  "$PY" -m pip install --quiet uv
fi
"$PY" -m uv sync --python "$("$PY" -c 'import sys; print(sys.executable)')" --extra audiocraft --extra transformers --extra peft --extra demo "$@"
