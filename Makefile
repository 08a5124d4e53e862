# Set-up and the two commands README promises. PY is the interpreter to install into.
PY ?= python3
SPEC ?= pipelines/yolov5_pose_int8.yaml

.PHONY: install run test

install:
	$(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e ".[dev]"

# Set up, then run the headline pipeline on its built-in default (no external files needed).
run: install
	$(PY) -m convert run $(SPEC)

# Set up, then run the test suite.
test: install
	$(PY) -m pytest -q
