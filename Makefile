# The two commands of the README: `make demo` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(CURDIR)/$(VENV)/bin
RUN     := env PATH="$(BIN):$$PATH"

.PHONY: setup demo lint test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	./scripts/system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(RUN) $(BIN)/python demo/demo.py

# ruff (pinned in the test extra) with the rules of pyproject.toml; make test runs it first.
lint: setup
	$(BIN)/ruff check swarmtools tests benchmarks demo

test: setup lint
	./scripts/system-deps --browser
	$(RUN) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(RUN) $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(RUN) $(BIN)/python benchmarks/fresh.py
	$(RUN) $(BIN)/python benchmarks/claim.py
	$(RUN) $(BIN)/python benchmarks/sync.py
	$(RUN) $(BIN)/python benchmarks/page.py
	$(RUN) $(BIN)/python benchmarks/release.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
