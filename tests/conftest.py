"""Test harness in the manner of Pyro's tests/conftest.py: seeded, param store cleared per
test, validation on. Warnings raised by lvm_pyro are errors (pyproject filterwarnings)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is decorated
# One thread: OpenMP threads competing with notebook kernels / subprocesses on 2 cores
# run tens of times slower than a single thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pyro
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.dataset("fashion-mnist")``: skip, naming the reason, when the named
    downloadable data set cannot be found locally (CI hides every data set by pointing
    ``$LVM_PYRO_DATA_ONLY`` at an empty folder)."""
    available: dict[str, str | None] = {}
    for item in items:
        for mark in item.iter_markers("dataset"):
            for name in mark.args:
                if name not in available:
                    from lvm_pyro.data import DatasetNotFoundError, load_dataset
                    try:
                        load_dataset(name, "test")
                        available[name] = None
                    except DatasetNotFoundError as e:
                        available[name] = str(e).split(".")[0]
                if available[name] is not None:
                    item.add_marker(pytest.mark.skip(
                        reason=f"needs the {name} data set, absent here: {available[name]}"))
