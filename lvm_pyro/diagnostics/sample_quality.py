"""Sample quality and diversity in a feature space: improved precision and recall
(Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
Generative Models", Sec. 2, Eq. 1-3) and per-class coverage of class-conditional
samples."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

__all__ = ["PrecisionRecall", "precision_recall", "class_coverage"]


class PrecisionRecall(NamedTuple):
    """``precision``: fraction of generated points inside the real manifold (quality);
    ``recall``: fraction of real points inside the generated manifold (diversity); both
    in [0, 1]."""

    precision: float
    recall: float


def _as_numpy(a, name: str) -> np.ndarray:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if a.ndim != 2 or len(a) == 0:
        raise ValueError(f"{name} must be a non-empty (n, d) array of features, got shape "
                         f"{a.shape}")
    return a.astype(np.float64)


def _radii(points: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest other point of the same set, (n,)."""
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    return dist[:, k]  # column 0 is the point itself


def _inside(queries: np.ndarray, support: np.ndarray, radii: np.ndarray,
            chunk: int = 4096) -> np.ndarray:
    """For each query: is it within radius_j of some support point j? (n_q,) bool
    (Eq. 1: f(phi, Phi) = 1 iff ||phi - phi'|| <= ||phi' - NN_k(phi')|| for some phi')."""
    out = np.empty(len(queries), dtype=bool)
    s, r = torch.from_numpy(support), torch.from_numpy(radii)
    for i in range(0, len(queries), chunk):
        d = torch.cdist(torch.from_numpy(queries[i:i + chunk]), s)  # (chunk, n_s)
        out[i:i + chunk] = (d <= r[None, :]).any(dim=1).numpy()
    return out


def precision_recall(real_features, fake_features, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eq. 1-3): each set's
    manifold is the union of balls around its points of radius the distance to the k-th
    nearest neighbour in the set; precision is the fraction of generated points inside
    the real manifold, recall the fraction of real points inside the generated one.

    Args:
        real_features: (n_real, d) float features of held-out real images (tensor or
            array), e.g. a classifier's penultimate layer.
        fake_features: (n_fake, d) features of generated images, same space.
        k: neighbourhood size (the paper uses 3); both sets need more than k points.

    Returns:
        :class:`PrecisionRecall`. Identical sets give (1, 1); sets further apart than
        every radius give (0, 0).

    Raises:
        ValueError: arrays that are not (n, d) with the same d, k < 1, a set of <= k points.
    """
    real, fake = _as_numpy(real_features, "real_features"), _as_numpy(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features must have the same dimension, got "
                         f"{real.shape[1]} and {fake.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"both sets need more than k={k} points, got {len(real)} real and "
                         f"{len(fake)} fake")
    precision = _inside(fake, real, _radii(real, k)).mean()
    recall = _inside(real, fake, _radii(fake, k)).mean()
    return PrecisionRecall(float(precision), float(recall))


def class_coverage(predicted: torch.Tensor, intended: torch.Tensor,
                   num_classes: int) -> torch.Tensor:
    """Per-class coverage of class-conditional samples: for each class c, the fraction of
    samples drawn for c that an evaluation classifier assigns to c (NaN for a class with
    no samples).

    Args:
        predicted: (n,) int64 classes assigned by the evaluation classifier.
        intended: (n,) int64 classes the samples were drawn for.
        num_classes: C.

    Returns:
        (C,) float64.

    Raises:
        ValueError: shapes differ, or labels outside [0, C).
    """
    predicted, intended = torch.as_tensor(predicted).long(), torch.as_tensor(intended).long()
    if predicted.shape != intended.shape or predicted.dim() != 1:
        raise ValueError(f"predicted and intended must be (n,) of the same length, got "
                         f"{tuple(predicted.shape)} and {tuple(intended.shape)}")
    for t in (predicted, intended):
        if len(t) and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
    hits = torch.bincount(intended[predicted == intended], minlength=num_classes).double()
    total = torch.bincount(intended, minlength=num_classes).double()
    return hits / total
