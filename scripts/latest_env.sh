#!/usr/bin/env bash
# The newest-release environment (default .venv-latest; `make test-latest`, CI): the ranges
# declared in pyproject.toml resolved to the newest releases on PyPI, built afresh by the
# README's "Install without make" steps (scripts/install_without_make.sh) with uv outside
# the project's [tool.uv] pins (--no-config), then the test tools (the `dev` group).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv-latest}
if ! "$PY" -m uv --version >/dev/null 2>&1; then
  echo "latest_env: installing uv with pip" >&2
  "$PY" -m pip install --quiet uv
fi
started=$(date +%s)
rm -rf "$VENV"
"$PY" -m uv venv --no-config --quiet --python "$("$PY" -c 'import sys; print(sys.executable)')" "$VENV"
export UV_NO_CONFIG=1 UV_PYTHON="$(realpath "$VENV")/bin/python"  # no [tool.uv] pins; into $VENV
export UV_COMPILE_BYTECODE=1  # .pyc at install: see scripts/bootstrap.sh (halves each import)
PIP="$PY -m uv pip" ./scripts/install_without_make.sh
"$PY" -m uv pip install --group pyproject.toml:dev
echo "latest_env: built $VENV in $(($(date +%s) - started)) s" >&2
