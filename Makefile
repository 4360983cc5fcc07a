# Everything a fresh machine needs: `make demo` and `make test` create the virtual
# environment, build the C core, install shoal and its test tools, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.shoal-installed
SOURCES := pyproject.toml setup.py $(shell find src native -name '*.py' -o -name '*.pyi' -o -name '*.c' -o -name '*.h' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: demo test lint bench bench-quick test-native test-sanitize clean check-shm chaos mutants
.PHONY: test-sanitize-python test-sanitize-native test-stdlib test-pythons

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# (setuptools never deletes from build/: a module removed from src/ would be installed
# from there for ever)
$(STAMP): $(BIN)/python $(SOURCES)
	rm -rf build/lib*/shoal
	@# with the Ray backend's engine (shoal[ray]) and uvloop (shoal[uvloop]), whose tests
	@# run in `make test`; where no wheel of them exists for this Python (3.14, 3.15,
	@# free-threaded builds) it is installed without, and those tests skip, saying so
	SHOAL_WERROR=1 $(BIN)/python -m pip install -q '.[test,lint,ray,uvloop]' || { \
	  echo "installing with ray and uvloop failed: installing without (their tests will skip)"; \
	  SHOAL_WERROR=1 $(BIN)/python -m pip install -q '.[test,lint]'; }
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m shoal demo

test: test-native $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory check-shm

# Nothing of shoal's may outlive the processes that used it, once the next shoal
# process swept: a SIGKILLed process leaves its ledger and its liveness file for that
# sweep (`doctor --reap` here, as the next shoal process would).  (Processes that are
# still exiting get a few seconds; the creator of each leftover is named, from the
# token at offset 32 of its header, or in a liveness file's name.)
check-shm:
	@for i in 1 2 3 4 5 6 7 8 9 10; do \
	  if ls /dev/shm 2>/dev/null | grep -q '^shoal-'; then \
	    $(BIN)/python -m shoal doctor --reap >/dev/null || true; \
	  fi; \
	  left=$$(ls /dev/shm 2>/dev/null | grep '^shoal-' || true); \
	  [ -z "$$left" ] && break; sleep 0.5; \
	done; \
	if [ -n "$$left" ]; then \
	  echo "leaked shared memory in /dev/shm:"; \
	  for n in $$left; do \
	    case $$n in \
	      shoal-live-*) hex=$$(echo $${n#shoal-live-} | cut -c1-8); \
	        pid=$$(( 0x$$hex % 4194304 ));; \
	      *) pid=$$(od -An -t u8 -j 32 -N 8 /dev/shm/$$n 2>/dev/null | awk '{print int($$1 / 4294967296) % 4194304}');; \
	    esac; \
	    echo "  $$n (created by pid $$pid$$( [ -n "$$pid" ] && [ -d /proc/$$pid ] && echo ', still running' ))"; \
	  done; exit 1; \
	fi; \
	echo "no shoal segments left in /dev/shm"

# ---- the standard library's own test suites, against shoal (issue #11) ------------------
# test-stdlib: CPython's test._test_multiprocessing (processes and manager flavours) and
# test_concurrent_futures (process-pool classes) with shoal's objects bound in, under
# fork, spawn and forkserver; prints passed/applicable per suite, method and flavour.
# Not part of `make test` (it takes minutes).  The interpreter's test package may lack
# test_concurrent_futures: stdlib_suites/install.py fetches its release's file.
# STDLIB_ARGS is passed to `python -m stdlib_suites` (`--method spawn -k Pool -v`).
STDLIB_TESTS = build/stdlib-tests
STDLIB_ARGS ?=

test-stdlib: $(STAMP)
	$(BIN)/python -m stdlib_suites.install $(STDLIB_TESTS)
	SHOAL_STDLIB_TESTS=$(abspath $(STDLIB_TESTS)) $(BIN)/python -m stdlib_suites $(STDLIB_ARGS)
	$(MAKE) --no-print-directory check-shm

# ---- the other Python versions (issue #11) ----------------------------------------------
# The whole suite on each Python version that requires-python claims and on the
# free-threaded build, one line each: 3.10 (a manylinux CPython from the package index),
# 3.13 (a Debian trixie chroot), 3.14 and 3.15 (a Debian sid chroot), 3.13t (built from
# source in the trixie chroot).  Each interpreter is made once and kept under
# $(PYTHONS_CACHE); each suite runs in a private /dev/shm.  Needs root.
# PYTHONS picks some (`make test-pythons PYTHONS="3.14 3.10"`); PYTEST_ARGS goes to
# pytest.  Details and costs: tools/pythons/test-pythons, docs/compatibility.md.
PYTHONS ?=
PYTHONS_CACHE ?= /var/cache/shoal-pythons
test-pythons:
	PYTHONS="$(PYTHONS)" SHOAL_PYTHONS_CACHE="$(PYTHONS_CACHE)" PYTEST_ARGS="$(PYTEST_ARGS)" \
		tools/pythons/test-pythons

# ---- the native core on its own, and under sanitizers (issue #2) ------------------------
# test-native: native/tests (a small C runner, one forked process group per test)
# against native/src, warnings as errors; `make test` runs it first (a few seconds).
# test-sanitize: the same tests under ASan+UBSan and under TSan, then the Python suite
# against an ASan+UBSan build of the extension.  That build is made from a snapshot of
# the working tree in a temporary directory, never in ./build, which `make test` uses,
# and is installed into its own venv ($(SAN_VENV)).  NATIVE_ARGS picks tests by name
# (`make test-native NATIVE_ARGS="-v cond_"`); SAN_PYTEST_ARGS is passed to pytest.
# SAN_TESTS is which tests run against the ASan build: by default every test that
# reaches the C core, once (--sanitize-subset, tests/conftest.py: not the tests
# tools/sanitize/not-core.txt lists, which call nothing of shoal._core, nor the spawn
# and forkserver variants of a test whose fork variant runs; about half the suite and
# half its time).  `make test-sanitize SAN_TESTS=` runs the whole suite there.
NATIVE_SRC = $(wildcard native/src/*.c)
NATIVE_TESTS = $(wildcard native/tests/*.c)
NATIVE_DEPS = $(NATIVE_SRC) $(NATIVE_TESTS) $(wildcard native/include/*.h native/src/*.h native/tests/*.h)
NATIVE_CFLAGS = -std=c11 -Wall -Wextra -Werror -O1 -g -Inative/include
NATIVE_BIN = native/tests/bin
NATIVE_ARGS ?=
ASAN_CFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
# gcc refuses (-Werror=tsan) atomic_thread_fence under TSan, which does not model
# fences; dict.c's seqlock reads use one.  -Wno-tsan lets the build go on (before #10
# the TSan build failed here); TSan then judges those reads without the fence.
TSAN_CFLAGS = -fsanitize=thread -Wno-tsan
SAN_VENV ?= .venv-sanitize
SAN_PYTEST_ARGS ?=
SAN_TESTS ?= --sanitize-subset

$(NATIVE_BIN)/shoal-tests: $(NATIVE_DEPS)
	@mkdir -p $(NATIVE_BIN)
	$(CC) $(NATIVE_CFLAGS) $(NATIVE_SRC) $(NATIVE_TESTS) -o $@ -lpthread

$(NATIVE_BIN)/shoal-tests-asan: $(NATIVE_DEPS)
	@mkdir -p $(NATIVE_BIN)
	$(CC) $(NATIVE_CFLAGS) $(ASAN_CFLAGS) $(NATIVE_SRC) $(NATIVE_TESTS) -o $@ -lpthread

$(NATIVE_BIN)/shoal-tests-tsan: $(NATIVE_DEPS)
	@mkdir -p $(NATIVE_BIN)
	$(CC) $(NATIVE_CFLAGS) $(TSAN_CFLAGS) $(NATIVE_SRC) $(NATIVE_TESTS) -o $@ -lpthread

test-native: $(NATIVE_BIN)/shoal-tests
	$(NATIVE_BIN)/shoal-tests $(NATIVE_ARGS)

# halt_on_error: a report kills the test's process at once, so it fails even in the
# forked helpers, which leave with _exit() and would skip the sanitizers' exit codes.
test-sanitize: test-sanitize-native
	$(MAKE) --no-print-directory test-sanitize-python

# the native tests alone under ASan+UBSan and TSan (threaded ring, mutex, condition
# tests included): deterministic and quick, so CI runs them (.ci/run)
test-sanitize-native: $(NATIVE_BIN)/shoal-tests-asan $(NATIVE_BIN)/shoal-tests-tsan
	ASAN_OPTIONS=halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(NATIVE_BIN)/shoal-tests-asan $(NATIVE_ARGS)
	TSAN_OPTIONS=halt_on_error=1 $(NATIVE_BIN)/shoal-tests-tsan $(NATIVE_ARGS)

# The sanitizer runtime must be loaded before anything else in the python process, hence
# LD_PRELOAD of the compiler's libasan; CPython leaks by design, hence detect_leaks=0;
# handle_segv=0: tests make workers segfault on purpose and expect the signal, which
# ASan's handler would turn into exit status 1.  Where it can (root, unshare), it runs
# with a tmpfs of its own on /dev/shm, so check-shm judges this run's segments only:
# on a machine shared with other test runs, theirs were counted as leaks.
test-sanitize-python:
	@set -e; \
	snap=$$(mktemp -d "$${TMPDIR:-/tmp}/shoal-sanitize.XXXXXX"); \
	chmod 755 "$$snap"; \
	trap 'rm -rf "$$snap"' EXIT; \
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	    git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$$snap"; \
	else \
	    tar --exclude='./.venv*' --exclude=./build --exclude='*.so' -cf - . | tar -xf - -C "$$snap"; \
	fi; \
	test -x $(SAN_VENV)/bin/python || $(PYTHON) -m venv $(SAN_VENV); \
	san_python=$(CURDIR)/$(SAN_VENV)/bin/python; \
	echo "building an ASan+UBSan shoal from a snapshot in $$snap"; \
	SHOAL_SANITIZE=1 $$san_python -m pip install -q "$$snap[test]"; \
	$$san_python -c 'import glob, sys, sysconfig; \
	    so = glob.glob(sysconfig.get_paths()["platlib"] + "/shoal/_core*.so"); \
	    sys.exit(0 if so and b"__asan_init" in open(so[0], "rb").read() else \
	             "the installed shoal._core was not built with SHOAL_SANITIZE")'; \
	{ echo 'set -e'; echo "cd '$$snap'"; \
	  echo "LD_PRELOAD='$$($(CC) -print-file-name=libasan.so)' \\"; \
	  echo 'ASAN_OPTIONS=detect_leaks=0:handle_segv=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \\'; \
	  echo "  '$$san_python' -m pytest -p no:cacheprovider $(SAN_TESTS) $(SAN_PYTEST_ARGS)"; \
	  echo "$(MAKE) --no-print-directory -C '$(CURDIR)' check-shm"; } > "$$snap/.run-sanitized.sh"; \
	if [ "$$(id -u)" = 0 ] && unshare -m --propagation private true 2>/dev/null; then \
	    echo "in a private /dev/shm (other test runs on this machine neither seen nor touched)"; \
	    unshare -m --propagation private sh -c \
	        'mount -t tmpfs -o mode=1777 shoal-sanitize /dev/shm && exec sh "$$0"' \
	        "$$snap/.run-sanitized.sh"; \
	else \
	    sh "$$snap/.run-sanitized.sh"; \
	fi

# The type checks (#11): user-style snippets (tests/typing/) under mypy --strict and
# basedpyright (strict, [tool.basedpyright]), against the installed shoal, as a user's
# checker sees it; and the _core stub against the compiled module (mypy.stubtest).
# tests/test_typing.py shows that each of them rejects a wrong snippet or stub.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks chaos mutants stdlib_suites tools
	$(BIN)/ruff format --check src tests benchmarks chaos mutants stdlib_suites tools
	$(BIN)/mypy --strict tests/typing
	$(BIN)/basedpyright --pythonpath $(BIN)/python
	$(BIN)/python -m mypy.stubtest shoal._core

# The benchmarks also measure the peers of the `bench` extra (faster-fifo, numpy): one
# pip run installs them with everything `make test` has, so shoal is built once here.
BENCH_STAMP := $(VENV)/.shoal-bench-installed

$(BENCH_STAMP): $(BIN)/python $(SOURCES)
	rm -rf build/lib*/shoal
	SHOAL_WERROR=1 $(BIN)/python -m pip install -q '.[test,lint,bench,ray,uvloop]' || { \
	  echo "installing with ray and uvloop failed: installing without (their tests will skip)"; \
	  SHOAL_WERROR=1 $(BIN)/python -m pip install -q '.[test,lint,bench]'; }
	touch $(STAMP) $@

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks --quick

# The chaos suite (chaos/): SIGKILLs every ~100 ms, killed parents, dead lock owners
# and waiters on every primitive, pool workers killed, segfaulting, os._exit-ing and
# over RLIMIT_AS, objects kept past every expiry, /dev/shm full on every creation path,
# a second PID namespace, a hostile second user (nobody) planting files, a fuzz of
# shared memory under live use; each scenario in a private /dev/shm (needs root); a
# figure line each.
# CHAOS_ARGS: e.g. --seconds 60, --only queue_soak, --json figures.json.  `make test`
# runs each for a few seconds (tests/test_chaos.py).
CHAOS_ARGS ?=
chaos: $(STAMP)
	$(BIN)/python -m chaos $(CHAOS_ARGS)

# The mutation check (mutants/): one deliberate bug at a time in the pool's claim/slot
# bookkeeping, the ring's publish step, the reaper's liveness check, the lock's
# dead-owner path and the reference counts; the suite must fail on each (minutes).
# MUTANTS_ARGS: e.g. --only lock-steals-from-live-owner, --list.
MUTANTS_ARGS ?=
mutants: $(STAMP)
	$(BIN)/python -m mutants $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
