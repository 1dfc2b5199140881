"""``lvm-pyro fit-classifier RUN_DIR``: the two small CNN classifiers of a run's real
training images (:func:`lvm_pyro.training.classifiers.fit_run_classifiers`): the rejection
classifier used by ``lvm-pyro sample RUN_DIR --classifier-threshold P`` and the independent
evaluation classifier; the flags are the fields of
:class:`lvm_pyro.training.config.ClassifierConfig`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_data_root, add_threads

__all__ = ["HELP", "add_arguments", "run"]

HELP = "train the rejection and evaluation classifiers on a run's real training images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..training.classifiers import ROLES
    from ..training.config import ClassifierConfig, add_config_arguments

    p.add_argument("run_dir", help="a run directory whose data have class labels")
    add_config_arguments(p, [ClassifierConfig], title="classifiers")
    p.add_argument("--role", choices=(*ROLES, "both"), default="both",
                   help="which classifier to train: rejection (architecture a), evaluation "
                        "(architecture b, seed + 1) or both (default)")
    p.add_argument("--num-train", type=int, default=None, help="train on the first N images")
    p.add_argument("--num-test", type=int, default=None, help="test on the first N images")
    p.add_argument("--force", action="store_true", help="replace classifiers already stored")
    add_data_root(p)
    add_threads(p)


def run(a: argparse.Namespace) -> int:
    from ..training.classifiers import (CLASSIFIER_METRICS, ROLES, classifier_path,
                                        fit_run_classifiers)
    from ..training.config import ClassifierConfig, given_options

    config = ClassifierConfig(**given_options(a, [ClassifierConfig]))
    roles = tuple(ROLES) if a.role == "both" else (a.role,)
    m = fit_run_classifiers(a.run_dir, config, roles=roles, num_train=a.num_train,
                            num_test=a.num_test, force=a.force, data_root=a.data_root)
    for r in roles:
        e = m[r]
        print(f"{r} classifier (architecture {e['arch']}, seed {e['seed']}): test accuracy "
              f"{e['test_accuracy']:.4f} on {e['num_test']} images (train "
              f"{e['train_accuracy']:.4f} on {e['num_train']}): {classifier_path(a.run_dir, r)}")
    print(f"metrics: {Path(a.run_dir) / CLASSIFIER_METRICS}")
    return 0
