# make demo : set up .venv, generate a ChestX-ray14-shaped dataset, shard it, train the three
#             stages at toy sizes, evaluate, export and query the SavedModel (CPU, minutes).
# make test : set up .venv and run the test suite (everything; what CI runs).
# make test-fast : the tests not marked slow, for development (under 3 minutes on 2 cores).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_workspace

.PHONY: venv test test-fast demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

demo: venv
	$(PY) tools/demo.py --workspace=$(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR)
