"""``lvm-pyro diagnose RUN_DIR``: posterior diagnostics of a trained run
(:func:`lvm_pyro.training.diagnose.diagnose_run`)."""

from __future__ import annotations

import argparse

from ._common import add_data_root, add_threads

__all__ = ["HELP", "add_arguments", "run"]

HELP = "posterior diagnostics of a run (PSIS k-hat, ESS, NUTS, MI, SBC)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lvm-pyro diagnose`` (see :func:`diagnose_run`)."""
    p.add_argument("run_dir", help="run directory written by `lvm-pyro fit`")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR)")
    p.add_argument("--num-test", type=int, default=1000, help="test points for k-hat and KL")
    p.add_argument("--num-samples", type=int, default=1000, help="guide draws per test point (>= 25)")
    p.add_argument("--num-mi-points", type=int, default=2000,
                   help="test points of the aggregate posterior for MI (MI <= log M)")
    p.add_argument("--num-au-points", type=int, default=None,
                   help="test points for active units (default: all)")
    p.add_argument("--nuts-points", type=int, default=4, help="test points with NUTS (0: skip)")
    p.add_argument("--nuts-chains", type=int, default=4)
    p.add_argument("--nuts-warmup", type=int, default=300)
    p.add_argument("--nuts-samples", type=int, default=300)
    p.add_argument("--sbc-simulations", type=int, default=1000, help="0: skip SBC")
    p.add_argument("--sbc-draws", type=int, default=99)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent", default=None,
                   help="latent site of the guide (default: z, else codes, else the guide's only latent site)")
    add_data_root(p)
    add_threads(p)


def run(a: argparse.Namespace) -> int:
    """Entry point of ``lvm-pyro diagnose``."""
    from ..training.diagnose import diagnose_run

    diagnose_run(a.run_dir, out=a.out, num_test=a.num_test, num_samples=a.num_samples,
                 num_mi_points=a.num_mi_points, num_au_points=a.num_au_points,
                 nuts_points=a.nuts_points, nuts_chains=a.nuts_chains,
                 nuts_warmup=a.nuts_warmup, nuts_samples=a.nuts_samples,
                 sbc_simulations=a.sbc_simulations, sbc_draws=a.sbc_draws, seed=a.seed,
                 latent=a.latent, data_root=a.data_root)
    return 0
