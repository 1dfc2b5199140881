# Two entry points (README): `make demo` and `make test`. Both create the virtual
# environment on first use with Python >= 3.12 and install with the pinned constraints.
VENV ?= .venv
PY := $(VENV)/bin/python
# the first interpreter that actually runs and is >= 3.12 (pyenv shims exist even where
# they cannot run; .python-version selects pyenv's 3.12.1 in this folder)
PYTHON312 ?= $(shell for p in python3.14 python3.13 python3.12 python3; do \
  if $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then \
    $$p -c 'import sys; print(sys.executable)'; break; fi; done)
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
