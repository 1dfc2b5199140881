"""``lvm-pyro sample RUN_DIR``: sample grids and reconstructions of a run, written to
``RUN_DIR/sample/`` (or ``--out``), so that the pictures ``fit`` drew stay as they are."""

from __future__ import annotations

import argparse
import sys
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
    p.add_argument("--classifier-threshold", type=float, default=None, metavar="P",
                   help="VQ-VAE-2 runs: also draw --num-samples class-conditional samples and "
                        "keep those whose rejection classifier (lvm-pyro fit-classifier) gives "
                        "the intended class probability >= P in [0, 1]; reports the acceptance "
                        "rate, writes rejection_samples.png and rejection.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the class-conditional draws")
    add_data_root(p)
    add_threads(p)


def run(a: argparse.Namespace) -> int:
    from ..training.run import sample_run

    out = Path(a.out) if a.out is not None else Path(a.run_dir) / SAMPLE_DIR
    if a.classifier_threshold is not None:
        from ..training.rejection_sampling import check_rejection_ready

        if not 0.0 <= a.classifier_threshold <= 1.0:
            raise ValueError(f"--classifier-threshold must lie in [0, 1], got "
                             f"{a.classifier_threshold}")
        check_rejection_ready(a.run_dir)  # before drawing any picture
    paths = sample_run(a.run_dir, num_samples=a.num_samples, out_dir=out, data_root=a.data_root)
    from ..training.prior_stage import prior_problem

    problem = prior_problem(a.run_dir)
    if problem is not None:
        print(f"note: the code prior in {a.run_dir} {problem}, so no prior samples were drawn "
              f"(older prior pictures are stale); refit it: lvm-pyro fit-prior {a.run_dir} "
              "--force", file=sys.stderr)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    if a.classifier_threshold is not None:
        from ..training.rejection_sampling import REJECTION_FILE, rejection_sample_run

        m = rejection_sample_run(a.run_dir, a.classifier_threshold, num_samples=a.num_samples,
                                 out_dir=out, seed=a.seed, data_root=a.data_root)
        per = ", ".join("-" if r is None else f"{r:.2f}" for r in m["acceptance_rate_per_class"])
        print(f"classifier rejection at p >= {m['threshold']:g}: kept {m['num_kept']} of "
              f"{m['num_samples']} (acceptance rate {m['acceptance_rate']:.4f}; per class {per})")
        print("\n".join(f"rejection_{k}: {v}" for k, v in m["pictures"].items()))
        print(f"metrics: {out / REJECTION_FILE}")
    return 0
