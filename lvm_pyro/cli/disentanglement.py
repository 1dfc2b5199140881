"""``lvm-pyro disentanglement RUN_DIR``: BetaVAE, FactorVAE, MIG, DCI and SAP scores of a
run's guide means on its test data with known factors
(:func:`lvm_pyro.training.disentangle.disentanglement_run`), written to
``RUN_DIR/disentanglement.json``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_data_root, add_threads

__all__ = ["HELP", "add_arguments", "run"]

HELP = "disentanglement metrics of a run on data with known factors (dsprites)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lvm-pyro disentanglement``."""
    p.add_argument("run_dir", help="run directory written by `lvm-pyro fit --data dsprites`")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR)")
    p.add_argument("--num-points", type=int, default=None,
                   help="first N test points (default: all)")
    p.add_argument("--num-train", type=int, default=2000,
                   help="training points / votes of each metric (default 2000; "
                        "disentanglement_lib: 10000)")
    p.add_argument("--num-test", type=int, default=1000,
                   help="test points / votes of each metric (default 1000; "
                        "disentanglement_lib: 5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the metrics (default 0)")
    p.add_argument("--latent", default="z", help="the guide's latent site (default: z)")
    add_data_root(p)
    add_threads(p)


def run(a: argparse.Namespace) -> int:
    """Entry point of ``lvm-pyro disentanglement``."""
    from ..training.disentangle import DISENTANGLEMENT_FILE, disentanglement_run

    m = disentanglement_run(a.run_dir, num_points=a.num_points, num_train=a.num_train,
                            num_test=a.num_test, seed=a.seed, latent=a.latent,
                            data_root=a.data_root, out=a.out)
    keys = ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness",
            "dci_informativeness", "sap")
    print(", ".join(f"{k} {m[k]:.3f}" for k in keys) + f" ({m['num_points']} test points)")
    print(f"written to {Path(a.out or a.run_dir) / DISENTANGLEMENT_FILE}")
    return 0
