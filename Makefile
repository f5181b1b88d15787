# One venv in .venv, created on first use; every target sets it up if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-fast test-pose demo bench ablation clean

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

# The pose extra (MediaPipe, whose wheel ships the pose/hand models) pins numpy<2, protobuf<5 and the GUI
# opencv-contrib-python, so it lives in a venv of its own (about 5.5 min and 6.7 GB to create, torch included).
POSE_VENV ?= .venv-pose

$(POSE_VENV)/.installed: pyproject.toml
	python3 -m venv $(POSE_VENV)
	$(POSE_VENV)/bin/python -m pip install -q --upgrade pip
	$(POSE_VENV)/bin/python -m pip install -q -e '.[test,pose]'
	touch $@

test-pose: $(POSE_VENV)/.installed  ## keypoints from video (egoattn[pose]) in .venv-pose
	$(POSE_VENV)/bin/python -m pytest -q tests/test_pose_estimator.py $(PYTEST_ARGS)

demo: setup            ## the main job: synth -> prepare -> train -> evaluate
	$(VENV)/bin/egoattn demo --out demo-out

bench: setup           ## benchmark suite, writes BENCHMARKS.md
	$(PY) benchmarks/run.py

ablation: setup        ## the ablation table of the Ego-RNN family on the synthetic dataset
	$(PY) scripts/ablation.py --out runs/ablation

clean:
	rm -rf demo-out runs .pytest_cache
