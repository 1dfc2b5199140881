"""``lvm-pyro evaluate RUN_DIR``: test ELBO and importance-sampled NLL of a run, written to
``RUN_DIR/evaluation.json`` (the run's own ``metrics.json`` is left as it is)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_data_root, add_threads, nll_line

__all__ = ["HELP", "add_arguments", "run"]

HELP = "test ELBO and importance-sampled NLL of a run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory made by `lvm-pyro fit --out`")
    p.add_argument("--num-samples", type=int, default=5000,
                   help="importance samples K per test point (default: 5000)")
    p.add_argument("--num-test", type=int, default=None, help="first N test points (all if omitted)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the importance samples (default: 0; recorded in evaluation.json)")
    add_data_root(p)
    add_threads(p)


def run(a: argparse.Namespace) -> int:
    from ..training.rundir import write_json
    from ..training.run import evaluate_run

    m = evaluate_run(a.run_dir, num_samples=a.num_samples, num_test=a.num_test, progress=True,
                     data_root=a.data_root, seed=a.seed)
    path = Path(a.run_dir) / "evaluation.json"
    write_json(path, m)
    print(f"{nll_line(m)}; written to {path}")
    return 0
