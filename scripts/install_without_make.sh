#!/usr/bin/env bash
# The README's "Install without make" steps, exactly: the package with its extras from the
# declared ranges in pyproject.toml, then audiocraft 1.3.0 without its obsolete pins
# (--no-deps) and its run-time needs. tests/test_scripts.py checks that the README shows
# these lines. Runs from the project folder, into the environment PIP installs into:
#   PIP=pip (default): the active environment's pip;
#   PIP="uv pip" with UV_NO_CONFIG=1 and UV_PYTHON=VENV/bin/python: uv, into VENV (without
#   UV_NO_CONFIG, uv applies the pins of this folder's [tool.uv]; `python -m uv pip`
#   targets that python, not VIRTUAL_ENV).
# scripts/latest_env.sh builds CI's newest-release environment with it.
set -euo pipefail
cd "$(dirname "$0")/.."
read -ra PIP <<<"${PIP:-pip}"
set -x
"${PIP[@]}" install -e ".[demo,transformers,peft]"
"${PIP[@]}" install --no-deps audiocraft==1.3.0
"${PIP[@]}" install xformers omegaconf hydra-core einops flashy julius spacy click sentencepiece transformers huggingface-hub encodec num2words librosa
