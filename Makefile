# Each target sets up its own environment (scripts/bootstrap.sh: uv + .venv).
.PHONY: setup demo test lint typecheck bench clean

PY := .venv/bin/python

setup:
	./scripts/bootstrap.sh

demo: setup
	$(PY) -m lightning_noiseprobe.cli demo $(ARGS)

test: setup
	$(PY) -m pytest -n 2 $(ARGS)

lint: setup
	.venv/bin/ruff check lightning_noiseprobe tests examples benchmarks
	.venv/bin/ruff format --check lightning_noiseprobe tests examples benchmarks

typecheck: setup
	.venv/bin/mypy

bench: setup
	$(PY) benchmarks/bench_probe.py $(ARGS)

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache runs noiseprobe_out .noiseprobe_cache
