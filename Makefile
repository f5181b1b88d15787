# One venv in .venv, created on first use; every target sets it up if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo bench ablation clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,export]'
	touch $@

test: setup            ## the whole suite, slow tests included (what CI runs)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup       ## skip the tests marked slow
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: setup            ## the main job: synth -> prepare -> train -> evaluate
	$(VENV)/bin/egoattn demo --out demo-out

bench: setup           ## benchmark suite, writes BENCHMARKS.md
	$(PY) benchmarks/run.py

ablation: setup        ## the ablation table of the Ego-RNN family on the synthetic dataset
	$(PY) scripts/ablation.py --out runs/ablation

clean:
	rm -rf demo-out runs .pytest_cache
