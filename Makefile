# The two commands of the README: `make demo` and `make test`; and `make install`
# for a real host (the README's "Deploying on real hosts").
VENV    ?= .venv
PYTHON  ?= python3
PREFIX  ?= /usr/local
BIN     := $(CURDIR)/$(VENV)/bin
RUN     := env PATH="$(BIN):$$PATH"

.PHONY: setup demo test test-fast bench clean install

$(VENV)/.installed: pyproject.toml
	./scripts/system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(RUN) $(BIN)/python demo/demo.py

test: setup
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

# The system Python's venv, not .venv: no test extras, no PyPI Portage.
install:
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" PYTHON="$(PYTHON)" ./scripts/install

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
