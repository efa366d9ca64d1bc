# Each target sets up its own environment (scripts/bootstrap.sh: uv + .venv).
.PHONY: setup demo test test-latest lint typecheck bench clean

PY := .venv/bin/python

setup:
	./scripts/bootstrap.sh

demo: setup
	$(PY) -m lightning_noiseprobe.cli demo $(ARGS)

# One thread per test worker unless OMP_NUM_THREADS says otherwise, and as many workers
# (at most 2) as the cores hold at that many threads: two xdist workers on 2 cores, each
# with 2 threads, oversubscribe them (the suite took 10 min 32 s that way, 5 min 32 s in
# one 2-thread worker, 3 min 18 s in two 1-thread workers; idle 2-core Intel Xeon).
TEST_THREADS = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}
TEST_WORKERS = $$(n=$$(( $$(nproc) / $${OMP_NUM_THREADS:-1} )); echo $$(( n < 1 ? 1 : n > 2 ? 2 : n )))

test: setup
	$(TEST_THREADS) $(PY) -m pytest -n $(TEST_WORKERS) $(ARGS)

# The newest releases that pyproject.toml's ranges allow: scripts/latest_env.sh builds
# .venv-latest afresh (the README's "Install without make" steps, uv, no [tool.uv] pins),
# then the tests marked `latest`. LATEST_ARGS= (empty) runs the whole suite there.
LATEST_ARGS ?= -m latest

test-latest:
	./scripts/latest_env.sh
	.venv-latest/bin/python scripts/versions.py "newest releases"
	$(TEST_THREADS) .venv-latest/bin/python -m pytest -n $(TEST_WORKERS) $(LATEST_ARGS) $(ARGS)

lint: setup
	.venv/bin/ruff check lightning_noiseprobe tests examples benchmarks
	.venv/bin/ruff format --check lightning_noiseprobe tests examples benchmarks

typecheck: setup
	.venv/bin/mypy

bench: setup
	$(PY) benchmarks/bench_probe.py $(ARGS)

clean:
	rm -rf .venv .venv-latest .pytest_cache .mypy_cache .ruff_cache runs noiseprobe_out .noiseprobe_cache
