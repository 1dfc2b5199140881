"""Disentanglement metrics of a trained run (``lvm-pyro disentanglement RUN_DIR``): the
guide's means on the run's test data scored against the data's known generative factors
with :func:`lvm_pyro.diagnostics.disentanglement_metrics`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch

from ..data import load_dataset
from .config import ConfigError
from .rundir import write_json
from .run import load_run, prepare_data

__all__ = ["DISENTANGLEMENT_FILE", "disentanglement_run"]

DISENTANGLEMENT_FILE = "disentanglement.json"


def disentanglement_run(run_dir: str | Path, *, num_points: Optional[int] = None,
                        num_train: int = 2000, num_test: int = 1000, seed: int = 0,
                        latent: str = "z", data_root: Optional[str | Path] = None,
                        out: Optional[str | Path] = None) -> dict:
    """Score a run's representation on its test data with known factors and write
    ``disentanglement.json`` into ``out`` (default: the run directory).

    The representation is the guide's mean E_q[z | x] of each test image (as in
    disentanglement_lib; :func:`lvm_pyro.diagnostics.guide_codes`), the test split
    prepared as for evaluation (binarised once with seed 0 where the run binarises). The
    metrics (:func:`lvm_pyro.diagnostics.disentanglement_metrics`: BetaVAE, FactorVAE,
    MIG, DCI, SAP) use ``num_train`` / ``num_test`` points or votes instead of
    disentanglement_lib's 10000 / 5000, so that they take seconds on a CPU: indicative
    values, stated in the output.

    Args:
        run_dir: a run directory of ``lvm-pyro fit`` on data with factors (dsprites).
        num_points: the first N test points (default: all).
        num_train, num_test: training / test size of each metric (>= 1).
        seed: seeds the metrics' draws and classifiers.
        latent: the guide's latent site.
        data_root: read the run's data from here instead of its recorded folder.
        out: output directory.

    Returns:
        the dict written: the seven metrics, the settings, ``num_points``, ``num_codes``,
        ``factor_names``, ``seconds``.

    Raises:
        ValueError: the run's data set has no factors (e.g. digits), bad sizes, or an
            error of the metrics (a constant factor, fewer than 2 codes).
        CheckpointError: see :func:`lvm_pyro.training.load_run`.
    """
    from ..diagnostics import disentanglement_metrics, guide_codes

    for name, v in (("num_train", num_train), ("num_test", num_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(name, f"must be an integer >= 1, got {v!r}")
    if num_points is not None and num_points < 3:
        raise ConfigError("num_points", f"must be >= 3, got {num_points}")
    run = load_run(run_dir, data_root=data_root)
    from .builders import as_run_config

    config = as_run_config(run.config)
    ds = load_dataset(config.data.data, "test", config.data.data_root)
    factors = getattr(ds, "factors", None)
    if factors is None:
        raise ValueError(f"the run's data set {config.data.data!r} has no known generative "
                         "factors: disentanglement metrics need data with factors; train on "
                         "--data dsprites")
    t0 = time.perf_counter()
    x = prepare_data(config, "test", config.train.device)
    if num_points is not None:
        x, factors = x[:num_points], factors[:num_points]
    with torch.no_grad():
        codes = guide_codes(run.guide, x, latent=latent)  # (N, D) float64
    metrics = disentanglement_metrics(codes.cpu(), factors.cpu(), seed=seed,
                                      num_train=num_train, num_test=num_test)
    result = {**metrics, "num_points": int(len(x)), "num_codes": int(codes.shape[1]),
              "factor_names": list(getattr(ds, "factor_names", ())),
              "representation": f"guide mean E_q[{latent} | x] on the test split",
              "settings": {"num_train": num_train, "num_test": num_test, "seed": seed,
                           "note": "disentanglement_lib uses num_train 10000 / num_test "
                                   "5000: values at these CPU-sized settings are indicative"},
              "seconds": time.perf_counter() - t0}
    out = Path(run_dir) if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / DISENTANGLEMENT_FILE, result)
    return result
