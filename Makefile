# Two entry points (README): `make demo` and `make test`. Both create the virtual
# environment on first use with Python >= 3.12 and install with the pinned constraints.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON312 ?= $(shell command -v python3.13 2>/dev/null || command -v python3.12 2>/dev/null || PYENV_VERSION=3.12.1 pyenv which python 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: demo test env clean bench

$(VENV)/.installed: pyproject.toml constraints.txt
	@if [ ! -x "$(PY)" ]; then \
	  if [ -z "$(PYTHON312)" ]; then echo "error: Python >= 3.12 not found (install it, or set PYTHON312=/path/to/python3.12)"; exit 1; fi; \
	  "$(PYTHON312)" -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

env: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/lvm-pyro fit --out runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/bench_vae_epoch.py

clean:
	rm -rf $(VENV) runs
