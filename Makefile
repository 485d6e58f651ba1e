# partwise — setup, tests and demo. Only Python >= 3.11 is needed beforehand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.partwise-installed
TORCH  := torch==2.13.0

.PHONY: setup test test-fast demo bench lint docs clean

setup: $(STAMP)

# torch first and pinned (a CPU wheel is available locally; an unpinned torch pulls CUDA packages),
# then the package editable with its extras. Re-runs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(VENV)/bin/partwise demo

bench: setup
	$(PY) bench/teacher_forcing.py

# Style (ruff), then the layer and no-cycle contracts in pyproject.toml (import-linter).
lint: setup
	$(VENV)/bin/ruff check src tests bench experiments docs
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

# The documentation site (MkDocs) into site/; warnings are errors.
docs: setup
	$(VENV)/bin/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) build dist site *.egg-info src/*.egg-info .pytest_cache
