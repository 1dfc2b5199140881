"""``lvm-pyro diagnose RUN_DIR``: posterior diagnostics of a trained run
(:func:`lvm_pyro.training.diagnose.diagnose_run`); the numeric flags are the fields of
:class:`lvm_pyro.training.config.DiagnoseConfig`."""

from __future__ import annotations

import argparse

from ._common import add_data_root, add_threads

__all__ = ["HELP", "add_arguments", "run"]

HELP = "posterior diagnostics of a run (PSIS k-hat, ESS, NUTS, MI, SBC)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lvm-pyro diagnose``."""
    from ..training.config import DiagnoseConfig, add_config_arguments

    p.add_argument("run_dir", help="run directory written by `lvm-pyro fit`")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR)")
    p.add_argument("--latent", default=None,
                   help="latent site of the guide (default: z, else codes, else the guide's "
                        "only latent site)")
    add_config_arguments(p, [DiagnoseConfig], title="diagnostics")
    add_data_root(p)
    add_threads(p)


def run(a: argparse.Namespace) -> int:
    """Entry point of ``lvm-pyro diagnose``."""
    from ..training.config import DiagnoseConfig, given_options
    from ..training.diagnose import diagnose_run

    config = DiagnoseConfig(**given_options(a, [DiagnoseConfig]))
    diagnose_run(a.run_dir, config, out=a.out, latent=a.latent, data_root=a.data_root)
    return 0
