"""Two small CNN classifiers of a run's real training images (``lvm-pyro fit-classifier
RUN_DIR``): the *rejection* classifier judges class-conditional samples (Razavi et al.
2019, Sec. 3.3), the independent *evaluation* classifier (another architecture, seed and
data order) measures the kept samples' quality and supplies the features of precision /
recall (Kynkaanniemi et al. 2019).

Files in the run directory: ``classifier_rejection.pt``, ``classifier_evaluation.pt``
(weights and hyper-parameters) and ``classifier_metrics.json`` (test accuracy per role).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from ..nn.classifier import SmallCNNClassifier
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ClassifierConfig

__all__ = ["ROLES", "CLASSIFIER_METRICS", "ClassifierExistsError", "fit_classifier", "accuracy",
           "classifier_path", "fit_run_classifiers", "load_classifier"]

#: role -> (architecture, seed offset): the two classifiers differ in both
ROLES = {"rejection": ("a", 0), "evaluation": ("b", 1)}
CLASSIFIER_METRICS = "classifier_metrics.json"


class ClassifierExistsError(CheckpointError):
    """A run directory already holds a classifier of that role and replacing it was not
    asked for."""


def fit_classifier(x: torch.Tensor, y: torch.Tensor, *, arch: str = "a", seed: int = 0,
                   epochs: int = 3, batch_size: int = 128, lr: float = 1e-3,
                   num_classes: Optional[int] = None) -> SmallCNNClassifier:
    """Train a :class:`~lvm_pyro.nn.SmallCNNClassifier` by Adam on the cross-entropy.

    Args:
        x: (N, C, H, W) float images; y: (N,) int64 labels in [0, num_classes).
        arch: ``"a"`` or ``"b"``.
        seed: seeds the weights and the minibatch order.
        num_classes: default ``y.max() + 1``.

    Returns:
        the classifier, in eval mode, on x's device.

    Raises:
        ValueError: shapes that do not match, fewer than two classes, bad sizes.
    """
    y = torch.as_tensor(y).long()
    if x.dim() != 4 or y.shape != x.shape[:1] or len(x) == 0:
        raise ValueError(f"x must be (N, C, H, W) and y (N,) with N >= 1, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, "
                         f"{batch_size}, {lr}")
    num_classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    torch.manual_seed(seed)
    clf = SmallCNNClassifier(x.shape[1:], num_classes, arch).to(x.device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    y = y.to(x.device)
    clf.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order).to(x.device)
        for s in range(0, len(x), batch_size):
            idx = perm[s:s + batch_size]
            loss = F.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return clf.eval()


@torch.no_grad()
def accuracy(classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of x (N, ...) whose arg-max class is y (N,)."""
    if len(x) == 0:
        raise ValueError("accuracy of no images: pass at least one")
    pred = torch.cat([classifier(x[s:s + batch_size]).argmax(-1)
                      for s in range(0, len(x), batch_size)])
    return float((pred.cpu() == torch.as_tensor(y).long().cpu()).double().mean())


def classifier_path(run_dir: str | Path, role: str) -> Path:
    """``RUN_DIR/classifier_<role>.pt``.

    Raises:
        ValueError: an unknown role.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return Path(run_dir) / f"classifier_{role}.pt"


def fit_run_classifiers(run_dir: str | Path, config: Optional[ClassifierConfig] = None, *,
                        roles: Iterable[str] = tuple(ROLES), num_train: Optional[int] = None,
                        num_test: Optional[int] = None, force: bool = False,
                        data_root: Optional[str | Path] = None) -> dict:
    """Train the classifiers of ``roles`` on the run's real training images and labels
    (intensities in [0, 1], the images the model was trained on, untransformed), report
    their accuracy on the run's test images, and store them in the run directory.

    Args:
        run_dir: a run directory (any model; its data need labels).
        config: epochs, batch size, learning rate and seed (:class:`ClassifierConfig`).
        roles: any of ``"rejection"`` (architecture a, seed) and ``"evaluation"``
            (architecture b, seed + 1).
        num_train, num_test: the first N training / test images (all when None).
        force: replace classifiers already stored.

    Returns:
        the dict written to ``classifier_metrics.json``: per role ``arch``, ``seed``,
        ``test_accuracy``, ``train_accuracy``, ``num_train``, ``num_test``, ``seconds``
        (earlier roles' entries are kept).

    Raises:
        ClassifierExistsError: a classifier of a role is stored and ``force`` is not set.
        ValueError: an unknown role, data without (two or more) labels, a run that is
            not VQ-VAE-2 (nothing else uses the classifiers).
        CheckpointError: not a run directory.
    """
    from .rundir import read_json, write_json
    from .run import load_run_data, read_run_config

    config = ClassifierConfig() if config is None else config
    roles = list(roles)
    paths = {r: classifier_path(run_dir, r) for r in roles}
    if not roles:
        raise ValueError("roles is empty: pass rejection and / or evaluation")
    cfg, _ = read_run_config(run_dir)
    if cfg.model_name != "vqvae2":  # the classifiers serve VQ-VAE-2's class-conditional sampling
        raise ValueError(f"{run_dir} is a {cfg.model_name} run; the classifiers serve classifier "
                         "rejection of a VQ-VAE-2 run's class-conditional samples (lvm-pyro fit "
                         "--model vqvae2, fit-prior, then fit-classifier)")
    if data_root is not None:
        cfg = cfg.replace(data_root=str(data_root))
    for r, path in paths.items():
        if path.exists() and not force:
            raise ClassifierExistsError(f"{path} already holds the {r} classifier; pass "
                                        "force=True (--force) to replace it")
    train, test = load_run_data(cfg, "train"), load_run_data(cfg, "test")
    if getattr(train, "labels", None) is None or int(torch.as_tensor(train.labels).max()) < 1:
        raise ValueError(f"the run's data ({cfg.data.data}) have no class labels; the "
                         "classifiers need two or more classes")
    x, y = train.images[:num_train].float(), torch.as_tensor(train.labels).long()[:num_train]
    xt, yt = test.images[:num_test].float(), torch.as_tensor(test.labels).long()[:num_test]
    num_classes = int(max(y.max(), yt.max())) + 1
    metrics_path = Path(run_dir) / CLASSIFIER_METRICS
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    for r, path in paths.items():
        arch, offset = ROLES[r]
        t0 = time.perf_counter()
        clf = fit_classifier(x, y, arch=arch, seed=config.seed + offset, epochs=config.epochs,
                             batch_size=config.batch_size, lr=config.lr, num_classes=num_classes)
        seconds = time.perf_counter() - t0
        entry = {"arch": arch, "seed": config.seed + offset, "num_classes": num_classes,
                 "test_accuracy": accuracy(clf, xt, yt), "train_accuracy": accuracy(clf, x, y),
                 "num_train": len(x), "num_test": len(xt), "seconds": seconds,
                 "config": dataclasses.asdict(config)}
        save_checkpoint(path, {"config": {"classifier": {"in_shape": list(x.shape[1:]),
                                                         "num_classes": num_classes,
                                                         "arch": arch}, **entry},
                               "modules": {"classifier": clf.state_dict()}})
        metrics[r] = entry
    write_json(metrics_path, metrics)
    return metrics


def load_classifier(run_dir: str | Path, role: str = "rejection",
                    device: str = "cpu") -> SmallCNNClassifier:
    """The stored classifier of ``role``, in eval mode.

    Raises:
        CheckpointError: none stored (``lvm-pyro fit-classifier RUN_DIR`` trains them) or
            a corrupt file.
        ValueError: an unknown role.
    """
    path = classifier_path(run_dir, role)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; train the classifiers first: "
                              f"lvm-pyro fit-classifier {run_dir}")
    payload = load_checkpoint(path, map_location=device)
    hyper = payload["config"]["classifier"]
    clf = SmallCNNClassifier(hyper["in_shape"], hyper["num_classes"], hyper["arch"])
    clf.load_state_dict(payload["modules"]["classifier"])
    return clf.to(device).eval()
