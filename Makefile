# lossbench: `make run` trains once on the bundled default, `make test` runs the whole suite.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint bench bench-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -e '.[test]'
	touch $@

run: $(STAMP)
	$(BIN)/python -m lossbench

# two workers (pytest-xdist), each test file on one of them, so a module's server or cluster
# starts once; TEST_WORKERS=0 runs the suite in this process
TEST_WORKERS ?= 2
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(TEST_STAMP)
	$(BIN)/ruff check lossbench tests benchmarks plugins
	$(BIN)/lint-imports

# the PyTorch and JAX comparison: installs the optional `bench` extra (torch==2.13.0, jax[cpu])
bench: $(STAMP)
	$(BIN)/pip install -e '.[bench]'
	$(BIN)/python benchmarks/throughput.py

# every benchmark once on a tiny size, so none rots (CI runs it; the table says what was skipped)
bench-smoke: $(TEST_STAMP)
	$(BIN)/python benchmarks/smoke.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
