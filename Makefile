# Everything a fresh machine needs: `make demo` and `make test` create the virtual
# environment, build the C core, install shoal and its test tools, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.shoal-installed
SOURCES := pyproject.toml setup.py $(shell find src native -name '*.py' -o -name '*.c' -o -name '*.h' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: demo test lint bench bench-quick test-native test-sanitize clean check-shm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python $(SOURCES)
	SHOAL_WERROR=1 $(BIN)/python -m pip install -q '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m shoal demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory check-shm

# Nothing of shoal's may outlive the processes that used it.
check-shm:
	@left=$$(ls /dev/shm 2>/dev/null | grep '^shoal-' || true); \
	if [ -n "$$left" ]; then echo "leaked shared memory in /dev/shm:"; echo "$$left"; exit 1; fi; \
	echo "no shoal segments left in /dev/shm"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The benchmarks also measure the peers of the `bench` extra (faster-fifo, numpy): one
# pip run installs them with everything `make test` has, so shoal is built once here.
BENCH_STAMP := $(VENV)/.shoal-bench-installed

$(BENCH_STAMP): $(BIN)/python $(SOURCES)
	SHOAL_WERROR=1 $(BIN)/python -m pip install -q '.[test,lint,bench]'
	touch $(STAMP) $@

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
