# pnc_lib: set-up, book, tests. Every target sets up .venv first (idempotent).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pnc-installed
# torch and torchvision are pinned here only (the package itself accepts torch>=2.2)
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

# one torch thread: the CPU presets' numbers (and the notebooks' step-by-step checks against the
# engine) are then the same on every machine, and small models run faster
export OMP_NUM_THREADS ?= 1

.PHONY: setup book test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[book,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

## make book: execute every notebook on the default (quick) preset and build the HTML book
book: setup
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going
	@echo "book: $(CURDIR)/_build/html/index.html"

## make test: the whole test suite (unit tests, smoke runs, notebooks through papermill)
test: setup
	$(PY) -m pytest -q -rs

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m pnc_lib.bench

clean:
	rm -rf _build runs .pytest_cache
