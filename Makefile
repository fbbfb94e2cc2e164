# make demo : set up .venv, generate a ChestX-ray14-shaped dataset, shard it, train the three
#             stages at toy sizes, evaluate, export and query the SavedModel (CPU, minutes).
# make test : set up .venv and run the test suite (everything; what CI runs; TEST_WORKERS=2 files at once).
# make test-fast : the tests not marked slow, for development (under 3 minutes on 2 cores).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_workspace
# make test runs the test files on this many pytest-xdist workers (one file per worker at a time): most
# tests spend their time in child processes or single-threaded tracing, so two workers fill two cores.
TEST_WORKERS ?= 2

.PHONY: venv test test-fast demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

demo: venv
	$(PY) tools/demo.py --workspace=$(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR)
