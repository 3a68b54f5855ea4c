# The two commands a newcomer needs (see README.md):
#   make eval   - the evaluation on the default case matrix (CPU or GPU), KPI table at the end
#   make test   - the harness's own tests
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch/torchvision pinned to a pair that installs together (PyPI's newest torchvision may not match torch).
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: eval test gpu bench report clean-results

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

eval: $(STAMP)
	$(PY) -m pytest cases $(PYTEST_ARGS)

test: $(STAMP)
	$(PY) -m pytest tests evalsuite $(PYTEST_ARGS)

gpu: $(STAMP)
	$(PY) -m pytest cases -m gpu -n auto --dist worksteal $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m evalsuite.bench $(PYTEST_ARGS)

report: $(STAMP)
	$(VENV)/bin/evalsuite report

clean-results:
	rm -rf .evalsuite/chdb .evalsuite/spool reports allure-results
