# The two commands of the README: `make demo` and `make test`; and `make install`
# for a real host (the README's "Deploying on real hosts").
VENV    ?= .venv
PYTHON  ?= python3
PREFIX  ?= /usr/local
BIN     := $(CURDIR)/$(VENV)/bin
RUN     := env PATH="$(BIN):$$PATH"

.PHONY: setup bytecode demo lint test test-fast bench bench-quick clean install

$(VENV)/.installed: pyproject.toml
	./scripts/system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Where PYTHONDONTWRITEBYTECODE is set (this machine's image sets it), Python
# writes no .pyc of the checkout's modules, and every command compiles them
# again: about 35 ms of a command's 150, thousands of times a test run.
bytecode: setup
	$(BIN)/python -m compileall -q swarmtools

demo: bytecode
	$(RUN) $(BIN)/python demo/demo.py

# ruff (pinned in the test extra) with the rules of pyproject.toml; make test runs it first.
lint: setup
	$(BIN)/ruff check swarmtools tests benchmarks demo

# A worker a core, and one more: many tests wait (leases, sshd, a web server),
# and the extra worker uses the core a waiting test leaves. What several tests
# share is built once a run (tests/conftest.py).
PARALLEL ?= -n $(shell echo $$(( $$(nproc) + 1 ))) --dist loadgroup

test: bytecode lint
	./scripts/system-deps --browser
	$(RUN) $(BIN)/python -m pytest $(PARALLEL) $(PYTEST_ARGS)

test-fast: bytecode
	$(RUN) $(BIN)/python -m pytest $(PARALLEL) -m "not slow" $(PYTEST_ARGS)

# Every benchmark at full size (the fleet alone takes minutes; the scheduling
# simulator's full figures are its --summary); the quick mode is what
# tests/test_benchmarks.py runs.
BENCHMARKS := $(filter-out benchmarks/timing.py,$(wildcard benchmarks/*.py))

bench: bytecode
	./scripts/system-deps --browser
	set -e; for script in $(filter-out benchmarks/schedule.py,$(BENCHMARKS)); do \
		$(RUN) $(BIN)/python $$script; done
	$(RUN) $(BIN)/python benchmarks/schedule.py --summary

bench-quick: bytecode
	./scripts/system-deps --browser
	set -e; for script in $(BENCHMARKS); do $(RUN) $(BIN)/python $$script --quick; done

# The system Python's venv, not .venv: no test extras, no PyPI Portage.
install:
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" PYTHON="$(PYTHON)" ./scripts/install

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
