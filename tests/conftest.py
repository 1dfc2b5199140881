"""Test harness in the manner of Pyro's tests/conftest.py: seeded, param store cleared per
test, validation on. Warnings raised by lvm_pyro are errors (pyproject filterwarnings)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is decorated

import pyro
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
