"""``lvm-pyro fit``: train a model into a run directory, evaluate it and draw pictures.

With no ``--data`` it trains the default VAE on scikit-learn's bundled digits (about two
minutes on 2 CPU cores) and prints the test NLL and where the pictures are. Every flag
that describes the run is a field of :mod:`lvm_pyro.training.config`.

``torchrun --nproc_per_node N -m lvm_pyro.cli fit ...`` (same flags) trains the run
data-parallel over N processes (:mod:`lvm_pyro.training.distributed`); rank 0 prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._common import add_threads, nll_line

__all__ = ["HELP", "add_arguments", "run"]

HELP = "train a model and write a run directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--elbo``, one flag per configuration field (defaults from the
    dataclasses), and the command's own options."""
    from ..training import builders  # noqa: F401  (registers the models and objectives)
    from ..training.config import (MODEL_CONFIGS, OBJECTIVE_CONFIGS, DataConfig, TrainConfig,
                                   add_config_arguments)

    p.add_argument("--model", default="vae", metavar="NAME|MODULE:BUILDER",
                   help=f"a registered model ({', '.join(sorted(MODEL_CONFIGS))}; default: vae), "
                        "an installed 'lvm_pyro.models' entry point, or a builder path "
                        "package.module:build with build(config, event_shape) -> (model, guide)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a field of a user model's configuration, VALUE read as JSON "
                        "(repeatable; keys that are no field go into UserModelConfig.options)")
    p.add_argument("--elbo", default="trace", choices=sorted(OBJECTIVE_CONFIGS),
                   help="training objective (default: trace)")
    add_config_arguments(p, [DataConfig], title="data")
    add_config_arguments(p, list(MODEL_CONFIGS.values()),
                         title="model (flags apply only to the models that have them)")
    add_config_arguments(p, list(OBJECTIVE_CONFIGS.values()),
                         title="objective (flags apply only to the objectives that have them)")
    add_config_arguments(p, [TrainConfig], title="training")
    p.add_argument("--num-samples", type=int, default=1000,
                   help="importance samples for the test NLL (default: 1000)")
    p.add_argument("--num-test", type=int, default=None, help="evaluate on the first N test points")
    p.add_argument("--out", default="runs/latest", help="run directory (default: runs/latest)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--force", action="store_true",
                   help="replace a run already in --out: every file its commands wrote is "
                        "removed first (config, checkpoint, metrics, pictures, evaluation, "
                        "diagnostics, fit-prior and fit-classifier files, disentanglement.json, "
                        "tensorboard/, and what `lvm-pyro sample` wrote in OUT/sample/, "
                        "which shows the old model); other files stay")
    p.add_argument("--logger", default="none", choices=("none", "tensorboard"),
                   help="tensorboard: per-epoch train loss, test ELBO / NLL, KL per latent "
                        "dimension, sample and reconstruction grids under OUT/tensorboard/ "
                        "(default: none)")
    p.add_argument("--no-progress", action="store_true")
    add_threads(p)


def run(a: argparse.Namespace) -> int:
    """Build the :class:`~lvm_pyro.training.config.RunConfig` from the flags and train."""
    from ..training.config import config_from_namespace
    from ..training.run import train_run

    config = config_from_namespace(a)
    m = train_run(config, a.out, resume=a.resume, overwrite=a.force, progress=not a.no_progress,
                  num_samples=a.num_samples, num_test=a.num_test, logger=a.logger,
                  log=lambda msg: print(f"lvm-pyro: {msg}", file=sys.stderr))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 alone reports
        return 0
    out = Path(a.out)
    print(nll_line(m))
    pictures = [out / n for n in ("samples.png", "reconstructions.png", "loss_curve.png")
                if (out / n).exists()]
    print(f"pictures: {', '.join(map(str, pictures))}")
    print(f"metrics: {out / 'metrics.json'}")
    return 0
