"""``lvm-pyro sample RUN_DIR``: sample grids and reconstructions of a run, written to
``RUN_DIR/sample/`` (or ``--out``), so that the pictures ``fit`` drew stay as they are."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..training.rundir import SAMPLE_DIR
from ._common import add_data_root, add_threads

__all__ = ["HELP", "add_arguments", "run", "SAMPLE_DIR"]

HELP = (f"write sample and reconstruction grids of a run into RUN_DIR/{SAMPLE_DIR}/ (a later "
        "`fit --force` into RUN_DIR removes them)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory made by `lvm-pyro fit --out`")
    p.add_argument("--num-samples", type=int, default=64, help="images in the sample grid (default: 64)")
    p.add_argument("--out", default=None, help=f"output folder (default: RUN_DIR/{SAMPLE_DIR})")
    add_data_root(p)
    add_threads(p)


def run(a: argparse.Namespace) -> int:
    from ..training.run import sample_run

    out = Path(a.out) if a.out is not None else Path(a.run_dir) / SAMPLE_DIR
    paths = sample_run(a.run_dir, num_samples=a.num_samples, out_dir=out, data_root=a.data_root)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0
