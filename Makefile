# Set-up and entry points. Every target installs what it needs into .venv/ first.
#   make train [ARGS="--loss=batch_hard --steps=500"]   the main job (MNIST by default)
#   make test                                           the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Offline copies of the original dataset files, one folder per dataset name.
# Used when present; otherwise tensorflow-datasets downloads as usual.
DATASETS ?= ../shared/datasets
export TRIPLETJAX_MANUAL_DIR ?= $(if $(wildcard $(DATASETS)),$(abspath $(DATASETS)))

.PHONY: setup train test
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-test.txt requirements-faiss.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

train: setup
	$(PY) -m experiments.train $(ARGS)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15
